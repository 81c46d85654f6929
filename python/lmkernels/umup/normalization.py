"""Unit-scaled normalisations and the embedding lookup (re-exported by ``lmkernels.umup.functional``).

Their outputs are unit scale by construction (a normalised vector, a row of an N(0, 1) table), so
only the parameter gradients are scaled: each parameter element sums the gradient over the ``B``
rows that use it, and ``B^-1/2`` brings that sum back to unit scale.
"""

from __future__ import annotations

from math import prod
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from lmkernels.umup.scale import scale_bwd


def layer_norm(input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``F.layer_norm`` with ``s_weight = s_bias = sqrt(prod(normalized_shape) / input.numel())`` (``B^-1/2``)."""
    scale = (prod(normalized_shape) / max(input.numel(), 1)) ** 0.5
    if weight is not None:
        weight = scale_bwd(weight, scale)
    if bias is not None:
        bias = scale_bwd(bias, scale)
    return F.layer_norm(input, normalized_shape, weight, bias, eps)


def rms_norm(input: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None = None,
             eps: float = 1e-5) -> Tensor:
    """RMS normalisation over the trailing ``normalized_shape`` dimensions::

        y = x / sqrt(mean(x^2) + eps) * w          (the statistic in fp32, rounded to x's dtype)
        s_w = sqrt(prod(normalized_shape) / input.numel())
    """
    normalized_shape = tuple(normalized_shape)
    if tuple(input.shape[input.dim() - len(normalized_shape):]) != normalized_shape or \
            len(normalized_shape) > input.dim():
        raise ValueError(f"input: expected trailing dimensions {list(normalized_shape)} (normalized_shape), "
                         f"got shape {list(input.shape)}")
    dims = tuple(range(-1, -1 - len(normalized_shape), -1))
    mean_square = input.float().pow(2).mean(dims, keepdim=True)
    if eps:
        mean_square = mean_square + eps
    output = input / mean_square.sqrt().to(input.dtype)
    if weight is None:
        return output
    # In the input's dtype, as unit-scaling's in-place multiply keeps it (a bf16 input with an fp32 gain).
    return (output * scale_bwd(weight, (prod(normalized_shape) / max(input.numel(), 1)) ** 0.5)).to(input.dtype)


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None, max_norm: float | None = None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Plain lookup ``y = W[ids]`` of an N(0, 1) table ``W`` [V, d] (no forward scale), ``s_W = sqrt(V / n_ids)``.

    Each of the ``n_ids`` looked-up rows sends one unit-scale gradient row to one of ``V`` table
    rows. ``scale_grad_by_freq`` and ``sparse`` are not supported (as in unit-scaling).
    """
    if scale_grad_by_freq or sparse:
        raise ValueError("scale_grad_by_freq, sparse: not supported by the unit-scaled embedding")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected 2 dimensions [V, d], got shape {list(weight.shape)}")
    weight = scale_bwd(weight, (weight.shape[0] / max(input.numel(), 1)) ** 0.5)
    return F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
