"""Timing machinery shared by the benchmark families.

A family module exposes ``cases(quick: bool, device: str, tiny: bool = False) -> list[Case]``;
``measure`` times one case, ours and the peer interleaved in the same process on the same inputs.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from lmkernels.bench.tensor_memory import peak_tensor_bytes


@dataclass(frozen=True)
class Case:
    """One benchmark: our callable and the peer's, on inputs both already hold (allocated once).

    A peer too slow to run the whole case runs ``1 / peer_scale`` of it; its times are multiplied
    by ``peer_scale`` (an extrapolation, which the ``peer`` label must say).
    """

    kernel: str
    case: str
    peer: str
    ours_fn: Callable[[], object]
    peer_fn: Callable[[], object]
    bytes_moved: int | None
    device: str
    text_bytes: int | None = None  # text kernels: input bytes per call, reported as MB/s
    flops: int | None = None  # compute-bound kernels (GEMMs): floating-point operations per call, as GFLOP/s
    peer_scale: float = 1.0
    peak_tflops: float | None = None  # the device's dense peak for this arithmetic, where known
    memory_on_cpu: bool = False  # also record peak tensor memory on the CPU (one more call per side)


@dataclass(frozen=True)
class Timing:
    """How long to measure: warmup calls per side, then at least ``min_repeats`` samples per side
    and enough to run each side for ``min_time`` seconds (at most ``max_repeats``), taken in
    blocks of ``block`` calls per side of which the first is discarded."""

    warmup: int
    min_repeats: int
    min_time: float
    max_repeats: int = 1000
    stream_mib: int = 256
    block: int = 3


FULL = Timing(warmup=2, min_repeats=10, min_time=0.3)
QUICK = Timing(warmup=1, min_repeats=4, min_time=0.1)
TINY = Timing(warmup=1, min_repeats=3, min_time=0.0, stream_mib=16)


def _is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """``fn`` followed by a device synchronization where ``device`` is CUDA (for wall-clock timers)."""
    if not _is_cuda(device):
        return fn

    def call():
        result = fn()
        torch.cuda.synchronize(device)
        return result

    return call


def _timer(device: str) -> Callable[[Callable[[], object]], float]:
    """A function that runs a callable once and returns its time in milliseconds."""
    if _is_cuda(device):
        def time_once(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def time_once(fn):
            begin = time.perf_counter()
            fn()
            return (time.perf_counter() - begin) * 1e3
    return time_once


def _peak_mb(fn: Callable[[], object], device: str, on_cpu: bool = False) -> float | None:
    """Peak memory one call allocates above what is already held, in MiB: CUDA's allocator
    statistics; on the CPU, where it has none, the live tensors' peak (``tensor_memory``) if
    ``on_cpu``, else None."""
    if not _is_cuda(device):
        return peak_tensor_bytes(fn) / 2**20 if on_cpu else None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def kernel_times(fn: Callable[[], object], device: str, calls: int = 5) -> dict[str, float] | None:
    """GPU time of each kernel (and copy) one call launches, in milliseconds per call by name, longest
    first, from ``torch.profiler``: the call's time without the host's work, which the wall time from
    an idle GPU includes, and where it goes. None on the CPU."""
    if not _is_cuda(device):
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize(device)
    on_gpu = [(e.name, e.time_range.elapsed_us()) for e in prof.events()
              if e.device_type == torch.autograd.DeviceType.CUDA]
    return per_kernel_ms(on_gpu, calls)


def per_kernel_ms(events: list[tuple[str, float]], calls: int) -> dict[str, float]:
    """(name, microseconds) events of ``calls`` calls as milliseconds per call by name, longest first."""
    totals: dict[str, float] = {}
    for name, us in events:
        totals[name] = totals.get(name, 0.0) + us / calls / 1e3
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def stream_bandwidth(device: str, timing: Timing = FULL, repeats: int = 5) -> float:
    """Streaming-read bandwidth in GB/s: median time of ``torch.sum`` over a float32 tensor."""
    x = torch.ones(timing.stream_mib * 2**20 // 4, dtype=torch.float32, device=device)
    time_once = _timer(device)
    time_once(x.sum)
    ms = statistics.median(time_once(x.sum) for _ in range(repeats))
    return x.numel() * 4 / ms / 1e6


def measure(case: Case, timing: Timing = FULL, stream_gbps: float | None = None) -> dict:
    """Time ``case``: warmup, then blocks of ours and of the peer alternately; medians in milliseconds.

    Returns the record: kernel, case, device, peer, ours_ms, peer_ms (times ``peer_scale``), speedup
    (peer_ms / ours_ms), ours_kernel_ms and peer_kernel_ms (CUDA only: the sum of ``kernel_times``;
    None for a scaled peer) and ours_kernels and peer_kernels (``kernel_times`` itself),
    ours_peak_mb, peer_peak_mb (CUDA, and the CPU for cases with ``memory_on_cpu``; else None), gbps (ours, from ``bytes_moved``),
    stream_gbps (as given) and threads (torch's CPU thread count, which lmkernels follows); cases with ``text_bytes`` add ours_mbps and peer_mbps (text MB/s), cases
    with ``flops`` add ours_gflops and peer_gflops, and with ``peak_tflops`` also ours_of_peak and
    peer_of_peak (fractions of that peak).
    """
    time_once = _timer(case.device)
    first = [math.inf, math.inf]  # each side's fastest warmup call
    for _ in range(timing.warmup):
        first = [min(first[0], time_once(case.ours_fn)), min(first[1], time_once(case.peer_fn))]

    def samples(ms: float) -> int:  # enough calls to run the side for min_time, within the bounds
        wanted = math.ceil(timing.min_time * 1e3 / ms) if 0 < ms < math.inf else 0
        return min(max(timing.min_repeats, wanted), timing.max_repeats)

    # Blocks of calls, ours then the peer, alternate against drift in the machine's speed. The
    # first call of each block is not kept: it pays for the other side's leftovers (torch's
    # OpenMP workers spin for milliseconds after each torch call, holding a core). The side that
    # needs fewer samples (the slower one) sets the number of blocks; the other takes more calls
    # per block, so that a peer 50x slower is not run 50x as long as ours.
    wanted = [samples(first[0]), samples(first[1])]
    blocks = math.ceil(min(wanted) / (timing.block - 1))
    sizes = [1 + math.ceil(n / blocks) for n in wanted]
    ours, peer = [], []
    for _ in range(blocks):
        ours += [time_once(case.ours_fn) for _ in range(sizes[0])][1:]
        peer += [time_once(case.peer_fn) for _ in range(sizes[1])][1:]
    ours_ms, peer_ms = statistics.median(ours), statistics.median(peer) * case.peer_scale
    ours_kernels = kernel_times(case.ours_fn, case.device)
    peer_kernels = kernel_times(case.peer_fn, case.device) if case.peer_scale == 1.0 else None
    record = {
        "kernel": case.kernel,
        "case": case.case,
        "device": case.device,
        "peer": case.peer,
        "ours_ms": ours_ms,
        "peer_ms": peer_ms,
        "speedup": peer_ms / ours_ms,
        "ours_kernel_ms": None if ours_kernels is None else sum(ours_kernels.values()),
        "peer_kernel_ms": None if peer_kernels is None else sum(peer_kernels.values()),
        "ours_kernels": ours_kernels,
        "peer_kernels": peer_kernels,
        "ours_peak_mb": _peak_mb(case.ours_fn, case.device, case.memory_on_cpu),
        "peer_peak_mb": _peak_mb(case.peer_fn, case.device, case.memory_on_cpu),
        "gbps": None if case.bytes_moved is None else case.bytes_moved / ours_ms / 1e6,
        "stream_gbps": stream_gbps,
        "threads": torch.get_num_threads(),
    }
    if case.text_bytes is not None:
        record["ours_mbps"] = case.text_bytes / ours_ms / 1e3
        record["peer_mbps"] = case.text_bytes / peer_ms / 1e3
    if case.flops is not None:
        record["ours_gflops"] = case.flops / ours_ms / 1e6
        record["peer_gflops"] = case.flops / peer_ms / 1e6
        if case.peak_tflops is not None:
            record["ours_of_peak"] = record["ours_gflops"] / (case.peak_tflops * 1e3)
            record["peer_of_peak"] = record["peer_gflops"] / (case.peak_tflops * 1e3)
    return record
