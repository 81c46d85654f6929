"""The shared transformer blocks: RMSNorm, interleaved RoPE, attention with a KV cache, the decoder."""

import pytest
import torch

from lmkernels.nn import Decoder, DecoderConfig, RMSNorm, RotaryEmbedding, SelfAttention


def test_rms_norm_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    ours = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    theirs = torch.nn.RMSNorm(16, eps=1e-5)
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs(x))


def test_rotary_is_complex_multiplication_of_interleaved_pairs():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 8)
    positions = torch.arange(7).expand(2, 7)
    rotated = RotaryEmbedding(8, base=10000.0)(x, positions)
    frequencies = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    phases = torch.polar(torch.ones(7, 4, dtype=torch.float64), torch.arange(7)[:, None] * frequencies)
    expected = torch.view_as_real(torch.view_as_complex(x.double().unflatten(-1, (4, 2)).contiguous()) * phases)
    torch.testing.assert_close(rotated, expected.flatten(-2).float())


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16)
    q, k = torch.randn(16), torch.randn(16)

    def score(pq, pk):
        return rope(q[None], torch.tensor([pq])) @ rope(k[None], torch.tensor([pk])).T

    torch.testing.assert_close(score(3, 1), score(10, 8))
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(7)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_with_cache_equals_full_pass(kv_heads):
    torch.manual_seed(0)
    attention = SelfAttention(32, 4, kv_heads)
    x = torch.randn(2, 9, 32)
    positions = torch.arange(9).expand(2, 9)
    full = attention(x, positions)
    from lmkernels.nn import KVCache

    cache = KVCache(1)
    pieces = [attention(x[:, :5], positions[:, :5], cache=cache)]
    for i in range(5, 9):
        pieces.append(attention(x[:, i:i + 1], positions[:, i:i + 1], cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_explicit_causal_mask_equals_default_and_resets_block_documents():
    torch.manual_seed(0)
    attention = SelfAttention(16, 2)
    x = torch.randn(1, 6, 16)
    positions = torch.arange(6)[None]
    causal = torch.ones(6, 6, dtype=torch.bool).tril()[None]
    torch.testing.assert_close(attention(x, positions, causal), attention(x, positions))
    # Two documents of three positions: the second must not see the first.
    documents = torch.tensor([0, 0, 0, 1, 1, 1])
    allowed = causal & (documents[:, None] == documents[None, :])
    reset_positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    packed = attention(x, reset_positions, allowed)
    alone = attention(x[:, 3:], positions[:, :3])
    torch.testing.assert_close(packed[:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_decoder_cache_and_gradients():
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(dim=32, num_layers=2, num_heads=4))
    x = torch.randn(1, 6, 32, requires_grad=True)
    positions = torch.arange(6)[None]
    out = decoder(x, positions)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    cache = decoder.new_cache()
    prefix = decoder(x[:, :4].detach(), positions[:, :4], cache=cache)
    step = decoder(x[:, 4:5].detach(), positions[:, 4:5], cache=cache)
    torch.testing.assert_close(torch.cat([prefix, step], 1), out[:, :5].detach(), atol=1e-5, rtol=1e-5)
    assert cache.length == 5


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_last_queries_only_equal_the_full_pass_and_fill_the_whole_cache(kv_heads):
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=kv_heads))
    x = torch.randn(2, 9, 32)
    positions = torch.arange(9).expand(2, 9)
    full_cache, tail_cache = decoder.new_cache(), decoder.new_cache()
    full = decoder(x, positions, cache=full_cache)
    tail = decoder(x, positions, cache=tail_cache, queries=3)
    assert tail.shape == (2, 3, 32)
    torch.testing.assert_close(tail, full[:, -3:], atol=1e-6, rtol=1e-6)
    for layer in range(2):  # every position's keys and values, in the last layer too
        torch.testing.assert_close(tail_cache.keys[layer], full_cache.keys[layer], atol=0, rtol=0)
    allowed = torch.ones(9, 9, dtype=torch.bool).tril()[None].expand(2, -1, -1)
    torch.testing.assert_close(decoder(x, positions, allowed, queries=4), full[:, -4:], atol=1e-6, rtol=1e-6)


def test_queries_out_of_range_raise_value_error():
    attention = SelfAttention(16, 2)
    x, positions = torch.randn(1, 5, 16), torch.arange(5)[None]
    for bad in (0, 6):
        with pytest.raises(ValueError, match="queries"):
            attention(x, positions, queries=bad)
