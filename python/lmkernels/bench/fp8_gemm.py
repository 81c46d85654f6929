"""FP8 GEMM cases: ``lmk.fp8_gemm`` against the strongest torch peers computing the same thing.

Square problems M = N = K (CPU 1024 and 2048, quick 512; CUDA 4096 and 8192, quick 4096), ``a``
float8_e4m3fn and ``b`` float8_e5m2 from seeded normal values, alpha = 0.5, an fp32 bias, bfloat16
output. CPU peers, each its own case: ``torch.addmm`` on operands decoded to fp32 (MKL / OpenBLAS sgemm, fp32 accumulation
in its own order), cast to bfloat16; ``torch.addmm`` on operands decoded to bfloat16 (oneDNN); and
the whole bf16 path from FP8 operands, decoding to bfloat16 then ``torch.addmm``. The first two
peers' operands are decoded before timing (the stricter comparison); ours decodes inside the call. CUDA peers, each its
own case: ``torch._scaled_mm`` with scales alpha and 1 (cuBLASLt FP8 tensor cores; ``b``
column-major, as given), and bf16 ``torch.addmm`` (cuBLAS bf16 tensor cores). Case
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


def _bf16_addmm(a, b, bias):
    """The bf16 path FP8 must beat: operands decoded to bf16 before timing (exact: every FP8 value
    is a bf16 value), bias in the output dtype."""
    a_bf16, b_bf16, bias_bf16 = a.to(torch.bfloat16), b.to(torch.bfloat16), bias.to(torch.bfloat16)
    return "bf16 torch.addmm on decoded operands", lambda: torch.addmm(bias_bf16, a_bf16, b_bf16.T, alpha=_ALPHA)


def _cpu_peers(a, b, bias):
    a_fp32, b_fp32 = a.float(), b.float()

    def sgemm():
        return torch.addmm(bias, a_fp32, b_fp32.T, alpha=_ALPHA).to(torch.bfloat16)

    def decode_then_bf16_addmm():
        return torch.addmm(bias_bf16, a.to(torch.bfloat16), b.to(torch.bfloat16).T, alpha=_ALPHA)

    bias_bf16 = bias.to(torch.bfloat16)
    return [("fp32 torch.addmm on decoded operands (sgemm)", sgemm), _bf16_addmm(a, b, bias),
            ("bf16 torch.addmm, decoding the FP8 operands in the call", decode_then_bf16_addmm)]


def _cuda_peers(a, b, bias):
    scale_a, scale_b = torch.full((), _ALPHA, device=a.device), torch.ones((), device=a.device)
    bias_bf16 = bias.to(torch.bfloat16)  # _scaled_mm takes the bias in the output dtype

    def scaled_mm():
        return torch._scaled_mm(a, b.T, scale_a=scale_a, scale_b=scale_b, bias=bias_bf16, out_dtype=torch.bfloat16)

    return [("torch._scaled_mm (scale_a = alpha)", scaled_mm), _bf16_addmm(a, b, bias)]
