"""The u-muP stop of ``lmk tour``: unit scale at initialisation, then a short learning-rate sweep at two
widths (standard parametrisation against u-muP) whose widest u-muP run is repeated in FP8."""

from __future__ import annotations

import textwrap
import time

import torch

from lmkernels import data
from lmkernels.umup.cli import report
from lmkernels.umup.modules import Linear, TransformerDecoder
from lmkernels.umup.sweep import SweepSettings, byte_stream, sweep, windows

# Small enough for the tour (about 10 s on two cores), large enough that SP's optimum visibly moves
# between the widths while u-muP's stays; `lmk umup sweep` runs three widths, two layers, 120 steps.
SHORT_SWEEP = SweepSettings(widths=(32, 128), sp_log2_lrs=(-10, -8, -6, -4), umup_log2_lrs=(-2, 0, 2),
                            layers=1, steps=40, heldout_batches=2)


def run(section) -> None:
    section("u-muP: unit scale, learning rates that transfer across widths, FP8 without scale factors")
    torch.manual_seed(0)
    model = TransformerDecoder(64, 256, 2, 4)
    ids = windows(byte_stream(data.text("train")), 16, 64, torch.Generator().manual_seed(0))
    scales = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: scales.__setitem__(name, out.std().item()))
             for name, m in model.named_modules() if type(m) is Linear]
    model.loss(ids).backward()
    for hook in hooks:
        hook.remove()
    grads = [p.grad.std().item() for name, p in model.named_parameters() if name.startswith("layers.")]
    print(f"  a unit-scaled decoder (width 64, 2 layers), N(0, 1) weights: the {len(scales)} hidden linear outputs "
          f"have std {min(scales.values()):.2f} to {max(scales.values()):.2f}, their weight gradients "
          f"{min(grads):.2f} to {max(grads):.2f}")
    s = SHORT_SWEEP
    runs = len(s.widths) * (len(s.sp_log2_lrs) + len(s.umup_log2_lrs)) + 1
    print(f"  a learning-rate sweep: {runs} runs of {s.steps} steps ({s.batch_size} x {s.seq_len} bytes, "
          f"{s.layers} layer), AdamW, the last one the widest u-muP optimum again with its hidden linears in FP8")
    start = time.perf_counter()
    result = sweep(data.text("train"), data.text("heldout"), s, progress=lambda _line: None)
    print(textwrap.indent(report(result).strip("\n"), "  "))
    print(f"  ({time.perf_counter() - start:.1f} s; lmk umup sweep runs three widths, two layers, 120 steps)")
