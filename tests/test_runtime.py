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
