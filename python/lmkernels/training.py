"""What the reference training scripts share: the learning-rate schedule and the progress line."""

from __future__ import annotations

import math
import sys
import time


def warmup_cosine(step: int, warmup: int, steps: int, floor: float = 0.1) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def show_progress(label: str, step: int, steps: int, losses: list[float], start: float) -> None:
    """Rewrite one terminal line: a bar, the step, the mean of the last ten losses, the time so far."""
    done = int(30 * step / steps)
    recent = losses[-10:]
    sys.stdout.write(f"\r  {label}[{'#' * done}{'.' * (30 - done)}] step {step}/{steps}  "
                     f"loss {sum(recent) / len(recent):.3f}  {time.perf_counter() - start:.0f}s"
                     + ("\n" if step == steps else ""))
    sys.stdout.flush()
