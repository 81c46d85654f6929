"""FP8 GEMM cases: ``lmk.fp8_gemm`` against the strongest torch peers computing the same thing.

Square problems M = N = K (CPU 1024 and 2048, quick 512; CUDA 4096 and 8192, quick 4096), ``a``
float8_e4m3fn and ``b`` float8_e5m2 from seeded normal values, alpha = 0.5, an fp32 bias, bfloat16
output. CPU peer: decode with ``.float()``, ``torch.addmm`` (MKL / OpenBLAS sgemm, fp32 accumulation
in its own order), cast to bfloat16. CUDA peers, each its own case: ``torch._scaled_mm`` with scales
alpha and 1 (cuBLASLt FP8 tensor cores; ``b`` column-major, as given), and ``torch.addmm`` on the
operands decoded to bfloat16 beforehand (cuBLAS bf16 tensor cores, the path FP8 must beat). Case
names read ``<M>x<N>x<K> e4m3*e5m2 -> bf16``; throughput is 2 M N K floating-point operations per
call (H100 SXM dense peaks: 1979 TFLOP/s FP8, 989 bf16).
"""

from __future__ import annotations

import torch

from lmkernels.bench.harness import Case
from lmkernels.ops import fp8_gemm

_CPU = {"full": [1024, 2048], "quick": [512]}
_CUDA = {"full": [4096, 8192], "quick": [4096]}
_TINY = [48]
_ALPHA = 0.5


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The FP8 GEMM cases on ``device``: full sizes, ``quick`` or ``tiny`` (smoke test)."""
    on_cuda = torch.device(device).type == "cuda"
    sizes = _TINY if tiny else (_CUDA if on_cuda else _CPU)["quick" if quick else "full"]
    result = []
    for size in sizes:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen).to(torch.float8_e4m3fn).to(device)
        b = torch.randn(size, size, generator=gen).to(torch.float8_e5m2).to(device)
        bias = torch.randn(size, generator=gen).to(device)
        peers = _cuda_peers(a, b, bias) if on_cuda else _cpu_peers(a, b, bias)
        for peer, peer_fn in peers:
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


def _cpu_peers(a, b, bias):
    def sgemm():
        return torch.addmm(bias, a.float(), b.float().T, alpha=_ALPHA).to(torch.bfloat16)

    return [("float() + torch.addmm (fp32 sgemm)", sgemm)]


def _cuda_peers(a, b, bias):
    scale_a, scale_b = torch.full((), _ALPHA, device=a.device), torch.ones((), device=a.device)
    bias_bf16 = bias.to(torch.bfloat16)  # both peers take the bias in the output dtype
    a_bf16, b_bf16 = a.to(torch.bfloat16), b.to(torch.bfloat16)  # exact: every FP8 value is a bf16 value

    def scaled_mm():
        return torch._scaled_mm(a, b.T, scale_a=scale_a, scale_b=scale_b, bias=bias_bf16, out_dtype=torch.bfloat16)

    def bf16_addmm():
        return torch.addmm(bias_bf16, a_bf16, b_bf16.T, alpha=_ALPHA)

    return [("torch._scaled_mm (scale_a = alpha)", scaled_mm),
            ("bf16 torch.addmm on decoded operands", bf16_addmm)]
