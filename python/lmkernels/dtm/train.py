"""A small byte-level ``CausalLM`` trained on the embedded corpus, the subject of ``lmk dtm``.

Documents (paragraphs of ``lmkernels.data``, each joined to one line) are concatenated as UTF-8
bytes separated by newlines and cut into random windows of ``seq_len + 1`` bytes; the loss is the
next-byte cross-entropy. AdamW with a linear warmup and a cosine decay to a tenth.
``train_steps`` is that loop for a model that exists already (the recovery training of
``lmkernels.dtm.recovery`` runs it on a pruned model); given a ``teacher`` it distils instead: the
loss is KL(teacher || model) of the next-token distributions, averaged over the window's positions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels.dtm.models import device_of
from lmkernels.nn import ByteTokenizer, CausalLM, DecoderConfig
from lmkernels.training import adamw_warmup_cosine, show_progress


@dataclass
class TrainSettings:
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 300
    learning_rate: float = 3e-3
    warmup: int = 30
    seed: int = 0


@dataclass
class TrainResult:
    model: CausalLM
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def byte_stream(documents: list[str]) -> Tensor:
    """The documents as one int64 stream of UTF-8 bytes, a newline after each."""
    tokenizer = ByteTokenizer()
    return torch.cat([tokenizer.encode(document + "\n") for document in documents])


def train(stream: Tensor, settings: TrainSettings | None = None, progress: bool = True) -> TrainResult:
    """Train a ``CausalLM`` (V = 256) on random windows of the byte ``stream``."""
    s = settings or TrainSettings()
    check_stream(stream, s.seq_len)
    torch.manual_seed(s.seed)
    model = CausalLM(ByteTokenizer.vocab_size, DecoderConfig(dim=s.dim, num_layers=s.num_layers,
                                                             num_heads=s.num_heads))
    result = TrainResult(model)
    start = time.perf_counter()
    result.losses = train_steps(model, stream, s.steps, s.seq_len, s.batch_size, s.learning_rate, s.warmup,
                                torch.Generator().manual_seed(s.seed), progress=progress)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def check_stream(stream: Tensor, seq_len: int) -> None:
    """Raise unless ``stream`` is a 1-D integer tensor longer than one window of ``seq_len + 1`` tokens."""
    if not isinstance(stream, Tensor) or stream.dim() != 1 or stream.dtype.is_floating_point:
        raise TypeError(f"stream: expected a 1-D integer tensor of token ids, got "
                        f"{stream.dtype if isinstance(stream, Tensor) else type(stream).__name__}")
    if stream.numel() <= seq_len + 1:
        raise ValueError(f"stream: expected more than seq_len + 1 = {seq_len + 1} tokens, got {stream.numel()}")


def train_steps(model: CausalLM, stream: Tensor, steps: int, seq_len: int, batch_size: int, learning_rate: float,
                warmup: int, generator: torch.Generator, after_step: Callable[[], None] | None = None,
                progress: bool = False, label: str = "", teacher: CausalLM | None = None) -> list[float]:
    """``steps`` AdamW steps (warmup, cosine decay) of next-token cross-entropy on random windows of
    ``stream`` drawn with ``generator`` (with a ``teacher``: KL(teacher || model) on those windows);
    ``after_step()`` runs after every optimiser step. The losses."""
    optimiser, schedule = adamw_warmup_cosine(model, learning_rate, warmup, steps)
    offsets = torch.arange(seq_len + 1)
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(stream.numel() - seq_len - 1, (batch_size, 1), generator=generator)
        windows = stream[starts + offsets].to(device_of(model))
        logits = model(windows[:, :-1])
        if teacher is None:
            loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        else:
            with torch.no_grad():
                target = F.log_softmax(teacher(windows[:, :-1].to(device_of(teacher))).flatten(0, 1).float().to(
                    logits.device), dim=-1)
            loss = F.kl_div(F.log_softmax(logits.flatten(0, 1).float(), dim=-1), target, reduction="batchmean",
                            log_target=True)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
        if progress:
            show_progress(label, step + 1, steps, losses, start)
    return losses


@torch.no_grad()
def heldout_loss(model: CausalLM, stream: Tensor, seq_len: int = 128, max_windows: int = 64) -> float:
    """Mean next-byte cross-entropy (nats) over the first ``max_windows`` disjoint windows of ``stream``."""
    windows = min((stream.numel() - 1) // seq_len, max_windows)
    if windows < 1:
        raise ValueError(f"stream: expected at least {seq_len + 1} bytes, got {stream.numel()}")
    inputs = stream[:windows * seq_len].view(windows, seq_len)
    targets = stream[1:windows * seq_len + 1].view(windows, seq_len)
    return float(F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()))
