"""Attention cases: ``lmk.attention`` against ``scaled_dot_product_attention`` with a dense mask, and
``flex_attention`` where it runs.

AtMan (issue 6): suppressed causal attention of a small Llama-style layer, 8 heads x 64, S = 4096,
ten keys suppressed through a per-key bias (log 0.1): one explanation pass (batch 1), and four
passes in one call as AtMan batches them (batch 4, each item suppressing its own ten keys). The
peer is what AtMan's research code runs: SDPA with the dense additive mask (causal -inf plus the
bias column), [1, 1, S, S] or one [S, S] per item, built once outside the timed call (which
favours the peer).

HAT (issue 5): the byte encoder's causal sliding-window attention, 8192 bytes, window 768, 8 heads
x 64, forward and forward+backward (upstream gradient of ones through ``out.sum()``). Peers: SDPA
with the dense [S, S] boolean mask, and ``flex_attention`` with the same mask as a compiled block
mask (CUDA, and CPU where this torch compiles it; its compilation is paid in the warmup).

Training: plain causal attention of a batch of 4 sequences of 2048, 8 heads x 64, forward and
forward+backward (upstream gradient of ones), against SDPA with ``is_causal=True`` (torch's flash
kernels, the strongest peer without a mask); on the CPU in float32 and bfloat16.

Case names read ``<what> S=<S> [w=<window>] [batch <B>] <H>x<D> <dtype> fwd|fwd+bwd``; CPU cases
run in float32 (the training cases in bfloat16 as well), CUDA ones in bfloat16.
``peak_memory_report()`` (``python -m lmkernels.bench.attention --memory``) measures each side's
peak memory on the CPU, where the harness has no allocator statistics, each in a fresh process.
"""

from __future__ import annotations

import argparse
import functools
import math
import subprocess
import sys

import torch
import torch.nn.functional as F

from lmkernels.bench.harness import Case
from lmkernels.ops import attention

_HEADS, _DIM = 8, 64
_SUPPRESSED = 10
_ATMAN_BATCH = 4  # passes of the batched AtMan case
_TRAINING_BATCH = 4


def _sizes(quick: bool, tiny: bool) -> tuple[int, int, int, int]:
    """(AtMan length, HAT length, HAT window, training length)."""
    if tiny:
        return 128, 256, 48, 128
    if quick:  # the dense peers' fwd+bwd grows as S^2: 2048 keeps the quick suite short
        return 2048, 2048, 768, 1024
    return 4096, 8192, 768, 2048


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The attention cases on ``device``: full sizes, ``quick`` (S = 2048) or ``tiny`` (smoke test)."""
    atman_length, hat_length, window, training_length = _sizes(quick, tiny)
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    result = [_atman_case(atman_length, dtype, device, batch) for batch in (1, _ATMAN_BATCH)]
    for backward in (False, True):
        result.append(_window_case(hat_length, window, dtype, device, backward, "sdpa"))
        if not tiny and _flex_runs(device, backward):
            result.append(_window_case(hat_length, window, dtype, device, backward, "flex"))
    for training_dtype in (dtype,) if cuda else (torch.float32, torch.bfloat16):
        result += [_causal_case(training_length, training_dtype, device, backward) for backward in (False, True)]
    return result


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def _qkv(length: int, dtype: torch.dtype, device: str, requires_grad: bool = False, batch: int = 1):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, _HEADS, length, _DIM, generator=gen).to(device, dtype).requires_grad_(requires_grad)
            for _ in range(3)]


def atman_bias(length: int, batch: int = 1) -> torch.Tensor:
    """log 0.1 on ten keys per item, 0 elsewhere: [batch, length] float32. Item 0's keys start a
    tenth of the way in, item b's b / batch of the length further."""
    bias = torch.zeros(batch, length)
    for item in range(batch):
        start = length // 10 + item * (length // batch)
        bias[item, start:start + _SUPPRESSED] = math.log(0.1)
    return bias


def dense_atman_mask(length: int, bias: torch.Tensor, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The research code's [B, 1, S, S] additive mask: -inf above the diagonal, item b's bias on
    every row of its [S, S]."""
    causal = torch.full((length, length), -math.inf, device=bias.device).triu(1)
    return (causal + bias[:, None, :]).to(device, dtype)[:, None]


def window_mask(length: int, window: int, device: str) -> torch.Tensor:
    """[S, S] boolean: key j visible to query i iff j <= i and i - j < window."""
    position = torch.arange(length, device=device)
    distance = position[:, None] - position[None, :]
    return (distance >= 0) & (distance < window)


def _atman_case(length: int, dtype: torch.dtype, device: str, batch: int) -> Case:
    @functools.cache
    def inputs():
        q, k, v = _qkv(length, dtype, device, batch=batch)
        bias = atman_bias(length, batch).to(device)
        return q, k, v, bias, dense_atman_mask(length, bias, dtype, device)

    def ours():
        q, k, v, bias, _ = inputs()
        return attention(q, k, v, key_bias=bias)

    def peer():
        q, k, v, _, mask = inputs()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    ours.inputs = peer.inputs = inputs
    passes = "" if batch == 1 else f" batch {batch}"
    return Case(kernel="attention", case=f"atman S={length}{passes} {_HEADS}x{_DIM} {_dtype_name(dtype)} fwd",
                peer="SDPA + dense additive mask", ours_fn=ours, peer_fn=peer, bytes_moved=None, device=device,
                flops=batch * 2 * 2 * _HEADS * _DIM * length * (length + 1) // 2)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


@functools.cache
def _flex_runs(device: str, backward: bool) -> bool:
    """Whether a compiled ``flex_attention`` runs here (a small trial call). Its backward has no CPU
    kernel in torch 2.13 (NotImplementedError); that is not tried, because a frame that fails to
    compile is skipped by dynamo from then on, which would leave the forward peer running eagerly
    (the dense math fallback, a hundred times slower)."""
    if backward and torch.device(device).type == "cpu":
        return False
    try:
        from torch.nn.attention.flex_attention import create_block_mask
        q = torch.randn(1, 1, 256, 16, device=device, requires_grad=backward)
        mask = create_block_mask(lambda b, h, i, j: j <= i, 1, 1, 256, 256, device=device)
        out = _compiled_flex()(q, q, q, block_mask=mask)
        if backward:
            out.sum().backward()
        return True
    except Exception:  # noqa: BLE001 - any failure to compile or run means "no flex peer here"
        return False


def _window_case(length: int, window: int, dtype: torch.dtype, device: str, backward: bool, peer_kind: str) -> Case:
    @functools.cache
    def inputs():
        q, k, v = _qkv(length, dtype, device, requires_grad=backward)
        if peer_kind == "flex":
            from torch.nn.attention.flex_attention import create_block_mask
            mask = create_block_mask(lambda b, h, i, j: (j <= i) & (i - j < window), 1, 1, length, length,
                                     device=device)
        else:
            mask = window_mask(length, window, device)
        return q, k, v, mask

    def run(fn):
        q, k, v, _ = inputs()
        if not backward:
            with torch.no_grad():
                return fn()
        out = fn()
        return torch.autograd.grad(out.sum(), (q, k, v))

    def ours():
        q, k, v, _ = inputs()
        return run(lambda: attention(q, k, v, window=window))

    def peer():
        q, k, v, mask = inputs()
        if peer_kind == "flex":
            return run(lambda: _compiled_flex()(q, k, v, block_mask=mask))
        return run(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    ours.inputs = peer.inputs = inputs
    pass_name = "fwd+bwd" if backward else "fwd"
    visible = sum(min(i + 1, window) for i in range(length))
    name = f"window S={length} w={window} {_HEADS}x{_DIM} {_dtype_name(dtype)} {pass_name}"
    return Case(kernel="attention", case=name,
                peer="flex_attention (compiled block mask)" if peer_kind == "flex" else "SDPA + dense bool mask",
                ours_fn=ours, peer_fn=peer, bytes_moved=None, device=device,
                flops=(2 if not backward else 7) * 2 * _HEADS * _DIM * visible)


def _causal_case(length: int, dtype: torch.dtype, device: str, backward: bool) -> Case:
    @functools.cache
    def inputs():
        return _qkv(length, dtype, device, requires_grad=backward, batch=_TRAINING_BATCH)

    def run(fn):
        q, k, v = inputs()
        if not backward:
            with torch.no_grad():
                return fn(q, k, v)
        return torch.autograd.grad(fn(q, k, v).sum(), (q, k, v))

    def ours():
        return run(lambda q, k, v: attention(q, k, v))

    def peer():
        return run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))

    ours.inputs = peer.inputs = inputs
    pass_name = "fwd+bwd" if backward else "fwd"
    name = f"causal S={length} batch {_TRAINING_BATCH} {_HEADS}x{_DIM} {_dtype_name(dtype)} {pass_name}"
    return Case(kernel="attention", case=name, peer="SDPA is_causal=True (flash)", ours_fn=ours, peer_fn=peer,
                bytes_moved=None, device=device,
                flops=_TRAINING_BATCH * (2 if not backward else 7) * 2 * _HEADS * _DIM * length * (length + 1) // 2)


_MEASURE = """
import gc, sys
from lmkernels.bench import attention as a
case = a.cases({quick}, "cpu")[{index}]
fn = case.ours_fn if sys.argv[1] == "ours" else case.peer_fn
fn.inputs()  # inputs (and the peer's mask) are held by the caller, not counted
gc.collect()
def status(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak resident size (VmHWM) to the current one
before = status("VmRSS:")
fn()
print(status("VmHWM:") - before)
"""


def _peak_rss_mb(case_index: int, side: str, quick: bool) -> float:
    """Peak resident memory one call of ``side`` adds above its inputs, in MiB, in a fresh process."""
    code = _MEASURE.format(quick=quick, index=case_index)
    result = subprocess.run([sys.executable, "-c", code, side], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]) / 1024


def peak_memory_report(quick: bool) -> list[tuple[str, str, float, float]]:
    """(case, peer, ours MiB, peer MiB) for every CPU case (Linux: reads /proc/self/status)."""
    return [(case.case, case.peer, _peak_rss_mb(index, "ours", quick), _peak_rss_mb(index, "peer", quick))
            for index, case in enumerate(cases(quick, "cpu"))]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="peak memory of the attention cases on the CPU")
    parser.add_argument("--memory", action="store_true", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print("peak resident memory a call adds above its inputs (the peers' dense masks are inputs: S x S elements)")
    for name, peer, ours_mb, peer_mb in peak_memory_report(args.quick):
        print(f"{name:<42} ours {ours_mb:8.1f} MiB   {peer:<38} {peer_mb:8.1f} MiB")
