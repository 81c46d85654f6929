"""Scale-free FP8 training of a unit-scaled linear layer on the ``lmk::fp8_cast`` and ``lmk::fp8_gemm`` kernels.

The u-muP FP8 recipe (specs/umup_dtm.md 2.2): unit scaling keeps activations, weights and
gradients near unit scale, so every GEMM operand is cast to FP8 with a saturating round-to-nearest
cast and no scale factor, and the u-muP multipliers become the GEMMs' ``alpha``. With ``x`` [B, K],
``W`` [N, K], ``q4`` / ``q5`` the saturating casts to E4M3 (max 448) / E5M2 (max 57344) and the scales
``s_out``, ``s_x``, ``s_W`` of ``lmkernels.umup.functional.linear``::

    forward        y  = s_out * (q4(x) q4(W)^T) + s_out * b          E4M3 x E4M3
    grad-input     dx = s_x   * (q5(dy) q4(W))                       E5M2 x E4M3
    grad-weight    dW = s_W   * (q5(dy)^T q4(x))                     E5M2 x E4M3 (the E4M3 x E5M2 pair, transposed)
    grad-bias      db = s_W   * sum_rows dy                          in high precision

Each GEMM accumulates in fp32 and writes the input's (or the weight's) dtype. The FP8 copies of
``x`` and ``W`` made for the forward are kept for the backward (half the memory of bf16). Values
beyond the format's range saturate to its largest finite value (NaN stays NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.ops import fp8_cast, fp8_gemm
from lmkernels.umup.functional import _linear_scales, _weight_shape

_E4M3, _E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _FP8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, output_scale: float, grad_input_scale: float,
                grad_weight_scale: float) -> Tensor:
        x8, weight8 = fp8_cast(x, _E4M3), fp8_cast(weight.contiguous(), _E4M3)
        ctx.save_for_backward(x8, weight8)
        ctx.scales = (grad_input_scale, grad_weight_scale)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        scaled_bias = None if bias is None else bias.float() * output_scale
        return fp8_gemm(x8, weight8, output_scale, scaled_bias, x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x8, weight8 = ctx.saved_tensors
        grad_input_scale, grad_weight_scale = ctx.scales
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        grad_x = grad_weight = grad_bias = None
        grad = grad.contiguous()
        grad8 = fp8_cast(grad, _E5M2)
        # fp8_gemm contracts over the columns of both operands. On the CPU it decodes transposed views
        # as they lie; CUDA takes them row-major, and the transposes below are byte copies there.
        if ctx.needs_input_grad[0]:
            grad_x = fp8_gemm(grad8, weight8.t(), grad_input_scale, None, x_dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = fp8_gemm(grad8.t(), x8.t(), grad_weight_scale, None, weight_dtype)
        if bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = (grad.float().sum(0) * grad_weight_scale).to(bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None, None


def fp8_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None, constraint: str | None = "to_output_scale",
               scale_power: tuple[float, float, float] = (0.5, 0.5, 0.5)) -> Tensor:
    """``lmkernels.umup.functional.linear`` with its three GEMMs in FP8 (see the module docstring).

    Args:
        input: [..., fan_in] float32, bfloat16 or float16.
        weight: [fan_out, fan_in] of the same dtype family (any of the three).
        bias: optional [fan_out].
        constraint, scale_power: as for ``linear``; they set ``alpha`` of each GEMM.

    Returns:
        [..., fan_out] of ``input``'s dtype.
    """
    fan_out, fan_in = _weight_shape(input, weight, "weight")
    for tensor, name in ((input, "input"), (weight, "weight"), (bias, "bias")):
        if tensor is not None and tensor.dtype not in _DTYPES:
            raise TypeError(f"{name}: expected float32, bfloat16 or float16, got {tensor.dtype}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != fan_out):
        raise ValueError(f"bias: expected shape [{fan_out}] (fan_out), got {list(bias.shape)}")
    output_scale, grad_input_scale, grad_weight_scale = _linear_scales(input, fan_out, fan_in, constraint,
                                                                       scale_power)
    flat = input.reshape(input.shape[:-1].numel(), fan_in)
    output = _FP8Linear.apply(flat if flat.is_contiguous() else flat.contiguous(), weight, bias, output_scale,
                              grad_input_scale, grad_weight_scale)
    return output.reshape(*input.shape[:-1], fan_out)
