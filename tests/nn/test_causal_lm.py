"""``CausalLM``: logits shape, KV cache equals the full pass, masks, bad input; the byte tokenizer."""

import pytest
import torch

from lmkernels.nn import ByteTokenizer, CausalLM, DecoderConfig


def _model():
    torch.manual_seed(0)
    return CausalLM(50, DecoderConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2)).eval()


def test_forward_gives_logits_per_position():
    model = _model()
    tokens = torch.randint(50, (3, 7))
    assert model(tokens).shape == (3, 7, 50)
    assert model.head.weight.data_ptr() != model.embedding.weight.data_ptr()  # untied


def test_cache_equals_full_pass():
    model = _model()
    tokens = torch.randint(50, (2, 9))
    full = model(tokens)
    cache = model.new_cache()
    pieces = [model(tokens[:, :4], cache=cache)] + [model(tokens[:, i:i + 1], cache=cache) for i in range(4, 9)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_explicit_positions_and_mask_equal_defaults():
    model = _model()
    tokens = torch.randint(50, (2, 6))
    positions = torch.arange(6).expand(2, 6)
    allowed = torch.ones(2, 6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(model(tokens, positions, allowed=allowed), model(tokens))


def test_bad_input():
    model = _model()
    with pytest.raises(ValueError, match="tokens"):
        model(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(TypeError, match="tokens"):
        model(torch.zeros(1, 5))
    with pytest.raises(IndexError, match="tokens"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(1, 5, dtype=torch.int64), torch.zeros(1, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="vocab_size"):
        CausalLM(0, DecoderConfig(dim=32, num_layers=1, num_heads=4))


def test_byte_tokenizer_round_trips_utf8():
    tokenizer = ByteTokenizer()
    text = "Größe: 3.14 €"
    tokens = tokenizer.encode(text)
    assert tokens.dtype == torch.int64 and tokens.tolist() == list(text.encode("utf-8"))
    assert tokenizer.decode(tokens) == text
    assert tokenizer.decode([0xFF]) == "\ufffd"
    with pytest.raises(TypeError, match="text"):
        tokenizer.encode(b"bytes")


def test_compiles_with_fullgraph():
    torch.manual_seed(0)
    model = CausalLM(256, DecoderConfig(dim=32, num_layers=1, num_heads=2))
    tokens = torch.randint(256, (2, 6))
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(tokens), model(tokens))
