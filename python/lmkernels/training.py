"""What the reference training scripts share: the optimiser with its schedule, and the progress line."""

from __future__ import annotations

import math
import sys
import time

import torch


def warmup_cosine(step: int, warmup: int, steps: int, floor: float = 0.1) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def adamw_warmup_cosine(model: torch.nn.Module, learning_rate: float, warmup: int, steps: int):
    """AdamW (betas 0.9 / 0.95, weight decay 0.1) and its :func:`warmup_cosine` schedule, stepped per step."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.1)
    return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: warmup_cosine(step, warmup, steps))


def show_progress(label: str, step: int, steps: int, losses: list[float], start: float) -> None:
    """Rewrite one terminal line: a bar, the step, the mean of the last ten losses, the time so far."""
    done = int(30 * step / steps)
    recent = losses[-10:]
    sys.stdout.write(f"\r  {label}[{'#' * done}{'.' * (30 - done)}] step {step}/{steps}  "
                     f"loss {sum(recent) / len(recent):.3f}  {time.perf_counter() - start:.0f}s"
                     + ("\n" if step == steps else ""))
    sys.stdout.flush()
