"""FP8 GEMM cases: ``lmk.fp8_gemm`` against the strongest torch peers computing the same thing.

Square problems M = N = K (CPU 1024 and 2048, quick 512; CUDA 4096 and 8192, quick too), ``a``
float8_e4m3fn and ``b`` float8_e5m2 from seeded normal values, alpha = 0.5, an fp32 bias, bfloat16
output. CPU peers, each its own case: ``torch.addmm`` on operands decoded to fp32 (MKL / OpenBLAS sgemm, fp32 accumulation
in its own order), cast to bfloat16; ``torch.addmm`` on operands decoded to bfloat16 (oneDNN); and
the whole bf16 path from FP8 operands, decoding to bfloat16 then ``torch.addmm``. The first two
peers' operands are decoded before timing (the stricter comparison); ours decodes inside the call.
Where the CPU has AMX (ours then runs the tile kernel), a case marked ``[exact order]`` times the
sequential kernel (``exact_order=True``) against the bf16 ``torch.addmm``. CUDA peers, each its
own case: ``torch._scaled_mm`` with scales alpha and 1 (cuBLASLt FP8 tensor cores; ``b``
column-major, as given), and bf16 ``torch.addmm`` (cuBLAS bf16 tensor cores). Case
names read ``<M>x<N>x<K> e4m3*e5m2 -> bf16``; throughput is 2 M N K floating-point operations per
call, and on an H100 or H200 also as a fraction of the dense FP8 peak, 1979 TFLOP/s (989 for bf16).

On Hopper each CUDA problem also runs every configuration of the tensor-core kernel against
``torch._scaled_mm``, forced by name (``lmkernels.ops.fp8_gemm._sm90_kernel``), in cases marked
``[sm90 <setting>]``: ``auto`` (the shape estimate's choice, as in the unmarked case), each
configuration with the swizzle the estimate would give it, and each with ``:1`` (no swizzle). Forcing
costs each call a few microseconds of setting the environment variable, so compare marked cases with
one another, and with ``[sm90 auto]`` rather than the unmarked case. The full set adds a
128 x 8192 x 8192 problem, one with too few 128 x 128 tiles to fill an H100.
"""

from __future__ import annotations

import torch

import lmkernels
from lmkernels.bench.harness import Case
from lmkernels.ops import fp8_gemm
from lmkernels.ops.fp8_gemm import _SM90_KERNELS, _sm90_kernel

_CPU = {"full": [1024, 2048], "quick": [512]}
_CUDA = {"full": [4096, 8192], "quick": [4096, 8192]}  # the two sizes; 8192^3 takes ~1 ms
_CUDA_SKINNY = {"full": [(128, 8192, 8192)], "quick": []}  # (M, N, K)
_TINY = [48]
_ALPHA = 0.5
_SM90_SETTINGS = ("auto", *_SM90_KERNELS, *(f"{name}:1" for name in _SM90_KERNELS))


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The FP8 GEMM cases on ``device``: full sizes, ``quick`` or ``tiny`` (smoke test)."""
    on_cuda = torch.device(device).type == "cuda"
    mode = "quick" if quick else "full"
    sizes = _TINY if tiny else (_CUDA if on_cuda else _CPU)[mode]
    shapes = [(size, size, size) for size in sizes] + (_CUDA_SKINNY[mode] if on_cuda and not tiny else [])
    hopper = on_cuda and torch.cuda.get_device_capability(device) == (9, 0) and lmkernels.info()["hopper_kernels"]
    result = []
    for m, n, k in shapes:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(m, k, generator=gen).to(torch.float8_e4m3fn).to(device)
        b = torch.randn(n, k, generator=gen).to(torch.float8_e5m2).to(device)
        bias = torch.randn(n, generator=gen).to(device)
        peers = _cuda_peers(a, b, bias) if on_cuda else _cpu_peers(a, b, bias)

        def case(name, peer, peer_fn, ours_fn):
            return Case(kernel="fp8_gemm", case=name, peer=peer, ours_fn=ours_fn, peer_fn=peer_fn,
                        bytes_moved=m * k + n * k + 2 * m * n + 4 * n, device=device, flops=2 * m * n * k,
                        peak_tflops=_fp8_peak_tflops(device))

        name = f"{m}x{n}x{k} e4m3*e5m2 -> bf16"
        result += [case(name, peer, peer_fn, lambda a=a, b=b, bias=bias: fp8_gemm(a, b, _ALPHA, bias, torch.bfloat16))
                   for peer, peer_fn in peers]
        if not on_cuda and lmkernels.info()["fp8_gemm_cpu"] == "amx":  # the sequential kernel beside the tile kernel
            result.append(case(f"{name} [exact order]", *peers[1], lambda a=a, b=b, bias=bias: fp8_gemm(
                a, b, _ALPHA, bias, torch.bfloat16, exact_order=True)))
        if hopper:
            scaled_mm = peers[0]  # torch._scaled_mm
            result += [case(f"{name} [sm90 {setting}]", *scaled_mm, _forced(setting, a, b, bias))
                       for setting in _SM90_SETTINGS]
    return result


def _forced(setting: str, a, b, bias):
    """Our call with the Hopper kernel configuration ``setting``."""
    def call():
        with _sm90_kernel(setting):
            return fp8_gemm(a, b, _ALPHA, bias, torch.bfloat16)
    return call


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


def _fp8_peak_tflops(device: str) -> float | None:
    """The dense FP8 tensor-core peak of ``device`` in TFLOP/s: H100 and H200 (SXM), else unknown."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return 1979.0 if "H100" in name or "H200" in name else None


def _cuda_peers(a, b, bias):
    scale_a, scale_b = torch.full((), _ALPHA, device=a.device), torch.ones((), device=a.device)
    bias_bf16 = bias.to(torch.bfloat16)  # _scaled_mm takes the bias in the output dtype

    def scaled_mm():
        out = torch._scaled_mm(a, b.T, scale_a=scale_a, scale_b=scale_b, bias=bias_bf16, out_dtype=torch.bfloat16)
        return out[0] if isinstance(out, tuple) else out  # (out, amax) before torch 2.5

    return [("torch._scaled_mm (scale_a = alpha)", scaled_mm), _bf16_addmm(a, b, bias)]
