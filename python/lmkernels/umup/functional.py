"""Unit-scaled functional ops (u-muP, Blake et al. 2024), the semantics of ``unit_scaling.functional`` 0.3.5.

Every op scales its output so that unit-scale inputs give a unit-scale output, and scales each
input's gradient so that a unit-scale output gradient gives unit-scale input gradients (see
``lmkernels.umup.scale`` for the mechanism and the constraint options). Notation: ``s_out`` is the
forward scale, ``s_x`` the backward scale of input ``x``; ``logint(a, lo, hi) = lo^(1-a) hi^a``.

Linear algebra and residuals are here; nonlinearities, attention and losses are in
``lmkernels.umup.activations``; normalisation and embedding in ``lmkernels.umup.normalization``.
All of them are re-exported from this module, the public namespace (``import
lmkernels.umup.functional as U``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels.umup.activations import (cross_entropy, dropout, gelu, scaled_dot_product_attention, silu, silu_glu,
                                        softmax)
from lmkernels.umup.normalization import embedding, layer_norm, rms_norm
from lmkernels.umup.scale import apply_constraint, scale_bwd, scale_fwd


def linear(input: Tensor, weight: Tensor, bias: Tensor | None, constraint: str | None = "to_output_scale",
           scale_power: tuple[float, float, float] = (0.5, 0.5, 0.5)) -> Tensor:
    """Unit-scaled ``F.linear``; ``weight`` is [fan_out, fan_in], ``B`` = input.numel() / fan_in rows::

        y = (x W^T + b) * fan_in^-p0                         (the bias is added before the scale)
        s_x = fan_out^-p1  (constrained with s_out)          s_W = s_b = B^-p2  (never constrained)

    ``scale_power = (p0, p1, p2)``. With the default constraint ``to_output_scale`` the input
    gradient is scaled by ``fan_in^-p0`` as well, which keeps the backward consistent where the
    residual stream sums gradients. A size of 0 (``fan_in``, ``fan_out`` or ``B``) gives its scale 1
    and the result is ``F.linear``'s (empty, or the bias alone for ``fan_in = 0``); unit-scaling
    raises ZeroDivisionError there.
    """
    fan_out, fan_in = _weight_shape(input, weight, "weight")
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (fan_out,)):
        raise ValueError(f"bias: expected shape [{fan_out}] (fan_out of weight), got "
                         f"{list(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
    output_scale, grad_input_scale, grad_weight_scale = _linear_scales(input, fan_out, fan_in, constraint,
                                                                       scale_power)
    input = scale_bwd(input, grad_input_scale)
    weight = scale_bwd(weight, grad_weight_scale)
    bias = scale_bwd(bias, grad_weight_scale) if bias is not None else None
    return scale_fwd(F.linear(input, weight, bias), output_scale)


def linear_readout(input: Tensor, weight: Tensor, bias: Tensor | None, constraint: str | None = None) -> Tensor:
    """Unit-scaled linear for the network output (the LM head): ``linear`` with ``scale_power = (1, 0.5, 0.5)``::

        y = (x W^T + b) / fan_in          s_x = fan_out^-1/2 (unconstrained by default)   s_W = B^-1/2

    The muP ``1 / fan_in`` readout: logits shrink as the width grows, as muP's output multiplier does.
    """
    return linear(input, weight, bias, constraint=constraint, scale_power=(1.0, 0.5, 0.5))


def matmul(left: Tensor, right: Tensor, constraint: str | None = "to_output_scale") -> Tensor:
    """Unit-scaled ``torch.matmul`` of ``left`` [..., m, k] and ``right`` [..., k, n]::

        out = (left @ right) * k^-1/2          s_left = n^-1/2          s_right = m^-1/2

    (the three constrained together; by default all become ``k^-1/2``). A size of 0 gives its scale
    1 and the result is ``torch.matmul``'s (empty, or zeros for ``k = 0``); unit-scaling raises
    ZeroDivisionError there.
    """
    if left.dim() < 2 or right.dim() < 2:
        raise ValueError(f"left, right: expected at least 2 dimensions each, got shapes {list(left.shape)} "
                         f"and {list(right.shape)}")
    output_scale, left_grad_scale, right_grad_scale = (
        size ** -0.5 if size else 1.0 for size in (left.shape[-1], right.shape[-1], left.shape[-2]))
    output_scale, left_grad_scale, right_grad_scale = apply_constraint(constraint, output_scale, left_grad_scale,
                                                                       right_grad_scale)
    output = torch.matmul(scale_bwd(left, left_grad_scale), scale_bwd(right, right_grad_scale))
    return scale_fwd(output, output_scale)


def add(input: Tensor | int | float, other: Tensor | int | float, constraint: str | None = "to_output_scale",
        alpha: int = 1, out: Tensor | None = None) -> Tensor:
    """Unit-scaled ``torch.add`` of two tensors::

        out = (a + b) * 2^-1/2            s_a = n_a^-1/2          s_b = n_b^-1/2

    where ``n_a`` is the number of output elements each element of ``a`` feeds by broadcasting (the
    gradient of ``a`` sums that many). A one-element operand leaves the output scale at 1; a Python
    number is added unscaled. ``alpha`` other than 1 is not supported (as in unit-scaling), nor is
    ``out`` (a TypeError): unit-scaling accepts it but leaves the buffer holding the unscaled sum
    while it returns the scaled one, and torch's ``out=`` takes no part in autograd.
    """
    if alpha != 1:
        raise ValueError(f"alpha: only 1 is supported by the unit-scaled add, got {alpha}")
    if out is not None:
        raise TypeError("out: not supported by the unit-scaled add (use the returned tensor)")
    if not isinstance(input, Tensor) or not isinstance(other, Tensor):
        return torch.add(input, other)
    output_numel = torch.broadcast_shapes(input.shape, other.shape).numel()
    input_grad_scale = (output_numel // max(input.numel(), 1)) ** -0.5 if output_numel else 1.0
    other_grad_scale = (output_numel // max(other.numel(), 1)) ** -0.5 if output_numel else 1.0
    output_scale = 1.0 if input.numel() == 1 or other.numel() == 1 else 2**-0.5
    output_scale, input_grad_scale, other_grad_scale = apply_constraint(constraint, output_scale, input_grad_scale,
                                                                        other_grad_scale)
    result = torch.add(scale_bwd(input, input_grad_scale), scale_bwd(other, other_grad_scale))
    return scale_fwd(result, output_scale)


def residual_split(input: Tensor, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split ``input`` into ``(residual, skip)`` for a residual branch weighted by ``tau``::

        residual = skip = x        s_residual = tau / sqrt(1 + tau^2)        s_skip = 1 / sqrt(1 + tau^2)

    Pair with ``residual_add`` and the same ``tau``: the branch itself then runs at unit scale in
    both passes (its weighting is "delayed" to the add forward and to the split backward).
    """
    denominator = (1 + tau**2) ** 0.5
    return scale_bwd(input, tau / denominator), scale_bwd(input, 1 / denominator)


def residual_add(residual: Tensor, skip: Tensor, tau: float = 1.0) -> Tensor:
    """``residual * tau / sqrt(1 + tau^2) + skip / sqrt(1 + tau^2)``; gradients pass unscaled.

    A variance-preserving sum of two unit-scale tensors in which ``tau`` is the ratio of the
    residual's standard deviation to the skip's.
    """
    denominator = (1 + tau**2) ** 0.5
    return scale_fwd(residual, tau / denominator) + scale_fwd(skip, 1 / denominator)


def residual_apply(fn: Callable[[Tensor], Tensor], input: Tensor, tau: float = 1.0) -> Tensor:
    """``residual_add(fn(residual), skip, tau)`` with ``residual, skip = residual_split(input, tau)``."""
    residual, skip = residual_split(input, tau=tau)
    return residual_add(fn(residual), skip, tau=tau)


def transformer_residual_scaling_rule(residual_mult: float = 1.0,
                                      residual_attn_ratio: float = 1.0) -> Callable[[int, int], float]:
    """The u-muP residual rule (paper App. G): ``tau(k, branches)`` for branch ``k`` of ``branches = 2 L``.

    Branches alternate attention (even ``k``) and MLP (odd ``k``) after the embedding::

        alpha_mlp = residual_mult * sqrt(2 / (1 + residual_attn_ratio^2))
        alpha_attn = residual_attn_ratio * alpha_mlp
        tau_k = alpha_k / sqrt(L + n_attn(k) alpha_attn^2 + n_mlp(k) alpha_mlp^2)
        n_attn(k) = floor((k + 1) / 2),  n_mlp(k) = floor(k / 2)      (branches of each kind before k)

    The embedding carries variance ``L`` and every branch adds ``alpha_k^2``, so all attention
    branches contribute equally, all MLP branches equally, branches against the embedding in the
    ratio ``residual_mult`` and attention against MLP in ``residual_attn_ratio``; at 1 and 1 the
    embedding, all attention and all MLP branches contribute a third each.
    """
    alpha_mlp = residual_mult * (2 / (1 + residual_attn_ratio**2)) ** 0.5
    alpha_attn = residual_attn_ratio * alpha_mlp

    def tau(index: int, branches: int) -> float:
        n_attn, n_mlp = (index + 1) // 2, index // 2
        alpha = alpha_attn if index % 2 == 0 else alpha_mlp
        return alpha / (branches / 2 + n_attn * alpha_attn**2 + n_mlp * alpha_mlp**2) ** 0.5

    return tau


def _linear_scales(input: Tensor, fan_out: int, fan_in: int, constraint: str | None,
                   scale_power: tuple[float, float, float]) -> tuple[float, float, float]:
    """``(s_out, s_x, s_W)`` of ``linear`` (see its docstring), a size of 0 giving its scale 1."""
    rows = input.shape[:-1].numel()
    output_scale = 1 / fan_in ** scale_power[0] if fan_in else 1.0
    grad_input_scale = 1 / fan_out ** scale_power[1] if fan_out else 1.0
    grad_weight_scale = 1 / rows ** scale_power[2] if rows else 1.0
    output_scale, grad_input_scale = apply_constraint(constraint, output_scale, grad_input_scale)
    return output_scale, grad_input_scale, grad_weight_scale


def _weight_shape(input: Tensor, weight: Tensor, name: str) -> tuple[int, int]:
    if not isinstance(input, Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(input).__name__}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{name}: expected 2 dimensions [fan_out, fan_in], got shape {list(weight.shape)}")
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"input: expected a last dimension of {weight.shape[1]} (fan_in of {name}), "
                         f"got shape {list(input.shape)}")
    return weight.shape[0], weight.shape[1]


__all__ = ["add", "cross_entropy", "dropout", "embedding", "gelu", "layer_norm", "linear", "linear_readout",
           "matmul", "residual_add", "residual_apply", "residual_split", "rms_norm", "scaled_dot_product_attention",
           "silu", "silu_glu", "softmax", "transformer_residual_scaling_rule"]
