"""``SelfAttention`` with AtMan's ``KeySuppression`` and a shared prefix: defaults unchanged, the
suppressed path through ``lmkernels.ops.attention``, prefix passes equal full passes."""

import pytest
import torch

from lmkernels.nn import CausalLM, DecoderConfig, KeySuppression


def _model():
    torch.manual_seed(0)
    return CausalLM(50, DecoderConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2)).eval()


def test_no_suppression_is_the_default_path_and_close_to_sdpa():
    # On the CPU plain causal attention runs through lmkernels.ops.attention too: the same bits. SDPA with
    # the causal mask (what an explicit `allowed` takes) agrees to rounding.
    model = _model()
    tokens = torch.randint(50, (2, 9))
    assert torch.equal(model(tokens, suppression=KeySuppression()), model(tokens))
    causal = torch.ones(2, 9, 9, dtype=torch.bool).tril()
    torch.testing.assert_close(model(tokens, allowed=causal), model(tokens), atol=1e-5, rtol=1e-5)


def test_knockout_bias_equals_a_boolean_mask():
    model = _model()
    tokens = torch.randint(50, (1, 9))
    bias = torch.zeros(1, 9)
    bias[0, 4] = float("-inf")
    allowed = torch.ones(9, 9, dtype=torch.bool).tril()
    allowed[5:, 4] = False
    allowed[4, 4] = False
    suppressed = model(tokens, suppression=KeySuppression(key_bias=bias))
    # row 4 then sees keys 0..3 only, like every later row without key 4
    torch.testing.assert_close(suppressed, model(tokens, allowed=allowed[None]), atol=1e-5, rtol=1e-5)


def test_suppression_acts_only_in_its_layers():
    model = _model()
    tokens = torch.randint(50, (1, 9))
    bias = torch.zeros(1, 9)
    bias[0, 2] = -3.0
    clean = model(tokens)
    everywhere = model(tokens, suppression=KeySuppression(key_bias=bias))
    nowhere = model(tokens, suppression=KeySuppression(key_bias=bias, layers=frozenset({7})))
    first = model(tokens, suppression=KeySuppression(key_bias=bias, layers=frozenset({0})))
    torch.testing.assert_close(nowhere, clean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, clean, atol=1e-4) and not torch.allclose(first, everywhere, atol=1e-4)
    torch.testing.assert_close(everywhere[:, :2], clean[:, :2], atol=1e-5, rtol=1e-5)  # causal: rows < 2 untouched


def test_shared_prefix_pass_equals_the_full_pass():
    model = _model()
    tokens = torch.randint(50, (1, 10))
    cache = model.new_cache()
    model(tokens, cache=cache, suppression=KeySuppression())
    factors = torch.ones(3, 10)
    factors[0, 6], factors[1, 7], factors[2, 9] = 0.1, 0.0, 0.5
    suppression = KeySuppression(key_factor=factors)
    full = model(tokens.expand(3, -1), suppression=suppression)
    suffix = model(tokens[:, 6:].expand(3, -1), suppression=suppression, prefix=cache.prefix(6))
    torch.testing.assert_close(suffix, full[:, 6:], atol=1e-5, rtol=1e-5)
    # The last positions only, as AtMan's passes ask for the target rows: the suppressed kernel path.
    tokens_after = tokens[:, 6:].expand(3, -1)
    hidden = model.decoder(model.embedding(tokens_after), torch.arange(6, 10).expand(3, -1),
                           suppression=suppression, prefix=cache.prefix(6), queries=2)
    torch.testing.assert_close(model.head(hidden), full[:, -2:], atol=1e-5, rtol=1e-5)


def test_bad_combinations():
    model = _model()
    tokens = torch.randint(50, (1, 4))
    cache = model.new_cache()
    model(tokens, cache=cache)
    with pytest.raises(ValueError, match="allowed"):
        model(tokens, allowed=torch.ones(1, 4, 4, dtype=torch.bool), suppression=KeySuppression())
    with pytest.raises(ValueError, match="prefix"):
        model(tokens, cache=model.new_cache(), prefix=cache.prefix(2))
    with pytest.raises(ValueError, match="length"):
        cache.prefix(5)
