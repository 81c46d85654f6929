"""Reference int8 absmax quantisation per output channel, in plain torch (fp32 arithmetic)."""

from __future__ import annotations

import torch
from torch import Tensor


def _check_finite(weight: Tensor) -> None:
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight: holds a non-finite value (inf or NaN); int8 absmax quantisation needs finite weights")


def int8_quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``scale[r] = max_c |W[r, c]| / 127``; ``q = clamp(round_half_even(W / scale[:, None]), -127, 127)`` as int8.

    A row whose scale is 0 is divided by 1 instead, so it quantises to zeros.
    """
    _check_finite(weight)
    w = weight.float()
    absmax = w.abs().amax(dim=1) if w.shape[1] > 0 else w.new_zeros(w.shape[0])
    # A tensor divisor: torch's CUDA division by a Python number multiplies by its rounded reciprocal,
    # which is not the correctly rounded quotient the kernels compute.
    scale = absmax / torch.full_like(absmax, 127.0)
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(w / divisor[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def int8_dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``W'[r, c] = q[r, c] * scale[r]`` in fp32, rounded once to ``dtype``."""
    return (q.float() * scale[:, None]).to(dtype)


def int8_fake_quantize(weight: Tensor) -> Tensor:
    """``int8_dequantize(*int8_quantize(weight), weight.dtype)``."""
    q, scale = int8_quantize(weight)
    return int8_dequantize(q, scale, weight.dtype)
