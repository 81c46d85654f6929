"""``lmk::fp8_cast``: saturating casts of float32 / bfloat16 / float16 to OCP fp8.

Formats: ``torch.float8_e4m3fn`` (max 448, no infinities) and ``torch.float8_e5m2`` (max 57344).

    y = sign(x) * round(min(|x|, max))          NaN -> NaN (sign | 0x7F), +-inf -> +-max

``rounding="nearest"`` rounds half to even at the format's spacing (subnormals included): for every
value it equals ``x.float().clamp(-max, max).to(dtype)`` bit for bit. ``rounding="stochastic"``
rounds |x| between its two neighbouring fp8 values a < |x| < b up to b with probability
``(|x| - a) / (b - a)`` (quantised to 2^-32), so ``E[y] = x`` inside the range. The uniform draw of
element i (its row-major position in ``x``) is a splitmix64 hash of ``(seed, i)``: results depend
only on the seed, never on the device or thread count, and a transposed cast equals the plain
cast transposed. ``seed=None`` draws a seed from torch's default CPU generator (so
``torch.manual_seed`` makes it reproducible).

``transpose=True`` (2-D ``x`` of shape [M, N] only) writes the contiguous [N, M] transpose in the
same pass. ``x`` may be contiguous, or 2-D with rows at any stride and unit last stride.

Gradient: straight-through, ``grad_x = grad_y`` (transposed back when ``transpose``) in ``x``'s
dtype, the usual estimator for quantised training (u-muP FP8 recipe); rounding is treated as the
identity.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.ops._native import _C, call_op, define_autograd, define_op, dl, kernel_output, stream_of

_FORMATS = (torch.float8_e4m3fn, torch.float8_e5m2)
_INPUTS = (torch.float32, torch.bfloat16, torch.float16)
_ROUNDINGS = {"nearest": 0, "stochastic": 1}
_SEED_MODULUS = 1 << 64


def _supported_layout(x: Tensor) -> bool:
    if x.is_contiguous():
        return True
    return x.dim() == 2 and (x.shape[1] <= 1 or x.stride(1) == 1) and x.stride(0) >= 0


def fp8_cast(x: Tensor, dtype: torch.dtype, rounding: str = "nearest", seed: int | None = None,
             transpose: bool = False) -> Tensor:
    """Cast ``x`` to fp8 ``dtype`` with saturation; see the module docstring for the math.

    Args:
        x: float32, bfloat16 or float16; contiguous, or 2-D with unit stride in the last dimension.
        dtype: ``torch.float8_e4m3fn`` or ``torch.float8_e5m2``.
        rounding: ``"nearest"`` (half to even) or ``"stochastic"``.
        seed: stochastic rounding seed (any int, taken modulo 2^64); None draws one from torch.
        transpose: return the contiguous transpose of a 2-D ``x``.

    Returns:
        ``x``'s shape (or [N, M] with ``transpose``), dtype ``dtype``, on ``x``'s device.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {type(dtype).__name__}")
    if dtype not in _FORMATS:
        raise TypeError(f"dtype: expected torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}")
    if x.dtype not in _INPUTS:
        raise TypeError(f"x: expected float32, bfloat16 or float16, got {x.dtype}")
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding: expected 'nearest' or 'stochastic', got {rounding!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    if transpose and x.dim() != 2:
        raise ValueError(f"x: transpose=True expects a 2-D tensor, got shape {list(x.shape)}")
    if x.numel() == 0:  # an empty tensor can carry any strides (a gradient of y.sum() has stride 0): take plain ones
        x = x.as_strided(x.shape, torch.empty(x.shape, device="meta").stride())
    if not _supported_layout(x):
        raise ValueError("x: expected a contiguous tensor, or a 2-D one with unit stride in the last dimension")
    if seed is not None:  # to the signed 64-bit range of the op's schema
        seed %= _SEED_MODULUS
        seed = seed - _SEED_MODULUS if seed >= 1 << 63 else seed
    return call_op("fp8_cast", x, dtype, rounding, seed, bool(transpose))


def _output_shape(x: Tensor, transpose: bool) -> tuple[int, ...]:
    return (x.shape[1], x.shape[0]) if transpose else x.shape


def _fp8_cast(x: Tensor, dtype: torch.dtype, rounding: str, seed: int | None, transpose: bool) -> Tensor:
    if rounding == "stochastic" and seed is None:
        seed = int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64).item())
    out = kernel_output(_output_shape(x, transpose), dtype, x.device)
    _C.fp8_cast(dl(x), dl(out), _ROUNDINGS[rounding], (seed or 0) % _SEED_MODULUS, transpose, stream_of(x))
    return out


def _fp8_cast_fake(x, dtype, rounding, seed, transpose):
    return x.new_empty(_output_shape(x, transpose), dtype=dtype)


define_op("fp8_cast(Tensor x, ScalarType dtype, str rounding, int? seed, bool transpose) -> Tensor",
          _fp8_cast, _fp8_cast_fake)


def _setup_context(ctx, inputs, output):
    x, _, _, _, transpose = inputs
    ctx.dtype, ctx.transpose = x.dtype, transpose


def _backward(ctx, grad):
    grad = grad.to(ctx.dtype)
    return (grad.t() if ctx.transpose else grad), None, None, None, None


define_autograd("fp8_cast", _backward, _setup_context)
