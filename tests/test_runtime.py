"""Build information and the thread pool."""

import pytest
import torch

import lmkernels


def test_info_reports_build_and_runtime():
    info = lmkernels.info()
    assert info["version"] == lmkernels.__version__ or info["version"].startswith("0.")
    assert info["simd"] in {"avx512", "avx2", "neon", "baseline"}
    assert info["threads"] == lmkernels.num_threads() >= 1
    assert isinstance(info["cuda_built"], bool)
    assert info["threads_from"] == "openmp (the process's runtime)"  # torch's, shared
    assert info["memory_cache_limit"] == lmkernels.memory_cache_limit() >= 0


def test_default_thread_count_follows_torch():
    import subprocess
    import sys

    code = "import torch; torch.set_num_threads(3); import lmkernels; print(lmkernels.num_threads())"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "3"


def test_set_num_threads_rejects_bad_values():
    for bad in (0, -3, 10**6):
        with pytest.raises(ValueError, match=r"n: expected a thread count in \[1, 1024\]"):
            lmkernels.set_num_threads(bad)
    with pytest.raises(TypeError, match="n: expected an int"):
        lmkernels.set_num_threads(2.5)


def test_set_num_threads_round_trip():
    before = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(5)
        assert lmkernels.num_threads() == 5
    finally:
        lmkernels.set_num_threads(before)
    assert lmkernels.num_threads() == before == torch.get_num_threads()


def test_own_threads_without_an_openmp_runtime():
    """Without torch (or any OpenMP runtime) in the process, the kernels run on threads of their own."""
    import subprocess
    import sys

    import lmkernels._C as native

    code = f"""
import importlib.machinery, importlib.util
import numpy as np
spec = importlib.util.spec_from_file_location("lmkernels._C", {native.__file__!r})
native = importlib.util.module_from_spec(spec)
spec.loader.exec_module(native)
assert native.parallel_backend() == "own threads", native.parallel_backend()
rng = np.random.default_rng(0)
table = rng.standard_normal((500, 33)).astype(np.float32)
indices = rng.integers(0, 500, 4000)
offsets = np.arange(0, 4001, 40)
results = []
for threads in (1, 3):
    native.set_num_threads(threads)
    out = np.empty((100, 33), np.float32)
    native.embedding_bag_forward(table, indices, offsets, None, 0, out)
    results.append(out)
assert np.array_equal(results[0], results[1])
np.testing.assert_allclose(results[0], table[indices].reshape(100, 40, 33).sum(1), rtol=1e-5, atol=1e-5)
# A forked child has none of the workers: it runs on its own thread, then on new workers.
import os, time
child = os.fork()
if child == 0:
    ok = native.num_threads() == 1
    for threads in (1, 2):
        native.set_num_threads(threads)
        out = np.empty((100, 33), np.float32)
        native.embedding_bag_forward(table, indices, offsets, None, 0, out)
        ok &= np.array_equal(out, results[0])
    os._exit(0 if ok else 1)
deadline = time.monotonic() + 60
while not (done := os.waitpid(child, os.WNOHANG))[0] and time.monotonic() < deadline:
    time.sleep(0.05)
if not done[0]:
    os.kill(child, 9)
assert done[0] and done[1] == 0, done
print("ok")
"""
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "ok"


def test_forked_dataloader_workers_run_the_kernels():
    """A fork leaves the child none of the parent's threads (nor OpenMP's team, which libgomp would wait
    for forever): the child runs on one thread, and on threads of its own after set_num_threads."""
    import subprocess
    import sys

    code = """
import torch, lmkernels
from lmkernels.ops import embedding_bag
from lmkernels.tfree import Tokenizer
tokenizer = Tokenizer(vocab_size=2000, m=4, k_lowercase=1)
texts = [f"Sentence number {i} of a document, with some words." for i in range(3000)]
expected = tokenizer.encode(texts).rows  # the parent's pool (and OpenMP team) has run
table = torch.randn(5000, 64)
indices, offsets = torch.randint(0, 5000, (200000,)), torch.arange(0, 200001, 10)
expected_bags = embedding_bag(table, indices, offsets)
torch.randn(1000, 1000).exp().sum()

class Work(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        threads = lmkernels.num_threads()
        if i % 2:
            lmkernels.set_num_threads(2)
        same = torch.equal(tokenizer.encode(texts).rows, expected)
        same &= torch.equal(embedding_bag(table, indices, offsets), expected_bags)
        return torch.tensor([threads, lmkernels.num_threads(), same, lmkernels.info()["threads_from"] == "own threads"])

loader = torch.utils.data.DataLoader(Work(), num_workers=2, multiprocessing_context="fork", timeout=60)
print(torch.cat(list(loader)).tolist())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    # Per item: threads on entry, threads after (worker 1 moves to 2 at item 1), same results, own threads.
    assert eval(result.stdout) == [[1, 1, 1, 1], [1, 2, 1, 1], [1, 1, 1, 1], [2, 2, 1, 1]]


@pytest.fixture
def memory_cache_limit():
    """Restores the memory cache's limit after the test."""
    limit = lmkernels.memory_cache_limit()
    yield
    lmkernels.set_memory_cache_limit(limit)


def test_large_cpu_outputs_reuse_freed_memory(memory_cache_limit):
    from lmkernels import _C
    from lmkernels.ops._native import kernel_output

    lmkernels.set_memory_cache_limit(0)  # empty
    lmkernels.set_memory_cache_limit(256 << 20)
    out = kernel_output((4096, 8192), torch.bfloat16, "cpu")  # 64 MiB
    assert out.shape == (4096, 8192) and out.dtype == torch.bfloat16 and out.is_contiguous()
    address = out.data_ptr()
    del out
    assert _C.scratch_cached_bytes() == 64 << 20
    again = kernel_output((8192, 4096), torch.bfloat16, "cpu")
    assert again.data_ptr() == address and _C.scratch_cached_bytes() == 0
    small = kernel_output((16, 16), torch.bfloat16, "cpu")  # small outputs are plain torch.empty
    del again, small
    assert _C.scratch_cached_bytes() == 64 << 20 == lmkernels.info()["memory_cached"]
    lmkernels.set_memory_cache_limit(0)  # frees every cached block, keeps none
    assert _C.scratch_cached_bytes() == 0
    dropped = kernel_output((4096, 8192), torch.bfloat16, "cpu")
    del dropped
    assert _C.scratch_cached_bytes() == 0


def test_set_memory_cache_limit_rejects_bad_values(memory_cache_limit):
    with pytest.raises(ValueError, match="nbytes: expected a non-negative limit, got -1"):
        lmkernels.set_memory_cache_limit(-1)
    with pytest.raises(TypeError, match="nbytes: expected an int"):
        lmkernels.set_memory_cache_limit(1.5)
    with pytest.raises(ValueError, match="nbytes: expected a non-negative size"):
        lmkernels._C.cached_bytes(-8)
