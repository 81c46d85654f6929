"""Plain PyTorch FP8 GEMM: the oracle of ``lmkernels.ops.fp8_gemm``."""

from __future__ import annotations

import torch
from torch import Tensor


def fp8_gemm(a: Tensor, b: Tensor, alpha: float = 1.0, bias: Tensor | None = None,
             out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """``alpha * (a @ b.T) + bias`` in float64 (exact products, nearly exact sums), rounded once to
    ``out_dtype``. alpha is rounded to fp32 first, as the kernels apply it in fp32."""
    alpha64 = float(torch.tensor(alpha, dtype=torch.float32))
    d = (a.double() @ b.double().T) * alpha64
    if bias is not None:
        d = d + bias.double()
    return d.to(out_dtype)
