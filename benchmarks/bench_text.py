"""pytest-benchmark mirror of ``lmk bench`` for the T-FREE word splitter (``lmkernels.bench.tfree_words``).

    PYTHONPATH=python python -m pytest benchmarks/bench_text.py -p no:cacheprovider --benchmark-only \\
        -o python_files='bench_*.py'

Quick sizes by default; ``LMK_BENCH_FULL=1`` for the whole corpus. CPU only.
"""

import os

import pytest

from lmkernels.bench import tfree_words

_CASES = tfree_words.cases(quick=os.environ.get("LMK_BENCH_FULL") != "1", device="cpu")
_IDS = [case.case.replace(" ", "-") for case in _CASES]


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_ours(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case}"
    benchmark(case.ours_fn)


@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_peer(benchmark, case):
    benchmark.group = f"{case.kernel} {case.case}"
    benchmark(case.peer_fn)
