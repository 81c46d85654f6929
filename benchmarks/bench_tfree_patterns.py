"""pytest-benchmark mirror of ``lmk bench`` for the T-FREE pattern table (``lmkernels.bench.tfree_patterns``).

    PYTHONPATH=python python -m pytest benchmarks/bench_tfree_patterns.py -p no:cacheprovider --benchmark-only \\
        -o python_files='bench_*.py'

Quick sizes (the first 2^20 rows of a fresh table) by default; ``LMK_BENCH_FULL=1`` for the full
2^24-row precompute. The peer times only its row sample (``lmk bench`` extrapolates it).
"""

import os

import pytest

from lmkernels.bench import tfree_patterns

_CASES = tfree_patterns.cases(quick=os.environ.get("LMK_BENCH_FULL") != "1", device="cpu")
_IDS = [case.case.replace(" ", "-") for case in _CASES]


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_ours(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case}"
    benchmark.pedantic(case.ours_fn, rounds=3, iterations=1)


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_peer_sample(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case}"
    benchmark.pedantic(case.peer_fn, rounds=3, iterations=1)
