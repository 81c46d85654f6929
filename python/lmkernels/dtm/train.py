"""A small byte-level ``CausalLM`` trained on the embedded corpus, the subject of ``lmk dtm``.

Documents (paragraphs of ``lmkernels.data``, each joined to one line) are concatenated as UTF-8
bytes separated by newlines and cut into random windows of ``seq_len + 1`` bytes; the loss is the
next-byte cross-entropy. AdamW with a linear warmup and a cosine decay to a tenth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

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
    if stream.numel() <= s.seq_len + 1:
        raise ValueError(f"stream: expected more than seq_len + 1 = {s.seq_len + 1} bytes, got {stream.numel()}")
    torch.manual_seed(s.seed)
    model = CausalLM(ByteTokenizer.vocab_size, DecoderConfig(dim=s.dim, num_layers=s.num_layers,
                                                             num_heads=s.num_heads))
    optimiser, schedule = adamw_warmup_cosine(model, s.learning_rate, s.warmup, s.steps)
    generator = torch.Generator().manual_seed(s.seed)
    offsets = torch.arange(s.seq_len + 1)
    result = TrainResult(model)
    start = time.perf_counter()
    for step in range(s.steps):
        starts = torch.randint(stream.numel() - s.seq_len - 1, (s.batch_size, 1), generator=generator)
        windows = stream[starts + offsets]
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        result.losses.append(loss.item())
        if progress:
            show_progress("", step + 1, s.steps, result.losses, start)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


@torch.no_grad()
def heldout_loss(model: CausalLM, stream: Tensor, seq_len: int = 128, max_windows: int = 64) -> float:
    """Mean next-byte cross-entropy (nats) over the first ``max_windows`` disjoint windows of ``stream``."""
    windows = min((stream.numel() - 1) // seq_len, max_windows)
    if windows < 1:
        raise ValueError(f"stream: expected at least {seq_len + 1} bytes, got {stream.numel()}")
    inputs = stream[:windows * seq_len].view(windows, seq_len)
    targets = stream[1:windows * seq_len + 1].view(windows, seq_len)
    return float(F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()))
