"""Where a CUDA benchmark case's wall time goes: the host time of one call, and one call of each side
inside a profiler range for Nsight Compute.

    python3 benchmarks/profile_cuda.py --family attention --filter "atman S=" --host
    ncu --profile-from-start off --clock-control none --section SpeedOfLight ... \
        python3 benchmarks/profile_cuda.py --family attention --filter "atman S="

``--host``: per case and side, the median over 50 calls of the time from an idle GPU until the call
returns (no synchronisation inside): the host work before and between the launches, which the
benchmark's wall time adds to the kernels'. Without it: after a warmup call per side, one call of
ours and one of the peer between ``cudaProfilerStart`` and ``cudaProfilerStop``, so that ncu with
``--profile-from-start off`` measures those kernels alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmkernels.bench.cli import FAMILIES


def selected_cases(families: list[str], patterns: list[str]):
    for family in FAMILIES:
        if family.__name__.rsplit(".", 1)[-1] not in families:
            continue
        for case in family.cases(False, "cuda"):
            name = f"{case.kernel} {case.case} | {case.peer}"
            if any(p in name for p in patterns):
                yield name, case


def host_us(fn, calls: int = 50) -> float:
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", action="append", required=True, help="a family's module name (repeatable)")
    parser.add_argument("--filter", action="append", required=True, help="case name substrings (repeatable)")
    parser.add_argument("--host", action="store_true", help="report host time per call instead of profiling")
    args = parser.parse_args()
    for name, case in selected_cases(args.family, args.filter):
        case.ours_fn(), case.peer_fn()
        torch.cuda.synchronize()
        if args.host:
            print(f"{name}: host us ours {host_us(case.ours_fn):.1f}, peer {host_us(case.peer_fn):.1f}", flush=True)
            continue
        print(f"profiling {name}", flush=True)
        torch.cuda.cudart().cudaProfilerStart()
        case.ours_fn()
        case.peer_fn()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
