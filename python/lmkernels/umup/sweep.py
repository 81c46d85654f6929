"""Learning-rate sweeps across widths, standard parametrisation against u-muP (the paper's central claim).

u-muP's claim: with unit-scaled ops, u-muP's learning-rate rules and its residual rule, the best
global learning rate stays put as the width grows, while under the standard parametrisation (SP)
it moves (roughly as 1 / width for Adam). And the unit-scaled model trains in FP8 with no scale
factors, its loss tracking the high-precision one.

Both models are byte-level decoders (V = 256) trained with AdamW, betas (0.9, 0.95), on the same
random windows of one byte stream, with a linear warmup over the first tenth of the steps and a
cosine decay to a tenth; the score is the loss on fixed held-out windows after training.

    SP     ``lmkernels.umup.standard.StandardDecoder`` (the same architecture in plain PyTorch with its
           default initialisation), ``torch.optim.AdamW(lr)``, weight decay 0.1
    u-muP  ``lmkernels.umup.TransformerDecoder`` (N(0, 1) weights, hyperparameters 1),
           ``lmkernels.umup.AdamW(lr)`` with independent weight decay 2^-13 per step
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmkernels.umup.modules import TransformerDecoder
from lmkernels.umup.optim import AdamW
from lmkernels.umup.standard import StandardDecoder

VOCAB = 256
PARAMETRISATIONS = ("sp", "umup")


@dataclass(frozen=True)
class SweepSettings:
    """What to sweep and how long to train each point."""

    widths: tuple[int, ...] = (64, 128, 256)
    sp_log2_lrs: tuple[int, ...] = (-12, -10, -8, -6, -4)
    umup_log2_lrs: tuple[int, ...] = (-4, -2, 0, 2, 4)
    layers: int = 2
    head_dim: int = 16
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 120
    heldout_batches: int = 4
    fp8_scheme: str = "partial"
    seed: int = 0


@dataclass
class SweepResult:
    """Held-out losses ``losses[parametrisation][width][log2_lr]`` and the FP8 comparison run."""

    settings: SweepSettings
    losses: dict[str, dict[int, dict[int, float]]] = field(default_factory=dict)
    fp8_width: int | None = None
    fp8_log2_lr: int | None = None
    fp8_curves: dict[str, list[float]] = field(default_factory=dict)  # "high precision" / "fp8": training losses

    def best_log2_lr(self, parametrisation: str, width: int) -> int | None:
        """The swept log2 learning rate with the lowest finite held-out loss (None if every run diverged)."""
        finite = {lr: loss for lr, loss in self.losses[parametrisation][width].items() if math.isfinite(loss)}
        return min(finite, key=finite.get) if finite else None


def byte_stream(text: str) -> Tensor:
    """``text`` as an int64 stream of UTF-8 bytes."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def windows(stream: Tensor, count: int, seq_len: int, generator: torch.Generator) -> Tensor:
    """``count`` random windows [count, seq_len + 1] of ``stream`` (seq_len inputs and the next-byte
    targets), each of the ``stream.numel() - seq_len`` possible starts equally likely."""
    if stream.numel() < seq_len + 1:
        raise ValueError(f"text: expected at least seq_len + 1 = {seq_len + 1} bytes, got {stream.numel()}")
    starts = torch.randint(0, stream.numel() - seq_len, (count,), generator=generator)
    return stream[starts[:, None] + torch.arange(seq_len + 1)]


def build(parametrisation: str, width: int, settings: SweepSettings, fp8: str = "off") -> torch.nn.Module:
    """The model of ``parametrisation`` at ``width`` (heads of ``settings.head_dim``), seeded."""
    torch.manual_seed(settings.seed)
    heads = max(width // settings.head_dim, 1)
    if parametrisation == "sp":
        return StandardDecoder(width, VOCAB, settings.layers, heads)
    return TransformerDecoder(width, VOCAB, settings.layers, heads, fp8=fp8)


def _optimiser(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    if isinstance(model, TransformerDecoder):
        return AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=2**-13)
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)


def train(model: torch.nn.Module, lr: float, train_stream: Tensor, heldout: Tensor,
          settings: SweepSettings) -> tuple[float, list[float]]:
    """Train ``model`` for ``settings.steps`` steps at peak learning rate ``lr``.

    Returns the mean loss on the ``heldout`` windows (inf if training diverged) and the training losses.
    """
    optimiser = _optimiser(model, lr)
    warmup = max(settings.steps // 10, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(settings.steps - warmup, 1)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    generator = torch.Generator().manual_seed(settings.seed + 1)  # the same batches for every run
    curve = []
    model.train()
    for _ in range(settings.steps):
        loss = model.loss(windows(train_stream, settings.batch_size, settings.seq_len, generator))
        if not torch.isfinite(loss):
            return math.inf, curve + [math.inf]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        curve.append(loss.item())
    model.eval()
    with torch.no_grad():
        heldout_loss = torch.stack([model.loss(batch) for batch in heldout.split(settings.batch_size)]).mean()
    return (heldout_loss.item() if torch.isfinite(heldout_loss) else math.inf), curve


def sweep(train_text: str, heldout_text: str, settings: SweepSettings | None = None, progress=print) -> SweepResult:
    """Every (parametrisation, width, learning rate) of ``settings``, then the FP8 run.

    The FP8 run trains u-muP at the widest width and its best learning rate with
    ``settings.fp8_scheme`` and records both training curves, the high-precision one from the same
    seed and batches.
    """
    s = settings or SweepSettings()
    train_stream, heldout_stream = byte_stream(train_text), byte_stream(heldout_text)
    heldout = windows(heldout_stream, s.heldout_batches * s.batch_size, s.seq_len,
                      torch.Generator().manual_seed(s.seed + 2))
    result = SweepResult(s)
    curves = {}
    for parametrisation, grid in (("sp", s.sp_log2_lrs), ("umup", s.umup_log2_lrs)):
        result.losses[parametrisation] = {}
        for width in s.widths:
            result.losses[parametrisation][width] = {}
            for log2_lr in grid:
                loss, curve = train(build(parametrisation, width, s), 2.0**log2_lr, train_stream, heldout, s)
                result.losses[parametrisation][width][log2_lr] = loss
                curves[(parametrisation, width, log2_lr)] = curve
                progress(f"  {parametrisation:<4} width {width:>4}  lr 2^{log2_lr:<3}  held-out loss {loss:.4f}")
    width = max(s.widths)
    best = result.best_log2_lr("umup", width)
    if best is not None:
        _, fp8_curve = train(build("umup", width, s, fp8=s.fp8_scheme), 2.0**best, train_stream, heldout, s)
        result.fp8_width, result.fp8_log2_lr = width, best
        result.fp8_curves = {"high precision": curves[("umup", width, best)], "fp8": fp8_curve}
    return result
