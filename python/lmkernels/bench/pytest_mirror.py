"""The pytest-benchmark mirror of one ``lmk bench`` module: ``test_ours, test_peer = mirror(module)``.

Each ``benchmarks/bench_<kernel>.py`` is that one line. Quick sizes by default, ``LMK_BENCH_FULL=1``
for the full ones; CUDA cases where CUDA is available. A peer that ``lmk bench`` extrapolates from a
sample (``Case.peer_scale``) is timed on its sample only.

    PYTHONPATH=python python -m pytest benchmarks -p no:cacheprovider --benchmark-only -o python_files='bench_*.py'
"""

from __future__ import annotations

import os

import pytest
import torch

from lmkernels.bench.harness import synced


def mirror(module):
    """Two parametrised pytest-benchmark tests over ``module.cases``: ours and the peer, grouped by case."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    quick = os.environ.get("LMK_BENCH_FULL") != "1"
    cases = [case for device in devices for case in module.cases(quick=quick, device=device)]
    ids = [f"{case.device}-{case.case.replace(' ', '-')}-{case.peer.split()[0]}" for case in cases]

    @pytest.mark.parametrize("case", cases, ids=ids)
    def test_ours(benchmark, case):
        benchmark.group = f"{case.kernel} {case.case} {case.device} vs {case.peer}"
        benchmark(synced(case.ours_fn, case.device))

    @pytest.mark.parametrize("case", cases, ids=ids)
    def test_peer(benchmark, case):
        benchmark.group = f"{case.kernel} {case.case} {case.device} vs {case.peer}"
        benchmark(synced(case.peer_fn, case.device))

    return test_ours, test_peer
