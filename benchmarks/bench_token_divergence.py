"""pytest-benchmark mirror of ``lmk bench`` for the token-divergence cases (``lmkernels.bench.token_divergence``).

    PYTHONPATH=python python -m pytest benchmarks/bench_token_divergence.py -p no:cacheprovider --benchmark-only \\
        -o python_files='bench_*.py'

Quick shapes by default; ``LMK_BENCH_FULL=1`` for the full DTM sizes. CUDA cases run where available.
"""

import os

import pytest
import torch

from lmkernels.bench import token_divergence
from lmkernels.bench.harness import synced

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_QUICK = os.environ.get("LMK_BENCH_FULL") != "1"
_CASES = [case for device in _DEVICES for case in token_divergence.cases(quick=_QUICK, device=device)]
_IDS = [f"{case.device}-{case.case.replace(' ', '-')}" for case in _CASES]


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_ours(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case} {case.device}"
    benchmark(synced(case.ours_fn, case.device))


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_peer(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case} {case.device}"
    benchmark(synced(case.peer_fn, case.device))
