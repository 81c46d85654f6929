"""Peak bytes of the tensors a callable allocates, on any device (the CPU has no allocator statistics).

A ``TorchDispatchMode`` sees every op's outputs; each distinct storage counts from the first output
that holds it until the last such output object is garbage. Tensors alive before the call (weights,
inputs) do not count, and neither do temporaries private to one native op, so this is the peak of
the live intermediate tensors of the call: the quantity CUDA's ``max_memory_allocated`` measures
above the memory already held, up to allocator rounding.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _LiveTensors(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.references: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._hold(tensor)
        return out

    def _hold(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.references:
            self.sizes[key] = storage.nbytes()
            self.references[key] = 0
            self.live += self.sizes[key]
            self.peak = max(self.peak, self.live)
        self.references[key] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        self.references[key] -= 1
        if self.references[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.references[key]


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """The peak, over one call of ``fn``, of the bytes held by tensors it created (its result included)."""
    tracker = _LiveTensors()
    with tracker:
        result = fn()
    del result
    return tracker.peak
