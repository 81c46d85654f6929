"""``lmk::int8_quantize``, ``lmk::int8_dequantize``, ``lmk::int8_fake_quantize``: int8 absmax
quantisation of a weight matrix ``W [out, in]``, one scale per output channel (row):

    scale[r]  = max_c |W[r, c]| / 127                                  (fp32)
    q[r, c]   = clamp(round_half_even(W[r, c] / scale[r]), -127, 127)   (int8)
    W'[r, c]  = q[r, c] * scale[r]                                      (fp32, rounded once to W's dtype)

The division is a true fp32 division, so ``torch.round(W.float() / scale[:, None]).clamp(-127, 127)``
gives the same q bit for bit. A row whose scale is 0 (all zeros, or absmax / 127 underflowing) is
divided by 1 instead and quantises to zeros. ``W`` is float32, bfloat16 or float16, 2-D, with rows
at any stride.

Non-finite weights raise ``ValueError`` naming ``weight``: inf would make the row's scale inf and
the whole row NaN, and NaN has no absmax, so either is a bug upstream rather than something to
quantise. In place, rows holding them are left as they were (the other rows are quantised). On a
GPU the check reads an error flag back, which synchronises with the device once per call.

Gradients: ``int8_fake_quantize`` passes the gradient of ``W'`` straight through to ``W`` (the
straight-through estimator of quantisation-aware training); rounding has zero gradient almost
everywhere, so the exact gradient would be useless. Its returned scales, and both outputs of
``int8_quantize`` (an integer q and its scales), carry no gradient: they are marked
non-differentiable, so a loss that depends on ``W`` only through them has nothing to
backpropagate and ``backward`` raises torch's "does not require grad" error. ``int8_dequantize``
is linear in ``scale``: ``grad_scale[r] = sum_c grad[r, c] * q[r, c]`` (q is an integer: none).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.ops._native import (_C, call_op, define_autograd, define_op, dl, error_flag, kernel_output,
                                   raise_on_flag, stream_of)

_VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def int8_quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Quantise ``weight`` per row; see the module docstring for the math.

    Args:
        weight: [out, in] float32, bfloat16 or float16, finite.

    Returns:
        ``(q, scale)``: q [out, in] int8 (contiguous) and scale [out] float32.
    """
    _require_tensor(weight, "weight")
    return call_op("int8_quantize", weight)


def int8_dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``W'[r, c] = q[r, c] * scale[r]`` computed in fp32 and rounded once to ``dtype``.

    Args:
        q: [out, in] int8 (any int8 value, -128 included, is dequantised as it is).
        scale: [out] float32.
        dtype: float32, bfloat16 or float16.

    Returns:
        [out, in] of ``dtype`` (contiguous).
    """
    _require_tensor(q, "q")
    _require_tensor(scale, "scale")
    if scale.device != q.device:
        raise ValueError(f"scale: expected the device of q ({q.device}), got {scale.device}")
    return call_op("int8_dequantize", q, scale, dtype)


def int8_fake_quantize(weight: Tensor, *, inplace: bool = False,
                       return_scale: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Quantise-dequantise ``weight`` in one pass: ``W' = int8_dequantize(*int8_quantize(W), W.dtype)``.

    Args:
        weight: [out, in] float32, bfloat16 or float16, finite.
        inplace: overwrite ``weight`` with ``W'`` (it needs unit stride within rows, and must not
            require grad while grad mode is on) and return it.
        return_scale: also return the [out] float32 scales.

    Returns:
        ``W'`` with the shape and dtype of ``weight``, or ``(W', scale)`` with ``return_scale``.
        The gradient of ``W'`` flows to ``weight`` unchanged (straight-through estimator).
    """
    _require_tensor(weight, "weight")
    if inplace:
        if weight.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("weight: in-place fake quantisation of a tensor that requires grad; "
                               "call it under torch.no_grad() or use inplace=False")
        scale = call_op("int8_fake_quantize_", weight)
        result = weight
    else:
        result, scale = call_op("int8_fake_quantize", weight)
    return (result, scale) if return_scale else result


def _require_tensor(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _require_matrix(t: Tensor, name: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name}: expected 2 dimensions, got shape {list(t.shape)}")


def _rows(t: Tensor) -> Tensor:
    """``t`` with unit stride within rows (copied only where it has not)."""
    return t if t.is_contiguous() or t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def _check_flag(flag: Tensor | None) -> None:
    raise_on_flag(flag, lambda: {_C.QUANT_NON_FINITE: ValueError(
        "weight: a row holds a non-finite value (inf or NaN); int8 absmax quantisation needs finite weights")})


def _quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
    _require_matrix(weight, "weight")
    weight = _rows(weight)
    q = kernel_output(weight.shape, torch.int8, weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    flag = error_flag(weight)
    _C.int8_absmax_quantize(dl(weight), dl(q), dl(scale), dl(flag), stream_of(weight))
    _check_flag(flag)
    return q, scale


def _quantize_fake(weight):
    _require_matrix(weight, "weight")
    return (weight.new_empty(weight.shape, dtype=torch.int8),
            weight.new_empty((weight.shape[0],), dtype=torch.float32))


define_op("int8_quantize(Tensor weight) -> (Tensor, Tensor)", _quantize, _quantize_fake)


def _check_dtype_argument(dtype) -> None:
    if dtype not in _VALUE_DTYPES:
        raise TypeError(f"dtype: expected torch.float32, torch.bfloat16 or torch.float16, got {dtype}")


def _dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    _require_matrix(q, "q")
    _check_dtype_argument(dtype)
    q = _rows(q)
    out = kernel_output(q.shape, dtype, q.device)
    _C.int8_absmax_dequantize(dl(q), dl(scale.contiguous()), dl(out), stream_of(q))
    return out


def _dequantize_fake(q, scale, dtype):
    _require_matrix(q, "q")
    _check_dtype_argument(dtype)
    return q.new_empty(q.shape, dtype=dtype)


define_op("int8_dequantize(Tensor q, Tensor scale, ScalarType dtype) -> Tensor", _dequantize, _dequantize_fake)


def _fake_quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
    _require_matrix(weight, "weight")
    weight = _rows(weight)
    out = kernel_output(weight.shape, weight.dtype, weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    flag = error_flag(weight)
    _C.int8_absmax_fake_quantize(dl(weight), dl(out), dl(scale), dl(flag), stream_of(weight))
    _check_flag(flag)
    return out, scale


def _fake_quantize_fake(weight):
    _require_matrix(weight, "weight")
    return weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],), dtype=torch.float32)


define_op("int8_fake_quantize(Tensor weight) -> (Tensor, Tensor)", _fake_quantize, _fake_quantize_fake)


def _fake_quantize_inplace(weight: Tensor) -> Tensor:
    _require_matrix(weight, "weight")
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    flag = error_flag(weight)
    _C.int8_absmax_fake_quantize(dl(weight), dl(weight), dl(scale), dl(flag), stream_of(weight))
    _check_flag(flag)
    if not weight.is_inference():  # a write torch did not see: autograd must know the tensor changed
        torch.autograd.graph.increment_version(weight)
    return scale


def _fake_quantize_inplace_fake(weight):
    _require_matrix(weight, "weight")
    return weight.new_empty((weight.shape[0],), dtype=torch.float32)


define_op("int8_fake_quantize_(Tensor(a!) weight) -> Tensor", _fake_quantize_inplace, _fake_quantize_inplace_fake)


# ---- autograd ---------------------------------------------------------------------------------

def _fake_quantize_context(ctx, inputs, output):
    ctx.dtype = inputs[0].dtype
    ctx.mark_non_differentiable(output[1])


def _straight_through(ctx, grad_out, grad_scale):
    return None if grad_out is None else grad_out.to(ctx.dtype)


def _quantize_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _quantize_backward(ctx, grad_q, grad_scale):
    return None


def _dequantize_context(ctx, inputs, output):
    q, scale, _ = inputs
    ctx.save_for_backward(q)
    ctx.scale_dtype = scale.dtype


def _dequantize_backward(ctx, grad_out):
    (q,) = ctx.saved_tensors
    grad_scale = (grad_out.float() * q.float()).sum(1).to(ctx.scale_dtype) if ctx.needs_input_grad[1] else None
    return None, grad_scale, None


define_autograd("int8_fake_quantize", _straight_through, _fake_quantize_context)
define_autograd("int8_quantize", _quantize_backward, _quantize_context)
define_autograd("int8_dequantize", _dequantize_backward, _dequantize_context)
