"""``lmk::fp8_gemm``: the scale-free FP8 GEMM of u-muP (specs/umup_dtm.md 2.2, 2.3, 4)::

    acc[m, n] = sum_k  float(a[m, k]) * float(b[n, k])        fp32, summed in increasing k from +0
    D[m, n]   = round_out(fp32(alpha) * acc[m, n] + bias[n])  each operation rounded in fp32, then once to out_dtype

``a`` [M, K] and ``b`` [N, K] are ``torch.float8_e4m3fn`` or ``torch.float8_e5m2`` (E5M2 x E5M2 is
rejected: FP8 hardware has no such GEMM). Every product of two FP8 values is exact in fp32, so the
only roundings are those of the running fp32 sum (in the fixed order above), of ``alpha *`` and
``+ bias``, and the final round-to-nearest-even to ``out_dtype``. Results are bitwise reproducible
for any thread count, and the CPU and the portable CUDA kernel agree bit for bit. NaN and inf inputs
propagate by IEEE rules (an inf times a zero gives NaN). Any M, N, K >= 0; K = 0 gives ``bias``
(or zeros).

With ``exact_order=True`` every device sums in exactly that order: the sequential CPU kernels
(AVX512_BF16 pairs or fp32, chosen at run time, bitwise equal) and the portable CUDA kernel, which
agree bit for bit. By default each device runs its fastest kernel, which may sum in its own order:

- CPU with Intel AMX-BF16 (Sapphire Rapids and later): a tile kernel (csrc/fp8/fp8_gemm_amx.cpp).
  The products are exact, but each 32-deep step's products reach the fp32 accumulator in the tile
  unit's order; as accurate as the sequential sum (both within K fp32 roundings of sum |alpha a b|,
  tested), deterministic for any thread count, not bitwise equal to it. Other CPUs: the sequential
  kernels. ``lmkernels.info()["fp8_gemm_cpu"]`` names the kernel a default call gets.
- CUDA on Hopper (compute capability 9.0), when K and N are multiples of 16 and the operands are
  16-byte aligned: a CUTLASS tensor-core kernel. It sums each 32-deep MMA in the tensor core's own
  order and reduced precision and adds those partial sums into fp32 after every 128 of K
  (CUTLASS's promoting, non-"FastAccum" schedule), and computes ``alpha * acc + bias`` in one fp32
  step: deterministic, but further from the sequential sum (the GPU tests bound the difference by
  2^-9 of sum |alpha a b|). It comes in several tile configurations, one picked per problem shape
  (csrc/fp8/fp8_gemm_sm90.cu); all sum in the same order. The environment variable
  ``LMK_FP8_GEMM_SM90=<configuration>[:<swizzle>]`` forces one, for tests and benchmarks. Other
  GPUs: the portable kernel.

No autograd: u-muP training composes three such GEMMs (forward, grad-input, grad-weight) with its
own casts, so ``backward`` through this op raises ``RuntimeError``.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

from lmkernels.ops._native import _C, call_op, define_autograd, define_op, dl, stream_of

_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# The Hopper kernel's configurations (csrc/fp8/fp8_gemm_sm90_<name>.cu: CTA tile M x N), and the
# environment variable that the native code reads on every call to force one.
_SM90_KERNELS = ("128x128", "128x192", "128x208")
_SM90_ENV = "LMK_FP8_GEMM_SM90"


@contextlib.contextmanager
def _sm90_kernel(setting: str):
    """Within the block, Hopper calls run ``setting``: ``"auto"`` (the shape heuristic), a name of
    ``_SM90_KERNELS``, or either followed by ``":<swizzle>"`` (1, 2, 4 or 8 tiles per scheduler run).
    For tests and benchmarks that compare configurations in one process; it sets the process
    environment, so calls from other threads meanwhile see it too."""
    previous = os.environ.get(_SM90_ENV)
    os.environ[_SM90_ENV] = setting
    try:
        yield
    finally:
        if previous is None:
            del os.environ[_SM90_ENV]
        else:
            os.environ[_SM90_ENV] = previous


def fp8_gemm(a: Tensor, b: Tensor, alpha: float = 1.0, bias: Tensor | None = None,
             out_dtype: torch.dtype = torch.bfloat16, *, exact_order: bool = False) -> Tensor:
    """``alpha * (a @ b.T) + bias`` with FP8 operands and fp32 accumulation; see the module docstring.

    Args:
        a: [M, K] float8_e4m3fn or float8_e5m2. On the CPU it may be a transposed view, as ``b``.
        b: [N, K] float8_e4m3fn or float8_e5m2 (not both float8_e5m2), on a's device. On the CPU it
            may be a transposed view (``w.t()`` of a row-major [K, N] ``w``), read without a copy.
        alpha: scale of the product, applied in fp32.
        bias: optional [N] of ``out_dtype`` or float32, added in fp32.
        out_dtype: float32, bfloat16 or float16.
        exact_order: sum in increasing k in fp32 (bitwise equal on every device) rather than with the
            device's fastest kernel (AMX on the CPU, tensor cores on Hopper); see the module docstring.

    Returns:
        [M, N] of ``out_dtype`` (contiguous).
    """
    _require_tensor(a, "a")
    _require_tensor(b, "b")
    if bias is not None:
        _require_tensor(bias, "bias")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha: expected a float, got {type(alpha).__name__}")
    if not isinstance(exact_order, bool):
        raise TypeError(f"exact_order: expected a bool, got {type(exact_order).__name__}")
    return call_op("fp8_gemm", a, b, float(alpha), bias, out_dtype, exact_order)


def _require_tensor(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _check(a: Tensor, b: Tensor, bias: Tensor | None, out_dtype) -> None:
    for t, name in ((a, "a"), (b, "b")):
        if t.dtype not in _FP8_DTYPES:
            raise TypeError(f"{name}: expected dtype torch.float8_e4m3fn or torch.float8_e5m2, got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{name}: expected 2 dimensions, got shape {list(t.shape)}")
    if a.dtype == torch.float8_e5m2 and b.dtype == torch.float8_e5m2:
        raise ValueError("a, b: torch.float8_e5m2 x torch.float8_e5m2 is not supported (FP8 hardware has no "
                         "E5M2 x E5M2 GEMM); make at least one operand torch.float8_e4m3fn")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"b: expected K = {a.shape[1]} columns (those of a {list(a.shape)}), got shape "
                         f"{list(b.shape)}")
    if b.device != a.device:
        raise ValueError(f"b: expected the device of a ({a.device}), got {b.device}")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype: expected torch.float32, torch.bfloat16 or torch.float16, got {out_dtype}")
    if bias is not None:
        if bias.dtype not in (out_dtype, torch.float32):
            raise TypeError(f"bias: expected dtype {out_dtype} (out_dtype) or torch.float32, got {bias.dtype}")
        if bias.dim() != 1 or bias.shape[0] != b.shape[0]:
            raise ValueError(f"bias: expected shape [{b.shape[0]}] (N, the rows of b), got {list(bias.shape)}")
        if bias.device != a.device:
            raise ValueError(f"bias: expected the device of a ({a.device}), got {bias.device}")


def _rows(t: Tensor, or_columns: bool = False) -> Tensor:
    """``t`` with unit stride within rows, or with ``or_columns`` within columns (the transpose of
    a row-major tensor, which the CPU kernels decode directly); copied only where it has neither."""
    if t.is_contiguous():  # the common case, cheaper to ask than the strides
        return t
    rows, columns = t.shape
    row_stride, column_stride = t.stride()
    if columns <= 1 or column_stride == 1 or (or_columns and (rows <= 1 or row_stride == 1)):
        return t
    return t.contiguous()


def _gemm(a: Tensor, b: Tensor, alpha: float, bias: Tensor | None, out_dtype: torch.dtype,
          exact_order: bool = False) -> Tensor:
    _check(a, b, bias, out_dtype)
    on_cpu = a.is_cpu
    a, b = _rows(a, or_columns=on_cpu), _rows(b, or_columns=on_cpu)
    if bias is not None:
        bias = bias.to(torch.float32).contiguous()  # exact for bf16 and fp16
    out = torch.empty((a.shape[0], b.shape[0]), dtype=out_dtype, device=a.device)
    _C.fp8_gemm(dl(a), dl(b), alpha, dl(bias), dl(out), exact_order, stream_of(a))
    return out


def _gemm_fake(a, b, alpha, bias, out_dtype, exact_order=False):
    _check(a, b, bias, out_dtype)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


define_op("fp8_gemm(Tensor a, Tensor b, float alpha, Tensor? bias, ScalarType out_dtype, bool exact_order=False) "
          "-> Tensor", _gemm, _gemm_fake)


def _no_backward(ctx, grad):
    raise RuntimeError("fp8_gemm has no autograd: compose the forward, grad-input and grad-weight FP8 GEMMs "
                       "explicitly (u-muP training layer), or use a differentiable matmul")


def _setup_context(ctx, inputs, output):
    pass


define_autograd("fp8_gemm", _no_backward, _setup_context)
