"""``lmk bench``: run the benchmark families, print the table, optionally save the records as JSON."""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from lmkernels.bench import (atman_explain, attention, dictionary_score, dtm_sweep, embedding_bag, fp8_cast, fp8_gemm,
                             harness, hat_split, int8_absmax, multilabel_bce, tfree_encode, tfree_patterns, tfree_words,
                             token_divergence, umup_linear, word_connector)

# One module per kernel family, each with ``cases(quick, device, tiny=False) -> list[Case]``.
FAMILIES = [embedding_bag, multilabel_bce, dictionary_score, tfree_words, tfree_patterns, tfree_encode, hat_split,
            word_connector, attention, atman_explain, token_divergence, int8_absmax, fp8_cast, fp8_gemm, umup_linear,
            dtm_sweep]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lmk bench`` flags to ``parser``."""
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats (under 2 minutes)")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (for tests; timings mean nothing)")
    parser.add_argument("--filter", action="append", metavar="NAME",
                        help="keep cases whose kernel or case name contains NAME (repeatable or comma-separated)")
    parser.add_argument("--json", metavar="PATH", help="write the list of records to PATH")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="where to run (default: all available)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU threads for both sides, torch's and lmkernels' (default: torch's current count)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def run_bench(args: argparse.Namespace) -> int:
    """Measure the selected cases, print the table, write ``--json``; returns the exit status."""
    if args.threads is None:
        return _measure_selected(args)
    import lmkernels

    previous = torch.get_num_threads(), lmkernels.num_threads()
    torch.set_num_threads(args.threads)
    lmkernels.set_num_threads(args.threads)
    try:
        return _measure_selected(args)
    finally:
        torch.set_num_threads(previous[0])
        lmkernels.set_num_threads(previous[1])


def _measure_selected(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("lmk bench: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    terms = [term.strip() for value in args.filter or [] for term in value.split(",") if term.strip()]
    cases = [case for device in devices for family in FAMILIES
             for case in family.cases(args.quick, device, tiny=args.tiny)
             if not terms or any(term in case.kernel or term in case.case for term in terms)]
    if not cases:
        print(f"lmk bench: no case matches --filter {','.join(terms)}", file=sys.stderr)
        return 1
    timing = harness.TINY if args.tiny else harness.QUICK if args.quick else harness.FULL

    print(_machine())
    streams = {}
    for device in dict.fromkeys(case.device for case in cases):
        streams[device] = harness.stream_bandwidth(device, timing)
        print(f"stream read ({device}, torch.sum over {timing.stream_mib} MiB float32): {streams[device]:.1f} GB/s")
    print()

    header = ["kernel", "case", "device", "ours ms", "peer", "peer ms", "speedup", "GB/s (of stream)"]
    widths = [len(h) for h in header]
    for case in cases:
        widths[:3] = [max(w, len(text)) for w, text in zip(widths, (case.kernel, case.case, case.device))]
        widths[4] = max(widths[4], len(case.peer))
    widths[3] = widths[5] = 9
    print(_row(header, widths))
    print(_row(["-" * w for w in widths], widths))
    records, failures = [], []
    for case in cases:
        try:
            record = harness.measure(case, timing, streams[case.device])
        except Exception as error:  # one broken case must not hide the others' numbers
            failures.append(f"{case.kernel} | {case.case} | {case.device}: {type(error).__name__}: {error}")
            print(f"{case.kernel}  {case.case}  {case.device}  FAILED: {type(error).__name__}: {error}", flush=True)
            continue
        records.append(record)
        gbps = "" if record["gbps"] is None else f"{record['gbps']:.1f} ({record['gbps'] / record['stream_gbps']:.0%})"
        if "ours_mbps" in record:
            gbps = f"text {record['ours_mbps']:.1f} MB/s (peer {record['peer_mbps']:.1f})"
        if "ours_gflops" in record:
            gbps = f"{record['ours_gflops']:.1f} GFLOP/s (peer {record['peer_gflops']:.1f})"
            if "ours_of_peak" in record:
                gbps += f", {record['ours_of_peak']:.0%} of peak (peer {record['peer_of_peak']:.0%})"
        if record["ours_kernel_ms"] is not None:
            peer_kernel = record["peer_kernel_ms"]
            gbps += f"  kernels {record['ours_kernel_ms']:.3f} ms (peer {'-' if peer_kernel is None else f'{peer_kernel:.3f}'})"
        print(_row([record["kernel"], record["case"], record["device"], f"{record['ours_ms']:.3f}", record["peer"],
                    f"{record['peer_ms']:.3f}", f"{record['speedup']:.2f}x", gbps], widths), flush=True)
        if args.json:  # after every case, so that a run stopped part-way keeps what it measured
            with open(args.json, "w") as f:
                json.dump(records, f, indent=2)

    if args.json:
        print(f"\nwrote {len(records)} records to {args.json}")
    if failures:
        print(f"\nlmk bench: {len(failures)} case(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(f"{cell:<{w}}" if i in (0, 1, 2, 4) else f"{cell:>{w}}"
                     for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()


def _machine() -> str:
    """One line: CPU model, threads, torch version, SIMD level (and the GPU where CUDA is available)."""
    import lmkernels

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    line = (f"machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"simd {lmkernels.info()['simd']}")
    if torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name()}"
    return line
