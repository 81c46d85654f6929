"""pytest-benchmark mirror of ``lmk bench`` for the int8 absmax cases (``lmkernels.bench.int8_absmax``).

    PYTHONPATH=python python -m pytest benchmarks/bench_int8_absmax.py -p no:cacheprovider --benchmark-only \\
        -o python_files='bench_*.py'

Quick shapes by default; ``LMK_BENCH_FULL=1`` for the Llama sizes. CUDA cases run where available.
"""

import os

import pytest
import torch

from lmkernels.bench import int8_absmax
from lmkernels.bench.harness import synced

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_CASES = [case for device in _DEVICES
          for case in int8_absmax.cases(quick=os.environ.get("LMK_BENCH_FULL") != "1", device=device)]
_IDS = [f"{case.device}-{case.case.replace(' ', '-')}" for case in _CASES]


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_ours(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case} {case.device}"
    benchmark(synced(case.ours_fn, case.device))


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_peer(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case} {case.device}"
    benchmark(synced(case.peer_fn, case.device))
