"""The one mechanism of unit scaling: a scaled identity whose forward and backward scales differ.

    scaled(x; a_fwd, a_bwd):   forward  y = a_fwd * x          backward  dx = a_bwd * dy

``scale_fwd(x, a) = scaled(x; a, 1)`` sets the scale of a value without touching its gradient,
``scale_bwd(x, a) = scaled(x; 1, a)`` sets the scale of a gradient without touching the value. A
unit-scaled op is ``scale_bwd`` on each input, the plain op, then ``scale_fwd`` on the output, so
its backward is deliberately not the exact derivative of its forward: per-tensor constants differ
between the passes (Adam is invariant to a constant gradient scale per parameter, and constraints
keep the ratios consistent where gradient paths meet).

A constraint maps the ideal scales of an op ``(output, grad_input_1, ...)`` to one shared value:

    None / ""               each scale as computed
    "gmean"                 (prod s_i)^(1/n)
    "hmean"                 n / sum(1 / s_i)
    "amean"                 sum(s_i) / n
    "to_output_scale"       s_0
    "to_grad_input_scale"   s_1             (ops with one differentiable input)
    "to_left_grad_scale"    s_1             (ops with two: matmul, add)
    "to_right_grad_scale"   s_2             (ops with two)

Scales multiply in the tensor's own arithmetic (fp32 opmath for bf16 and fp16 tensors), as Python
floats: never rounded to the tensor's dtype first.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CONSTRAINTS = ("gmean", "hmean", "amean", "to_output_scale", "to_grad_input_scale", "to_left_grad_scale",
               "to_right_grad_scale")


class _ScaledIdentity(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, fwd_scale: float, bwd_scale: float) -> Tensor:
        return x * fwd_scale

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.bwd_scale = inputs[2]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.bwd_scale, None, None


def scaled(x: Tensor, fwd_scale: float = 1.0, bwd_scale: float = 1.0) -> Tensor:
    """``fwd_scale * x`` in the forward pass, ``bwd_scale * grad`` in the backward pass."""
    if fwd_scale == 1.0 and bwd_scale == 1.0:
        return x
    return _ScaledIdentity.apply(x, float(fwd_scale), float(bwd_scale))


def scale_fwd(x: Tensor, scale: float) -> Tensor:
    """``scale * x`` forward; the gradient passes unchanged."""
    return scaled(x, fwd_scale=scale)


def scale_bwd(x: Tensor, scale: float) -> Tensor:
    """``x`` forward; the gradient is multiplied by ``scale``."""
    return scaled(x, bwd_scale=scale)


def apply_constraint(constraint: str | None, *scales: float) -> tuple[float, ...]:
    """Map ``(output_scale, *grad_input_scales)`` through ``constraint`` (see the module docstring)."""
    if constraint is None or constraint == "":
        return scales
    if not isinstance(constraint, str):
        raise TypeError(f"constraint: expected a str or None, got {type(constraint).__name__}")
    inputs = len(scales) - 1
    if constraint == "gmean":
        shared = math.prod(scales) ** (1 / len(scales))
    elif constraint == "hmean":
        shared = 1 / (sum(1 / s for s in scales) / len(scales))
    elif constraint == "amean":
        shared = sum(scales) / len(scales)
    elif constraint == "to_output_scale":
        shared = scales[0]
    elif constraint == "to_grad_input_scale" and inputs == 1:
        shared = scales[1]
    elif constraint in ("to_left_grad_scale", "to_right_grad_scale") and inputs == 2:
        shared = scales[1 if constraint == "to_left_grad_scale" else 2]
    elif constraint in CONSTRAINTS:
        raise ValueError(f"constraint: {constraint!r} does not apply to an op with {inputs} scaled input(s)")
    else:
        raise ValueError(f"constraint: expected None or one of {', '.join(CONSTRAINTS)}; got {constraint!r}")
    return (shared,) * len(scales)


def logarithmic_interpolation(alpha: float, lower: float, upper: float) -> float:
    """``exp(alpha * ln(upper) + (1 - alpha) * ln(lower))``: ``lower`` at alpha 0, ``upper`` at alpha 1."""
    return math.exp(alpha * math.log(upper) + (1 - alpha) * math.log(lower))
