"""HATConfig (the released schema), HATModel (packing, causality, the encoder connector against a dense
cross-attention, the one-key decoder cross-attention, checkpoint round trip, training) and bad input."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from lmkernels.hat import HATBatch, HATConfig, HATModel, hat_loss
from lmkernels.hat.config import StackConfig
from lmkernels.hat.layers import CrossAttention

RELEASED_STYLE = {
    "model_type": "hierarchical_autoregressive_transformer", "transformers_version": "4.46.3",
    "auto_map": {"AutoConfig": "config.HATArchitectureConfig"}, "architectures": ["HATDecoderForCausalLM"],
    "torch_dtype": "bfloat16", "special_token_dict": {"<|eot_id|>": 192}, "max_word_size": 100,
    "sliding_window": 768, "max_position_embeddings": 262144,
    "encoder_config": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                       "rms_norm_eps": 1e-5, "intermediate_size": 128, "max_position_embeddings": 262144,
                       "rope_scaling": None, "rope_theta": 10000.0, "mlp_bias": False, "use_cache": True,
                       "sliding_window": 7, "vocab_size": 256, "key_query_norm": False,
                       "key_query_norm_per_head": False, "is_neox_style": True, "transformers_version": "4.46.3",
                       "cross_attention_config": {"hidden_size_q": 96, "hidden_size_kv": 64, "hidden_size": 64,
                                                  "num_attention_heads": 4, "attention_num_kv_heads": 2,
                                                  "word_window_size": 1, "key_query_norm": True,
                                                  "key_query_norm_per_head": True}},
    "backbone_config": {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 3, "num_key_value_heads": 1,
                        "rms_norm_eps": 1e-5, "intermediate_size": 160, "max_position_embeddings": 131072,
                        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                        "rope_theta": 500000.0, "mlp_bias": False, "vocab_size": 0},
    "decoder_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                       "rms_norm_eps": 1e-5, "intermediate_size": 128, "max_position_embeddings": 262144,
                       "rope_scaling": None, "rope_theta": 10000.0, "mlp_bias": False, "sliding_window": 7,
                       "vocab_size": 256, "cross_attn_every_layer": True,
                       "cross_attention_config": {"hidden_size_q": 64, "hidden_size_kv": 96, "hidden_size": 64,
                                                  "num_attention_heads": 2, "attention_num_kv_heads": 2,
                                                  "word_window_size": 1, "key_query_norm": False,
                                                  "key_query_norm_per_head": False}},
}

TEXT_A = [b"Hello", b" world", b",", b" how", b" are", b" you", b"?"]
TEXT_B = [b"Gr\xc3\xb6\xc3\x9fe", b" \xe6\x97\xa5\xe6\x9c\xac", b" ok"]


def released_model():
    torch.manual_seed(0)
    return HATModel(HATConfig.from_dict(RELEASED_STYLE)).eval()


def test_config_reads_the_released_schema_and_round_trips():
    config = HATConfig.from_dict(RELEASED_STYLE)
    assert config.encoder_config.cross_attention_config.key_query_norm_per_head
    assert config.backbone_config.rope_scaling["rope_type"] == "llama3"
    assert config.decoder_config.attention_window == 8  # the released window (w, w): itself and 7 before
    assert HATConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("change, message", [
    (lambda c: c["encoder_config"].update(num_attention_heads=3), "num_attention_heads"),
    (lambda c: c["decoder_config"].pop("cross_attention_config"), "cross_attention_config"),
    (lambda c: c["backbone_config"].update(hidden_act="gelu"), "hidden_act"),
    (lambda c: c.update(max_word_size=0), "max_word_size"),
])
def test_bad_configs(change, message):
    values = json.loads(json.dumps(RELEASED_STYLE))
    change(values)
    with pytest.raises(ValueError, match=message):
        HATConfig.from_dict(values)


def test_packed_sequences_equal_separate_runs():
    model = released_model()
    with torch.no_grad():
        packed = model(HATBatch.from_words([TEXT_A, TEXT_B]))
        alone_a = model(HATBatch.from_words([TEXT_A]))
        alone_b = model(HATBatch.from_words([TEXT_B]))
    torch.testing.assert_close(packed, torch.cat([alone_a, alone_b]), rtol=1e-5, atol=1e-5)


def test_logits_of_a_word_ignore_later_words():
    model = released_model()
    with torch.no_grad():
        full = model(HATBatch.from_words([TEXT_A]))
        changed = model(HATBatch.from_words([TEXT_A[:4] + [b" zzzz", b"!!"]]))
    prefix = sum(len(w) for w in TEXT_A[:4])
    torch.testing.assert_close(full[:prefix], changed[:prefix], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full[prefix:prefix + 4], changed[prefix:prefix + 4])


def test_decoder_guide_equals_attention_over_the_single_key():
    """Each byte attends to one key (its word's P): the softmax is 1, whatever the queries are."""
    config = HATConfig.from_dict(RELEASED_STYLE).decoder_config
    torch.manual_seed(1)
    cross = CrossAttention(config.cross_attention_config, config)
    word_states, byte_states = torch.randn(5, 96), torch.randn(5, 64)
    q = cross.q_proj(byte_states).unflatten(-1, (2, 32))[:, :, None, :]          # [W, H, 1, D]
    k = cross.k_proj(word_states).unflatten(-1, (2, 32))[:, :, None, :]
    v = cross.v_proj(word_states).unflatten(-1, (2, 32))[:, :, None, :]
    full = cross.o_proj(F.scaled_dot_product_attention(q, k, v).flatten(1))
    torch.testing.assert_close(cross.guide(word_states), full)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_neox(x, positions, theta):
    """x [N, H, D] rotated by positions [N]: dimensions (i, i + D/2) by angle p * theta^(-2i/D)."""
    half = x.shape[-1] // 2
    angles = (positions[:, None].double() * theta ** (-torch.arange(half, dtype=torch.float64) / half)).float()
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def dense_word_embeddings(cross, stack, query, byte_states, lengths, word_positions, byte_positions):
    """Every word's query against every byte, bytes of other words masked out: QK norm (over all heads or per
    head), then RoPE (query at its word index, keys at their byte positions), GQA, softmax, o_proj."""
    heads, kv_heads, head_dim = cross.heads, cross.kv_heads, cross.head_dim
    q, k, v = query @ cross.q_proj.weight.T, byte_states @ cross.k_proj.weight.T, byte_states @ cross.v_proj.weight.T
    if cross.norm_query is not None and not cross.per_head_norm:
        q = rms_norm(q, cross.norm_query.weight, stack.rms_norm_eps)
        k = rms_norm(k, cross.norm_key.weight, stack.rms_norm_eps)
    q, k, v = q.reshape(1, heads, head_dim), k.reshape(-1, kv_heads, head_dim), v.reshape(-1, kv_heads, head_dim)
    if cross.norm_query is not None and cross.per_head_norm:
        q = rms_norm(q, cross.norm_query.weight, stack.rms_norm_eps)
        k = rms_norm(k, cross.norm_key.weight, stack.rms_norm_eps)
    q = rope_neox(q.expand(len(lengths), -1, -1), word_positions, stack.rope_theta)
    k = rope_neox(k, byte_positions, stack.rope_theta)
    k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))  # query head h reads KV head h // r
    owner = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    scores = torch.einsum("whd,thd->hwt", q, k) / head_dim ** 0.5
    scores = scores.masked_fill(owner[None, None, :] != torch.arange(len(lengths))[None, :, None], float("-inf"))
    out = torch.einsum("hwt,thd->whd", scores.softmax(-1), v)
    return out.flatten(1) @ cross.o_proj.weight.T


@pytest.mark.parametrize("key_query_norm, per_head", [(True, True), (True, False), (False, False)])
def test_encoder_connector_equals_dense_cross_attention(key_query_norm, per_head):
    values = json.loads(json.dumps(RELEASED_STYLE))
    values["encoder_config"]["cross_attention_config"].update(key_query_norm=key_query_norm,
                                                              key_query_norm_per_head=per_head)
    stack = HATConfig.from_dict(values).encoder_config
    torch.manual_seed(2)
    cross = CrossAttention(stack.cross_attention_config, stack)  # 4 query heads over 2 KV heads of 16 dims
    assert (cross.norm_query is None) == (not key_query_norm)
    if key_query_norm:
        assert cross.norm_query.weight.shape == ((16,) if per_head else (64,))
        assert cross.norm_key.weight.shape == ((16,) if per_head else (32,))
        with torch.no_grad():  # gains that do not commute with RoPE: the order norm, then RoPE, matters
            cross.norm_query.weight.uniform_(0.5, 2.0)
            cross.norm_key.weight.uniform_(0.5, 2.0)
    lengths = [3, 1, 5, 2, 4]
    query, byte_states = torch.randn(96), torch.randn(sum(lengths), 64)
    word_cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    word_positions, byte_positions = torch.arange(7, 12), torch.arange(20, 20 + sum(lengths))  # as in generation
    with torch.no_grad():
        got = cross.word_embeddings(query, byte_states, word_cu, word_positions, byte_positions)
        expected = dense_word_embeddings(cross, stack, query, byte_states, lengths, word_positions, byte_positions)
    assert got.shape == (5, 96)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    model = released_model()
    (tmp_path / "config.json").write_text(json.dumps(RELEASED_STYLE))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    loaded = HATModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name, value in original.items():
        assert torch.equal(restored[name], value), name
    batch = HATBatch.from_words([TEXT_A])
    with torch.no_grad():
        # The same function, but not always the same bits: the loaded weights lie in the memory-mapped
        # file, at addresses with other alignments, for which torch's CPU GEMM may block its sums
        # differently (last-bit differences on Zen 4 with torch 2.13).
        torch.testing.assert_close(loaded(batch), model(batch), rtol=1e-5, atol=1e-6)


def test_a_bf16_checkpoint_loads_without_copies_and_keeps_fp32_rope(tmp_path):
    from safetensors.torch import save_file

    from lmkernels.nn.rotary import RotaryEmbedding

    model = released_model()
    (tmp_path / "config.json").write_text(json.dumps(RELEASED_STYLE))
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    loaded = HATModel.from_pretrained(tmp_path)  # bfloat16 by default
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}  # all but the unused decoder weights
    for name, parameter in loaded.named_parameters():
        assert parameter.device.type == "cpu" and parameter.dtype == torch.bfloat16
        assert parameter.requires_grad == trainable[name] and torch.equal(parameter, state[name])
    rotaries = [m for m in loaded.modules() if isinstance(m, RotaryEmbedding)]
    assert rotaries and all(r.inverse_frequencies.dtype == torch.float32 and not r.inverse_frequencies.is_meta
                            for r in rotaries)
    batch = HATBatch.from_words([TEXT_A])
    with torch.no_grad():
        expected = model.to(torch.bfloat16)(batch)
        assert torch.equal(loaded.eval()(batch), expected)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = HATModel(HATConfig.tiny(width=32))
    batch = HATBatch.from_words([TEXT_A, TEXT_B])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = hat_loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_every_trainable_weight_gets_a_gradient():
    """The decoder's one-key cross-attention ignores its queries and keys: those weights are frozen (else
    DistributedDataParallel waits for their gradients), and every other weight gets a gradient."""
    model = HATModel(HATConfig.from_dict(RELEASED_STYLE))
    batch = HATBatch.from_words([TEXT_A, TEXT_B])
    hat_loss(model(batch), batch).backward()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"decoder.decoder_layers.{i}.{name}.weight" for i in range(2)
                      for name in ("query_norm", "cross_attention.q_proj", "cross_attention.k_proj")}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for name, p in model.named_parameters()
               if name not in frozen)


def test_compiles_as_one_graph_and_equals_eager():
    torch.manual_seed(0)
    model = HATModel(HATConfig.tiny(width=32, layers=1, window=7))
    batch = HATBatch.from_words([TEXT_A, TEXT_B])
    compiled = torch.compile(model, fullgraph=True)  # the batch's value checks run in eager mode only
    torch.testing.assert_close(compiled(batch), model(batch), rtol=1e-5, atol=1e-5)


def test_bad_batches():
    model = released_model()
    with pytest.raises(ValueError, match="max_word_size"):
        model(HATBatch.from_words([[b"x" * 101]]))
    with pytest.raises(ValueError, match="sequences"):
        HATBatch.from_words([])
    with pytest.raises(ValueError, match="sequences"):
        HATBatch.from_words([[b"a", b""]])
    batch = HATBatch.from_words([TEXT_A, TEXT_B])
    batch.sequence_bytes = batch.sequence_bytes + 1
    with pytest.raises(ValueError, match="sequence_bytes"):
        model(batch)
    batch = HATBatch.from_words([TEXT_A])
    batch.word_cu = batch.word_cu.flip(0)
    with pytest.raises(ValueError, match="word_cu"):
        model(batch)


@pytest.mark.parametrize("change, error, message", [
    (lambda c: c["encoder_config"].update(num_attention_heads=0), ValueError, "encoder_config.num_attention_heads"),
    (lambda c: c["encoder_config"].update(num_key_value_heads=0), ValueError, "encoder_config.num_key_value_heads"),
    (lambda c: c["encoder_config"]["cross_attention_config"].update(num_attention_heads=0), ValueError,
     "encoder_config.cross_attention_config.num_attention_heads"),
    (lambda c: c["backbone_config"].update(hidden_size=0), ValueError, "backbone_config.hidden_size"),
    (lambda c: c["backbone_config"].update(head_dim=15), ValueError, "backbone_config.head_dim: expected an even"),
    (lambda c: c["encoder_config"]["cross_attention_config"].update(hidden_size_kv=96), ValueError,
     "encoder_config.cross_attention_config.hidden_size_kv: expected the encoder width, 64"),
    (lambda c: c["encoder_config"]["cross_attention_config"].update(hidden_size_q=64), ValueError,
     "encoder_config.cross_attention_config.hidden_size_q: expected the backbone width, 96"),
    (lambda c: c["decoder_config"]["cross_attention_config"].update(hidden_size_kv=64), ValueError,
     "decoder_config.cross_attention_config.hidden_size_kv: expected the backbone width, 96"),
    (lambda c: c["decoder_config"]["cross_attention_config"].update(hidden_size_q=96), ValueError,
     "decoder_config.cross_attention_config.hidden_size_q: expected the decoder width, 64"),
    (lambda c: c["decoder_config"].update(hidden_size=128, intermediate_size=256), ValueError,
     "decoder_config.hidden_size: expected the encoder width"),
    (lambda c: c["encoder_config"].update(vocab_size=0), ValueError, "encoder_config.vocab_size: expected 256"),
    (lambda c: c["decoder_config"].update(vocab_size=300), ValueError, "decoder_config.vocab_size: expected 256"),
    (lambda c: c.update(eos_token_id=300), ValueError, "eos_token_id"),
    (lambda c: c.update(special_token_dict={"<|eot_id|>": 300}), ValueError, "special_token_dict"),
    (lambda c: c["backbone_config"].update(rope_scaling={"type": "linear", "factor": 2.0}), ValueError,
     "backbone_config.rope_scaling"),
    (lambda c: c["encoder_config"].update(sliding_window="5"), TypeError, "encoder_config.sliding_window"),
    (lambda c: c.update(max_word_size="100"), TypeError, "max_word_size"),
    (lambda c: c["encoder_config"].pop("hidden_size"), ValueError, "encoder_config: missing required keys"),
    (lambda c: c.update(backbone_config=[]), TypeError, "backbone_config"),
    (lambda c: c["encoder_config"].pop("intermediate_size"), ValueError, "encoder_config.intermediate_size: required"),
    (lambda c: c["backbone_config"].update(rope_parameters={"rope_type": "yarn", "rope_theta": 500000.0}),
     ValueError, "backbone_config.rope_parameters: only rope_type 'llama3'"),
    (lambda c: c["backbone_config"].update(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0}),
     ValueError, "backbone_config.rope_parameters: rope_theta 10000.0 disagrees"),
    (lambda c: c["backbone_config"].update(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
     ValueError, "backbone_config.rope_parameters: .* disagrees with the stack's rope_scaling"),
    (lambda c: c["backbone_config"].update(rope_parameters={"rope_type": "default"}), ValueError,
     "backbone_config.rope_parameters: missing keys \\['rope_theta'\\]"),
])
def test_bad_configs_name_the_field(change, error, message):
    values = json.loads(json.dumps(RELEASED_STYLE))
    change(values)
    with pytest.raises(error, match=message):
        HATConfig.from_dict(values)


def test_omitted_stack_keys_take_the_llama_config_defaults():
    values = json.loads(json.dumps(RELEASED_STYLE))
    for key in ("rms_norm_eps", "rope_theta", "max_position_embeddings", "num_key_value_heads"):
        values["decoder_config"].pop(key)
    decoder = HATConfig.from_dict(values).decoder_config
    # LlamaConfig's defaults (transformers 4.46 and 5.x alike)
    assert (decoder.rms_norm_eps, decoder.rope_theta, decoder.max_position_embeddings) == (1e-6, 10000.0, 2048)
    assert decoder.kv_heads == decoder.num_attention_heads == 2 and decoder.head_size == 32
    # resolved where used, never written back as if given: to_dict saves what the file said
    assert decoder.num_key_value_heads is None and decoder.head_dim is None
    assert "num_key_value_heads" not in values["decoder_config"]
    saved = HATConfig.from_dict(values).to_dict()["decoder_config"]
    assert saved["num_key_value_heads"] is None and saved["head_dim"] is None


def test_replace_rederives_head_dim_and_kv_heads():
    values = json.loads(json.dumps(RELEASED_STYLE))
    values["backbone_config"].pop("num_key_value_heads")  # 96 wide, 3 heads: 3 KV heads of 32
    config = HATConfig.from_dict(values)
    backbone = config.backbone_config
    more_heads = dataclasses.replace(config, backbone_config=dataclasses.replace(backbone, num_attention_heads=6))
    values["backbone_config"]["num_attention_heads"] = 6
    assert more_heads == HATConfig.from_dict(values)
    assert (more_heads.backbone_config.kv_heads, more_heads.backbone_config.head_size) == (6, 16)
    encoder, decoder = config.encoder_config, config.decoder_config
    wider = dataclasses.replace(
        config, backbone_config=dataclasses.replace(backbone, hidden_size=192),
        encoder_config=dataclasses.replace(encoder, cross_attention_config=dataclasses.replace(
            encoder.cross_attention_config, hidden_size_q=192)),
        decoder_config=dataclasses.replace(decoder, cross_attention_config=dataclasses.replace(
            decoder.cross_attention_config, hidden_size_kv=192)))
    values["backbone_config"].update(num_attention_heads=3, hidden_size=192)
    values["encoder_config"]["cross_attention_config"]["hidden_size_q"] = 192
    values["decoder_config"]["cross_attention_config"]["hidden_size_kv"] = 192
    assert wider == HATConfig.from_dict(values) and wider.backbone_config.head_size == 64
    for changed, fresh in ((more_heads, more_heads.to_dict()), (wider, values)):
        shapes = {name: p.shape for name, p in HATModel(changed).state_dict().items()}
        assert shapes == {name: p.shape for name, p in HATModel(HATConfig.from_dict(fresh)).state_dict().items()}


def test_positional_stack_fields_keep_their_order():
    # hidden, layers, heads, kv heads, intermediate: the order StackConfig has always had
    stack = StackConfig(64, 1, 4, 2, 256)
    assert (stack.num_key_value_heads, stack.intermediate_size, stack.head_size) == (2, 256, 16)


def test_transformers_5_rope_parameters_are_read():
    values = json.loads(json.dumps(RELEASED_STYLE))
    backbone = values["backbone_config"]
    parameters = {"rope_type": backbone.pop("rope_scaling")["rope_type"], "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
                  "rope_theta": backbone.pop("rope_theta")}
    backbone["rope_parameters"] = parameters
    assert HATConfig.from_dict(values) == HATConfig.from_dict(RELEASED_STYLE)
    backbone.update(rope_theta=500000.0, rope_scaling={"type": "llama3", **{k: v for k, v in parameters.items()
                                                                            if k not in ("rope_type", "rope_theta")}})
    assert HATConfig.from_dict(values) == HATConfig.from_dict(RELEASED_STYLE)  # both given, and they agree
    values["decoder_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    assert HATConfig.from_dict(values) == HATConfig.from_dict(RELEASED_STYLE)


def test_a_transformers_llama_config_dict_is_read():
    transformers = pytest.importorskip("transformers")
    released = json.loads(json.dumps(RELEASED_STYLE["backbone_config"]))  # LlamaConfig edits rope_scaling in place
    llama = transformers.LlamaConfig(**{key: released[key] for key in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
        "intermediate_size", "max_position_embeddings", "rope_theta", "rope_scaling", "mlp_bias", "vocab_size")})
    values = {**RELEASED_STYLE, "backbone_config": llama.to_dict()}
    backbone = HATConfig.from_dict(values).backbone_config
    assert (backbone.rope_theta, backbone.rope_scaling) == (500000.0, RELEASED_STYLE["backbone_config"]["rope_scaling"])


def test_top_level_sliding_window_may_be_none():
    values = json.loads(json.dumps(RELEASED_STYLE))
    values["sliding_window"] = None
    assert HATConfig.from_dict(values).sliding_window is None


def test_default_rope_type_means_no_scaling():
    values = json.loads(json.dumps(RELEASED_STYLE))
    values["backbone_config"]["rope_scaling"] = {"rope_type": "default"}
    config = HATConfig.from_dict(values)
    assert config.backbone_config.rope_scaling is None
    values["backbone_config"]["rope_scaling"] = None
    assert config == HATConfig.from_dict(values)


def test_a_given_head_dim_is_honoured():
    values = json.loads(json.dumps(RELEASED_STYLE))
    values["encoder_config"]["head_dim"] = 16  # 64 / 2 heads would be 32
    torch.manual_seed(0)
    model = HATModel(HATConfig.from_dict(values)).eval()
    attention = model.encoder.layers[0].self_attn
    assert attention.q_proj.weight.shape == (2 * 16, 64) and attention.o_proj.weight.shape == (64, 2 * 16)
    with torch.no_grad():
        assert model(HATBatch.from_words([TEXT_A])).shape == (sum(map(len, TEXT_A)), 256)


def test_a_window_past_every_key_is_no_window():
    values = json.loads(json.dumps(RELEASED_STYLE))
    values["encoder_config"]["sliding_window"] = values["decoder_config"]["sliding_window"] = None
    torch.manual_seed(0)
    unbounded = HATModel(HATConfig.from_dict(values)).eval()
    values["encoder_config"]["sliding_window"] = values["decoder_config"]["sliding_window"] = 2**63 - 1
    huge = HATModel(HATConfig.from_dict(values)).eval()
    huge.load_state_dict(unbounded.state_dict())
    batch = HATBatch.from_words([TEXT_A, TEXT_B])
    with torch.no_grad():
        assert torch.equal(huge(batch), unbounded(batch))


@pytest.mark.parametrize("model", [released_model, lambda: HATModel(HATConfig.tiny(width=32, layers=2, window=5))])
def test_forward_backward_and_generate_under_autocast(model):
    model = model().train()
    batch = HATBatch.from_words([TEXT_A, TEXT_B])
    expected = model(batch)
    hat_loss(expected, batch).backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch)
        loss = hat_loss(logits, batch)
    loss.backward()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    torch.testing.assert_close(logits.float(), expected.detach(), rtol=0.1, atol=0.1)
    assert {name for name, p in model.named_parameters() if p.grad is not None} == trained
    assert all(bool(p.grad.isfinite().all()) for name, p in model.named_parameters() if name in trained)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        text = model.eval().generate("Hello", 12)
    assert isinstance(text, str) and len(text.encode()) <= 12 * 3


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8, torch.uint16, torch.uint32,
                                   torch.uint64])
def test_every_integer_dtype_is_converted(dtype):
    good = HATBatch.from_words([TEXT_A, TEXT_A[:3]])  # ASCII: every value fits int8 too
    batch = HATBatch(*(getattr(good, name).to(dtype) for name in ("bytes", "word_cu", "sequence_bytes",
                                                                   "sequence_words")))
    batch.check(100)
    assert all(torch.equal(getattr(batch, name), getattr(good, name))
               for name in ("bytes", "word_cu", "sequence_bytes", "sequence_words"))


def test_split_batch_output_packs_directly():
    from lmkernels.hat import split_batch

    split = split_batch(["Hello world, how are you?", "Größe 日本 ok"], 100)
    assert split.bytes.dtype == torch.uint8
    packed = HATBatch(split.bytes, split.word_offsets, split.word_offsets[split.text_word_offsets],
                      split.text_word_offsets)
    assert packed.bytes.dtype == torch.int64
    model = released_model()
    with torch.no_grad():
        assert torch.equal(model(packed), model(HATBatch.from_words([split.words(0), split.words(1)])))


def batch_with(**fields):
    good = HATBatch.from_words([[b"ab", b" cd"], [b"x", b"yz", b"!"]])
    values = dict(bytes=good.bytes, word_cu=good.word_cu, sequence_bytes=good.sequence_bytes,
                  sequence_words=good.sequence_words)
    if "sequence_words" in fields and "sequence_bytes" not in fields:
        fields["sequence_bytes"] = good.word_cu[fields["sequence_words"].clamp(0, 5)]
    return HATBatch(**{**values, **fields})


@pytest.mark.parametrize("make, error, message", [
    (lambda: HATBatch(torch.zeros(0, dtype=torch.long), torch.tensor([0]), torch.tensor([0]), torch.tensor([0])),
     ValueError, "bytes: expected at least one byte"),
    (lambda: batch_with(bytes=torch.arange(9.0)), TypeError, "bytes: expected int64"),
    (lambda: batch_with(bytes=torch.ones(9, dtype=torch.bool)), TypeError, "bytes: expected int64"),
    (lambda: batch_with(word_cu=torch.tensor([0, 2, 5, 6, 8, 2**64 - 1], dtype=torch.uint64)), ValueError,
     "word_cu"),
    (lambda: batch_with(bytes=torch.arange(9)[None]), ValueError, "bytes: expected 1 dimension"),
    (lambda: batch_with(word_cu=[0, 2, 5, 6, 8, 9]), TypeError, "word_cu: expected a torch.Tensor"),
    (lambda: batch_with(word_cu=torch.tensor([0.0, 2, 5, 6, 8, 9])), TypeError, "word_cu: expected int64"),
    (lambda: batch_with(sequence_words=torch.tensor([0, 3, 2, 5])), ValueError, "sequence_words"),
    (lambda: batch_with(sequence_words=torch.tensor([0, 2, 5, 5])), ValueError, "sequence_words"),
    (lambda: batch_with(sequence_words=torch.tensor([0, 0, 2, 5])), ValueError, "sequence_words"),
    (lambda: batch_with(sequence_words=torch.tensor([5])), ValueError, "sequence_words"),
    (lambda: batch_with(sequence_bytes=torch.tensor([0, 4, 9])), ValueError, "sequence_bytes"),
    (lambda: HATBatch.from_words([["ab", " cd"]]), TypeError, "sequences\\[0\\]\\[0\\]: expected bytes"),
])
def test_malformed_batches_name_the_field(make, error, message):
    model = released_model()
    with pytest.raises(error, match=message):
        model(make())


def test_a_loss_with_nothing_to_predict_raises():
    model = released_model()
    batch = HATBatch.from_words([[b"a"], [b"b"]])
    with pytest.raises(ValueError, match="batch: no byte to predict"):
        hat_loss(model(batch), batch)
    batch = HATBatch.from_words([[b"a"], [b"bc"]])
    assert torch.isfinite(hat_loss(model(batch), batch))
