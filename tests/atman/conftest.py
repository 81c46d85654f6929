"""Shared subjects of the AtMan tests: a small random ``CausalLM`` with grouped-query attention.

The models are tiny, so the tests run torch on one thread: on a shared machine, OpenMP hand-offs
between busy cores cost far more than the work itself.
"""

import pytest
import torch

from lmkernels.nn import CausalLM, DecoderConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="package")
def byte_model():
    torch.manual_seed(0)
    return CausalLM(256, DecoderConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2)).eval()
