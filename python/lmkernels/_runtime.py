"""Build information and the thread count of the CPU kernels."""

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


def info() -> dict:
    """Version, build type, CUDA support and architectures, Hopper kernels, the SIMD level chosen at run time, threads."""
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
        "threads": num_threads(),
        "threads_from": _C.parallel_backend(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
