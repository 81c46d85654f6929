"""Build information, the thread count of the CPU kernels, and the limit of their memory cache."""

from __future__ import annotations

import os

import torch

from lmkernels import _C


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use (default: ``torch.get_num_threads()`` at import).

    The kernels run on the threads of the OpenMP runtime that torch loaded (shared with torch, not
    competing with it), or on threads of their own where there is none, and never run more than
    ``n`` at once: a kernel called while another runs (from another Python thread) runs serially.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    _C.set_num_threads(n)


def num_threads() -> int:
    """The number of threads the CPU kernels use."""
    return _C.num_threads()


def set_memory_cache_limit(nbytes: int) -> None:
    """Set how many bytes of freed large CPU buffers lmkernels keeps for reuse (default 512 MiB).

    Large CPU outputs (a dense embedding gradient) and temporaries (the FP8 GEMM's decoded operands)
    come from this cache. A fresh buffer of that size is faulted in and zeroed page by page on
    first write, which cost a 128 MiB embedding gradient more than its kernel; a reused one is not.
    The memory of a freed output stays with the process, up to this limit, until it is reused or
    the limit is lowered (0 frees every cached buffer and keeps none). Such outputs are ordinary
    tensors, except that their storage cannot be resized in place (``resize_`` to a larger size).
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"nbytes: expected an int, got {type(nbytes).__name__}")
    _C.set_scratch_cache_limit(nbytes)


def memory_cache_limit() -> int:
    """The most bytes of freed buffers the memory cache keeps (see ``set_memory_cache_limit``)."""
    return _C.scratch_cache_limit()


def info() -> dict:
    """Version, build type, CUDA support and architectures, Hopper kernels, the SIMD level chosen at run time, the
    FP8 GEMM's CPU kernel, threads, the memory cache's limit and what it holds now."""
    build = _C.build_info()
    return {
        "version": build["version"],
        "build_type": build["build_type"],
        "cuda_built": build["cuda"],
        "cuda_architectures": build["cuda_architectures"] or None,
        "hopper_kernels": build["hopper_kernels"],  # CUTLASS sm_90a kernels (fp8_gemm) built in
        "cuda_available": bool(build["cuda"]) and torch.cuda.is_available(),
        "sanitize": build["sanitize"] or None,
        "compiler": build["compiler"],
        "simd": _C.simd_level(),
        "fp8_gemm_cpu": _C.fp8_gemm_cpu_kernel(),  # amx, avx512_bf16 or fp32 (the last two sum in increasing k)
        "threads": num_threads(),
        "threads_from": _C.parallel_backend(),
        "memory_cache_limit": memory_cache_limit(),
        "memory_cached": _C.scratch_cached_bytes(),  # bytes of freed buffers the cache holds now
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
