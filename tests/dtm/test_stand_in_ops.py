"""The two ops the pipeline uses, ``token_divergence`` and ``int8_fake_quantize``: the parts of their
contracts the pipeline relies on (argmax with ties to the lowest index, match, NLL, KL, int8 absmax)."""

import pytest
import torch

from lmkernels.ops import int8_fake_quantize, token_divergence


def test_token_divergence_values():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    logits[0, 1, 4] = logits[0, 1, 7] = 10.0  # a tie: the lowest index wins
    reference = torch.tensor([[0, 7, 2], [5, 5, 5]])
    other = torch.randn(2, 3, 11)
    result = token_divergence(logits, reference, reference_logits=other)
    assert result.argmax[0, 1] == 4 and not result.match[0, 1]
    torch.testing.assert_close(result.match, result.argmax == reference)
    expected_nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), reference.flatten(), reduction="none")
    torch.testing.assert_close(result.nll, expected_nll.view(2, 3))
    assert result.margin.shape == (2, 3) and result.margin.dtype == torch.float32
    expected_kl = torch.nn.functional.kl_div(logits.log_softmax(-1), other.log_softmax(-1), log_target=True,
                                             reduction="none").sum(-1)
    torch.testing.assert_close(result.kl, expected_kl)
    assert token_divergence(logits, reference).kl is None


def test_token_divergence_bad_input():
    logits = torch.randn(1, 2, 5)
    with pytest.raises(IndexError, match="reference_tokens"):
        token_divergence(logits, torch.tensor([[1, 5]]))
    with pytest.raises(ValueError, match="reference_tokens"):
        token_divergence(logits, torch.tensor([[1]]))
    with pytest.raises(TypeError, match="logits"):
        token_divergence(logits.long(), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="reference_logits"):
        token_divergence(logits, torch.tensor([[1, 2]]), reference_logits=torch.randn(1, 2, 4))


def test_int8_fake_quantize():
    weight = torch.tensor([[1.27, -0.005, 0.015, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.54, 0.03, 1.0, 0.01]])
    result = int8_fake_quantize(weight)
    scale = torch.tensor([[0.01], [0.0], [0.02]])
    q = torch.tensor([[127, 0, 2, 0], [0, 0, 0, 0], [-127, 2, 50, 0]], dtype=torch.float32)  # half to even
    torch.testing.assert_close(result, q * scale)
    assert (result[1] == 0).all()
    bf16 = int8_fake_quantize(weight.bfloat16())
    assert bf16.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="weight"):
        int8_fake_quantize(torch.randn(3))
    with pytest.raises(TypeError, match="weight"):
        int8_fake_quantize(torch.ones(2, 2, dtype=torch.int32))
