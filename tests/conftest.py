"""Shared fixtures: the devices to test on, and a deterministic torch seed per test."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison_memory_cache():
    """``poison(*sizes)`` empties lmkernels' memory cache, where large CPU outputs come from, and puts
    into it one freed block of each size, full of 0xFF bytes (NaN in every float format); it returns
    their addresses. An op that leaves any element of such an output unwritten shows it."""
    import lmkernels
    from lmkernels import _C

    def poison(*sizes):
        limit = lmkernels.memory_cache_limit()
        lmkernels.set_memory_cache_limit(0)  # drop what earlier calls left, so that only these are there
        lmkernels.set_memory_cache_limit(limit)
        blocks = [_C.cached_bytes(nbytes) for nbytes in sizes]
        for block in blocks:
            block.fill(0xFF)
        return {block.ctypes.data for block in blocks}

    return poison
