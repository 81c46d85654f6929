"""Reference fp8 casts in plain torch: nearest through torch's own conversion after a clamp, and
stochastic rounding through the same integer math and splitmix64 hash as the kernels, in int64."""

from __future__ import annotations

import torch
from torch import Tensor

# (mantissa bits, smallest normal exponent, magnitude code of the max, max value)
_FORMATS = {torch.float8_e4m3fn: (3, -6, 0x7E, 448.0), torch.float8_e5m2: (2, -14, 0x7B, 57344.0)}
_NAN_CODE = 0x7F


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shift_right_logical(z: Tensor, k: int) -> Tensor:
    return (z >> k) & ((1 << (64 - k)) - 1)


def random_bits(seed: int, index: Tensor) -> Tensor:
    """32 uniform bits per element: splitmix64's finaliser of seed + (index + 1) * golden ratio
    (int64 arithmetic wraps modulo 2^64 like the kernels' uint64)."""
    z = (index + 1) * _signed(0x9E3779B97F4A7C15) + _signed(seed % (1 << 64))
    z = (z ^ _shift_right_logical(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shift_right_logical(z, 27)) * _signed(0x94D049BB133111EB)
    z = z ^ _shift_right_logical(z, 31)
    return _shift_right_logical(z, 32)


def _stochastic(x: Tensor, dtype: torch.dtype, seed: int) -> Tensor:
    mantissa_bits, min_exponent, max_code, _ = _FORMATS[dtype]
    u = x.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    sign = (u >> 24) & 0x80
    magnitude = u & 0x7FFFFFFF
    biased = magnitude >> 23
    exponent = biased.clamp(min=1)
    significand = (magnitude & 0x7FFFFF) | torch.where(biased > 0, 0x800000, 0)
    target = (exponent - 127).clamp(min=min_exponent)
    shift = (150 + target - mantissa_bits - exponent).clamp(max=63)
    fixed = torch.where(shift <= 32, significand << (32 - shift).clamp(min=0),
                        significand >> (shift - 32).clamp(min=0))
    index = torch.arange(x.numel(), dtype=torch.int64, device=x.device).reshape(x.shape)
    n = (fixed + random_bits(seed, index)) >> 32
    code = (((target - min_exponent) << mantissa_bits) + n).clamp(max=max_code)
    code = torch.where(magnitude > 0x7F800000, _NAN_CODE, code)
    return (sign | code).to(torch.uint8).view(dtype)


def fp8_cast(x: Tensor, dtype: torch.dtype, rounding: str = "nearest", seed: int = 0, transpose: bool = False) -> Tensor:
    """The saturating cast of ``lmkernels.ops.fp8_cast``: nearest is ``clamp(-max, max)`` then
    torch's ``.to(dtype)`` (NaN passes the clamp); stochastic rounds ``floor(|x| / q + r / 2^32)``
    at the spacing q of |x|'s binade (``r`` the 32-bit hash of (seed, row-major index))."""
    if rounding == "nearest":
        limit = _FORMATS[dtype][3]
        y = x.float().clamp(-limit, limit).to(dtype)
    elif rounding == "stochastic":
        y = _stochastic(x, dtype, seed)
    else:
        raise ValueError(f"rounding: expected 'nearest' or 'stochastic', got {rounding!r}")
    return y.t().contiguous() if transpose else y
