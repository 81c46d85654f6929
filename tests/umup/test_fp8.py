"""The FP8 linear equals a reference that casts with ``.to(float8)`` and multiplies in float32, stays close to
the fp32 unit-scaled linear, saturates instead of overflowing, and rejects bad arguments."""

import pytest
import torch

import lmkernels.umup.functional as U
from lmkernels.umup import fp8_linear

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def _q(t, dtype):
    """Saturating cast then back to float32: the value the FP8 GEMM multiplies."""
    limit = torch.finfo(dtype).max
    return t.float().clamp(-limit, limit).to(dtype).float()


def _reference(x, w, b, g, constraint, power=(0.5, 0.5, 0.5)):
    """Output and the gradients of x, w, b from fp8 casts and float32 matmuls."""
    fan_out, fan_in = w.shape
    x2, g2 = x.reshape(-1, fan_in), g.reshape(-1, fan_out)
    s_out, s_x = fan_in ** -power[0], fan_out ** -power[1]
    s_w = x2.shape[0] ** -power[2]
    if constraint == "to_output_scale":
        s_x = s_out
    y = (_q(x2, E4M3) @ _q(w, E4M3).T) * s_out
    if b is not None:
        y = y + b.float() * s_out
    grad_x = (_q(g2, E5M2) @ _q(w, E4M3)) * s_x
    grad_w = (_q(g2, E5M2).T @ _q(x2, E4M3)) * s_w
    grad_b = None if b is None else g2.float().sum(0) * s_w
    return y.reshape(*x.shape[:-1], fan_out), grad_x.reshape(x.shape), grad_w, grad_b


def _ours(x, w, b, g, constraint, power=(0.5, 0.5, 0.5)):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w)] + \
        ([b.detach().clone().requires_grad_()] if b is not None else [])
    y = fp8_linear(leaves[0], leaves[1], leaves[2] if b is not None else None, constraint, power)
    grads = torch.autograd.grad(y, leaves, g)
    return y, grads[0], grads[1], grads[2] if b is not None else None


def _inputs(shape, fan_out, bias, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    fan_in = shape[-1]
    x = torch.randn(*shape, generator=gen).to(dtype)
    w = torch.randn(fan_out, fan_in, generator=gen).to(dtype)
    b = torch.randn(fan_out, generator=gen).to(dtype) if bias else None
    g = torch.randn(*shape[:-1], fan_out, generator=gen).to(dtype)
    return x, w, b, g


@pytest.mark.parametrize("constraint", [None, "to_output_scale"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape, fan_out", [((37, 24), 40), ((2, 5, 64), 16), ((1, 3), 1)])
def test_equals_the_cast_and_float32_reference(constraint, bias, shape, fan_out):
    x, w, b, g = _inputs(shape, fan_out, bias)
    x = x * 3  # some values beyond E4M3's finer range, and gradients spread over E5M2's
    for ours, ref in zip(_ours(x, w, b, g, constraint), _reference(x, w, b, g, constraint), strict=True):
        if ref is None:
            assert ours is None
            continue
        assert ours.dtype == torch.float32 and ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_scale_power_sets_the_alphas():
    x, w, b, g = _inputs((20, 32), 24, True)
    power = (1.0, 0.5, 0.25)
    for ours, ref in zip(_ours(x, w, b, g, None, power), _reference(x, w, b, g, None, power), strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs_give_bfloat16_results():
    x, w, b, g = _inputs((33, 48), 32, True, dtype=torch.bfloat16)
    ours = _ours(x, w, b, g, "to_output_scale")
    for o, ref in zip(ours, _reference(x, w, b, g, "to_output_scale"), strict=True):
        assert o.dtype == torch.bfloat16
        torch.testing.assert_close(o.float(), ref, rtol=2**-7, atol=1e-2)  # one bf16 rounding of the fp32 result


def test_close_to_the_fp32_unit_scaled_linear():
    x, w, b, g = _inputs((256, 128), 128, True, seed=3)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    exact = U.linear(*leaves, constraint="to_output_scale")
    exact_grads = torch.autograd.grad(exact, leaves, g)
    for ours, ref in zip(_ours(x, w, b, g, "to_output_scale"), (exact, *exact_grads), strict=True):
        # E4M3 keeps 3 mantissa bits, E5M2 2: a few percent of relative error, averaged down by the sums
        assert ((ours - ref).norm() / ref.norm()).item() < 0.1


def test_a_transposed_weight_view_is_accepted():
    x, w, _, g = _inputs((9, 16), 16, False)
    for ours, ref in zip(_ours(x, w.t(), None, g, None), _reference(x, w.t(), None, g, None), strict=True):
        if ref is not None:
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_saturates_and_keeps_nan():
    w = torch.ones(2, 4)
    y = fp8_linear(torch.full((1, 4), 1e6), w, constraint=None)
    torch.testing.assert_close(y, torch.full((1, 2), 448.0 * 4 / 2))  # E4M3 max 448, times fan_in^-1/2 = 1/2
    x = torch.zeros(2, 4)
    x[1, 2] = float("nan")
    y = fp8_linear(x, w)
    assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any()
    leaf = torch.ones(3, 4, requires_grad=True)
    grad, = torch.autograd.grad(fp8_linear(leaf, w), leaf, torch.full((3, 2), 1e9))
    torch.testing.assert_close(grad, torch.full((3, 4), 57344.0 * 2 / 2))  # E5M2 max, summed over 2, times 1/2


def test_bad_arguments():
    w = torch.randn(8, 4)
    with pytest.raises(TypeError, match="input"):
        fp8_linear(torch.ones(2, 4, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="input"):
        fp8_linear(torch.ones(2, 5), w)
    with pytest.raises(ValueError, match="bias"):
        fp8_linear(torch.ones(2, 4), w, torch.zeros(4))
    with pytest.raises(ValueError, match="constraint"):
        fp8_linear(torch.ones(2, 4), w, constraint="bogus")


def test_empty_batch_forward_and_backward():
    x, weight = torch.randn(0, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    y = fp8_linear(x, weight)
    y.sum().backward()  # the gradient of y.sum() has stride 0
    assert y.shape == (0, 8) and x.grad.shape == (0, 16) and not weight.grad.any()


@pytest.mark.parametrize("shape, fan_out", [((3, 0), 5), ((2, 3, 4), 0)], ids=["fan_in 0", "fan_out 0"])
def test_zero_fan_in_or_fan_out_equals_the_unit_scaled_linear(shape, fan_out):
    """Empty sizes have no scale to correct: the result is ``U.linear``'s (the bias alone, or empty)."""
    x, w, b, g = _inputs(shape, fan_out, True)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    exact = U.linear(*leaves, constraint="to_output_scale")
    exact_grads = torch.autograd.grad(exact, leaves, g)
    for ours, ref in zip(_ours(x, w, b, g, "to_output_scale"), (exact, *exact_grads), strict=True):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
