"""``lmk tfree train``: train a small T-FREE LM on a text file (or the embedded corpus) on the CPU.

Documents (paragraphs separated by blank lines) end with ``<|endoftext|>`` and are packed into
sequences of ``seq_len`` word positions with attention and positions reset at document ends. The
run reports the embedding + head parameters against a BPE model of the same width whose vocabulary
is trained on the same text with the ``tokenizers`` package, the training and held-out loss curve,
and greedy samples decoded against a dictionary of the text's most frequent words.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmkernels import data
from lmkernels._checks import check_int
from lmkernels.nn import DecoderConfig
from lmkernels.tfree.decoding import Decoder, build_dictionary
from lmkernels.tfree.encoding import Encoding, TrainingBatch, batch_from_stream
from lmkernels.tfree.generate import generate
from lmkernels.tfree.model import TFreeConfig, TFreeLM
from lmkernels.tfree.tokenizer import Tokenizer
from lmkernels.training import adamw_warmup_cosine, show_progress


@dataclass
class TrainSettings:
    vocab_size: int = 8000
    m: int = 10
    k_lowercase: int = 2
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 300
    learning_rate: float = 3e-3
    warmup: int = 30
    pos_weight: float = 100.0
    loss_scale: float = 1000.0
    seed: int = 0
    dictionary_size: int = 20000


@dataclass
class TrainResult:
    model: TFreeLM
    tokenizer: Tokenizer
    decoder: Decoder
    losses: list[float] = field(default_factory=list)
    heldout_losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Stream:
    """Documents + ``<|endoftext|>`` encoded as one word stream, cut into windows of ``seq_len`` positions."""

    encoding: Encoding
    starts: Tensor
    seq_len: int

    @classmethod
    def of(cls, tokenizer: Tokenizer, documents: list[str], seq_len: int) -> "Stream":
        encoding = tokenizer.encode([d + "<|endoftext|>" for d in documents])
        return cls(encoding, torch.arange(0, max(encoding.num_words - 1, 0), seq_len), seq_len)

    def __len__(self) -> int:
        return self.starts.numel()

    def batch(self, windows: Tensor) -> TrainingBatch:
        starts = self.starts[windows]
        stops = torch.full_like(starts, self.encoding.num_words)
        weights = torch.ones(self.encoding.num_words)
        return batch_from_stream(self.encoding, starts, stops, self.seq_len, weights)


def _evaluate(model: TFreeLM, batches: list[TrainingBatch]) -> float:
    with torch.no_grad():
        return sum(float(model.loss(b)) for b in batches) / max(len(batches), 1)


def train(text: str, heldout: str = "", settings: TrainSettings | None = None, log=print) -> TrainResult:
    """Train on ``text``; evaluate on ``heldout`` every tenth of the run (when given)."""
    s = settings or TrainSettings()
    _check_settings(s)
    torch.manual_seed(s.seed)
    tokenizer = Tokenizer(s.vocab_size, s.m, s.k_lowercase)
    documents = data.paragraphs(text)
    stream = Stream.of(tokenizer, documents, s.seq_len)
    if len(stream) == 0:
        raise ValueError("text: no training sequence (the text has fewer than two words)")
    heldout_stream = Stream.of(tokenizer, data.paragraphs(heldout), s.seq_len)
    heldout_batches = [heldout_stream.batch(torch.arange(i, min(i + s.batch_size, len(heldout_stream), 64)))
                       for i in range(0, min(len(heldout_stream), 64), s.batch_size)]
    config = TFreeConfig(s.vocab_size, s.m, s.k_lowercase,
                         DecoderConfig(dim=s.dim, num_layers=s.num_layers, num_heads=s.num_heads),
                         pos_weight=s.pos_weight, loss_scale=s.loss_scale)
    model = TFreeLM(config)
    optimiser, schedule = adamw_warmup_cosine(model, s.learning_rate, s.warmup, s.steps)
    words = build_dictionary(tokenizer, documents, s.dictionary_size)
    result = TrainResult(model, tokenizer, Decoder(tokenizer, words))
    generator = torch.Generator().manual_seed(s.seed)
    start = time.perf_counter()
    for step in range(s.steps):
        loss = model.loss(stream.batch(torch.randint(len(stream), (s.batch_size,), generator=generator)))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        result.losses.append(loss.item())
        if heldout_batches and ((step + 1) % max(s.steps // 10, 1) == 0 or step + 1 == s.steps):
            result.heldout_losses.append((step + 1, _evaluate(model, heldout_batches)))
        if log is print:
            show_progress("", step + 1, s.steps, result.losses, start)
    result.seconds = time.perf_counter() - start
    return result


def _check_settings(s: TrainSettings) -> None:
    """Reject settings that would fail only late, or not at all: 0 steps trains nothing and leaves
    no loss curve to report. (The pattern table checks vocab_size, m and k_lowercase itself.)"""
    for name in ("dim", "num_layers", "num_heads", "seq_len", "batch_size", "steps", "dictionary_size", "warmup"):
        check_int(getattr(s, name), name, 0 if name == "warmup" else 1)
    for name in ("learning_rate", "pos_weight", "loss_scale"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
        if not 0 < value < math.inf:
            raise ValueError(f"{name}: expected a positive finite number, got {value}")


def bpe_vocabulary_size(text: str, vocab_size: int) -> int:
    """Size of a byte-level BPE vocabulary trained on ``text`` with the ``tokenizers`` package."""
    try:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers, trainers
    except ImportError as error:
        raise ImportError("the BPE comparison needs the tokenizers package: pip install 'lmkernels[hf]'") from error
    bpe = HFTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(data.paragraphs(text), trainer=trainer)
    return bpe.get_vocab_size()


def report(result: TrainResult, text: str, bpe_vocab: int | None, prompts: list[str], log=print) -> None:
    """Print the parameter comparison, the loss curve and samples."""
    counts = result.model.parameter_counts()
    dim = result.model.config.decoder.dim
    tfree = counts["embedding"] + counts["head"]
    log(f"T-FREE embedding + head: {tfree:,} parameters (v = {result.model.config.vocab_size}, width {dim})")
    if bpe_vocab is not None:
        size = bpe_vocabulary_size(text, bpe_vocab)
        bpe = 2 * size * dim
        share = f"{1 - tfree / bpe:.0%} fewer" if tfree <= bpe else f"{tfree / bpe - 1:.0%} more"
        log(f"BPE embedding + head:    {bpe:,} parameters (BPE vocabulary {size:,} trained on the same text, "
            f"width {dim}): T-FREE uses {share}")
    curve = result.losses
    marks = sorted({0, len(curve) // 4, len(curve) // 2, 3 * len(curve) // 4, len(curve) - 1})
    log("training loss: " + ", ".join(f"step {i + 1}: {curve[i]:.3f}" for i in marks))
    if result.heldout_losses:
        log("held-out loss: " + ", ".join(f"step {s}: {v:.3f}" for s, v in result.heldout_losses))
    log(f"trained {len(curve)} steps in {result.seconds:.1f} s")
    for prompt in prompts:
        sample = generate(result.model, result.tokenizer, result.decoder, prompt, max_words=16)
        log(f"  {prompt!r} -> {sample!r}")
