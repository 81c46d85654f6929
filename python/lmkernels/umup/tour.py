"""The u-muP stop of ``lmk tour``: unit scale at initialisation, then the same byte-level model trained in
fp32 and with its hidden linears in FP8 (no scale factors), side by side."""

from __future__ import annotations

import time

import torch

from lmkernels import data
from lmkernels.umup.modules import Linear, TransformerDecoder
from lmkernels.umup.sweep import SweepSettings, build, byte_stream, train, windows


def run(section) -> None:
    section("u-muP: unit scale at initialisation, and FP8 training without scale factors")
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
    settings = SweepSettings(steps=50, seq_len=64, batch_size=16)
    train_stream = byte_stream(data.text("train"))
    heldout = windows(byte_stream(data.text("heldout")), 64, 64, torch.Generator().manual_seed(2))
    for scheme in ("off", "partial"):
        start = time.perf_counter()
        loss, curve = train(build("umup", 64, settings, fp8=scheme), 1.0, train_stream, heldout, settings)
        label = "fp32" if scheme == "off" else "FP8 (E4M3 forward, E5M2 gradients; attention-out and FFN-down bf16)"
        print(f"  {label}: training loss {curve[0]:.3f} -> {curve[-1]:.3f}, held-out {loss:.3f} "
              f"after {settings.steps} steps at lr 1 ({time.perf_counter() - start:.1f} s)")
    print("  (the learning rate transfers across widths: lmk umup sweep shows it against the standard parametrisation)")
