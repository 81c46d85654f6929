"""``lmk``: the command line of lmkernels.

    lmk info                 build and runtime information
    lmk tour                 the main job: every method at work on embedded defaults
    lmk bench [--quick] ...  the microbenchmark suite against the strongest peers
"""

from __future__ import annotations

import argparse
import json
import sys


def _info(args: argparse.Namespace) -> int:
    import lmkernels

    info = lmkernels.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _tour(args: argparse.Namespace) -> int:
    from lmkernels.tour import run_tour

    return run_tour(seed=args.seed)


def _bench(args: argparse.Namespace) -> int:
    from lmkernels.bench.cli import run_bench

    return run_bench(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmk", description="lmkernels: fast kernels for LLM research methods")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="build and runtime information")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)

    tour = commands.add_parser("tour", help="the main job on embedded defaults (under a minute on a laptop CPU)")
    tour.add_argument("--seed", type=int, default=0)
    tour.set_defaults(run=_tour)

    bench = commands.add_parser("bench", help="microbenchmarks: ours against the strongest peer, same run")
    from lmkernels.bench.cli import add_arguments

    add_arguments(bench)
    bench.set_defaults(run=_bench)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
