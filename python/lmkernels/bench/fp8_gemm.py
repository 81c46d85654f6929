"""FP8 GEMM cases: ``lmk.fp8_gemm`` against the strongest plain-torch peer computing the same thing.

Square problems M = N = K (1024 and 2048; quick: 512), ``a`` float8_e4m3fn and ``b`` float8_e5m2
from seeded normal values, alpha = 0.5, an fp32 bias, bfloat16 output. CPU peer: decode with
``.float()``, ``torch.addmm`` (MKL / OpenBLAS sgemm, fp32 accumulation in its own order), cast to
bfloat16. CUDA peer: ``torch._scaled_mm`` with scales alpha and 1 (cuBLASLt FP8 tensor cores), which
needs K and N multiples of 16 and ``b`` column-major, as given. Case names read
``<M>x<N>x<K> e4m3*e5m2 -> bf16``; throughput is 2 M N K floating-point operations per call.
"""

from __future__ import annotations

import torch

from lmkernels.bench.harness import Case
from lmkernels.ops import fp8_gemm

_FULL = [1024, 2048]
_QUICK = [512]
_TINY = [48]
_ALPHA = 0.5


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The FP8 GEMM cases on ``device``: full sizes, ``quick`` or ``tiny`` (smoke test)."""
    sizes = _TINY if tiny else _QUICK if quick else _FULL
    result = []
    for size in sizes:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen).to(torch.float8_e4m3fn).to(device)
        b = torch.randn(size, size, generator=gen).to(torch.float8_e5m2).to(device)
        bias = torch.randn(size, generator=gen).to(device)
        if device == "cpu":
            peer = "float() + torch.addmm (fp32 sgemm)"

            def peer_fn(a=a, b=b, bias=bias):
                return torch.addmm(bias, a.float(), b.float().T, alpha=_ALPHA).to(torch.bfloat16)
        else:
            peer = "torch._scaled_mm (scale_a = alpha)"
            scale_a, scale_b = torch.full((), _ALPHA, device=device), torch.ones((), device=device)
            bias_bf16 = bias.to(torch.bfloat16)  # _scaled_mm takes the bias in the output dtype

            def peer_fn(a=a, b=b, scale_a=scale_a, scale_b=scale_b, bias_bf16=bias_bf16):
                return torch._scaled_mm(a, b.T, scale_a=scale_a, scale_b=scale_b, bias=bias_bf16,
                                        out_dtype=torch.bfloat16)
        result.append(Case(
            kernel="fp8_gemm",
            case=f"{size}x{size}x{size} e4m3*e5m2 -> bf16",
            peer=peer,
            ours_fn=lambda a=a, b=b, bias=bias: fp8_gemm(a, b, _ALPHA, bias, torch.bfloat16),
            peer_fn=peer_fn,
            bytes_moved=2 * size * size + 2 * size * size + 4 * size,
            device=device,
            flops=2 * size**3,
        ))
    return result
