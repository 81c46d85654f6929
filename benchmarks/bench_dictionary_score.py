"""pytest-benchmark mirror of ``lmk bench`` for the dictionary-scoring cases (``lmkernels.bench.dictionary_score``).

    PYTHONPATH=python python -m pytest benchmarks/bench_dictionary_score.py -p no:cacheprovider --benchmark-only \\
        -o python_files='bench_*.py'

Quick shapes by default (20,000 words); ``LMK_BENCH_FULL=1`` for the full T-FREE sizes (100,000
words). CUDA cases run where available.
"""

import os

import pytest
import torch

from lmkernels.bench import dictionary_score
from lmkernels.bench.harness import synced

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_CASES = [case for device in _DEVICES
          for case in dictionary_score.cases(quick=os.environ.get("LMK_BENCH_FULL") != "1", device=device)]
_IDS = [f"{case.device}-{case.case.replace(' ', '-')}-vs-{case.peer.split()[0].replace('.', '-')}" for case in _CASES]


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_ours(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case} {case.device} vs {case.peer}"
    benchmark(synced(case.ours_fn, case.device))


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_peer(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case} {case.device} vs {case.peer}"
    benchmark(synced(case.peer_fn, case.device))
