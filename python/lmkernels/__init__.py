"""lmkernels: native kernels and PyTorch layers for T-FREE, HAT, AtMan, u-muP and Divergent Token Metrics.

Layers, bottom up: ``lmkernels._C`` (the compiled kernels), ``lmkernels.reference`` (plain PyTorch
oracles), ``lmkernels.ops`` (one ``torch.library`` custom op per kernel), ``lmkernels.nn``
(modules). See ``docs/architecture.md``.
"""

from importlib.metadata import PackageNotFoundError, version as _version

import torch

from lmkernels import _C
from lmkernels._runtime import info, memory_cache_limit, num_threads, set_memory_cache_limit, set_num_threads
from lmkernels import ops, nn, reference  # noqa: E402  (ops registers the torch custom ops)

try:
    __version__ = _version("lmkernels")
except PackageNotFoundError:  # running from a source tree
    __version__ = _C.build_info()["version"]

set_num_threads(torch.get_num_threads())

__all__ = ["info", "num_threads", "set_num_threads", "memory_cache_limit", "set_memory_cache_limit", "ops", "nn",
           "reference", "__version__"]
