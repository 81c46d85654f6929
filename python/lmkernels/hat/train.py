"""``lmk hat train``: train a small HAT on a text file (or the embedded corpus), then measure its
robustness to character-level noise against a BPE model of the same size, as the paper claims.

Documents (paragraphs separated by blank lines) end with ``<|eot_id|>`` (a one-byte word) and are
split into words once; training windows are runs of whole words of at most ``seq_bytes`` bytes,
packed into one :class:`HATBatch`. The BPE peer is ``lmkernels.nn.CausalLM`` over a byte-level BPE
vocabulary trained on the same text with ``tokenizers``, with the HAT width and the layer count
that brings its parameter count closest to HAT's, trained for as many steps on windows of about
the same bytes.

Robustness: the held-out text with character noise (adjacent swaps, drops and case flips, each
character hit with probability 0 / 5 / 10 %), scored as nats per byte of that text for both models
(total negative log-likelihood / bytes, so byte and token models compare).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmkernels import data
from lmkernels._checks import check_int
from lmkernels.hat.config import HATConfig
from lmkernels.hat.generate import generate
from lmkernels.hat.model import HATBatch, HATModel, hat_loss
from lmkernels.hat.splitter import HATRuleSplitter
from lmkernels.nn import CausalLM, DecoderConfig
from lmkernels.training import adamw_warmup_cosine, show_progress

END_OF_TEXT = "<|eot_id|>"


@dataclass
class TrainSettings:
    width: int = 128
    layers: int = 1  # per stack (encoder, backbone, decoder)
    window: int = 255
    seq_bytes: int = 512
    batch_size: int = 8
    steps: int = 300
    learning_rate: float = 3e-3
    warmup: int = 30
    seed: int = 0
    bpe_vocab: int | None = 2048
    noise_levels: tuple[float, ...] = (0.0, 0.05, 0.10)
    eval_windows: int = 32

    def __post_init__(self):
        for name, minimum in (("width", 1), ("layers", 1), ("window", 0), ("seq_bytes", 2), ("batch_size", 1),
                              ("steps", 1), ("warmup", 0), ("eval_windows", 1)):
            check_int(getattr(self, name), name, minimum)


@dataclass
class TrainResult:
    model: HATModel
    losses: list[float] = field(default_factory=list)
    bytes_per_word: float = 0.0
    seconds: float = 0.0
    hat_nats_per_byte: dict[float, float] = field(default_factory=dict)
    bpe_nats_per_byte: dict[float, float] = field(default_factory=dict)
    bpe_parameters: int = 0
    bpe_vocab: int = 0


def add_noise(text: str, level: float, seed: int = 0) -> str:
    """Each character, with probability ``level``, is swapped with the next, dropped, or case-flipped."""
    rng = random.Random(seed)
    chars, out, i = list(text), [], 0
    while i < len(chars):
        if rng.random() >= level:
            out.append(chars[i])
        else:
            kind = rng.randrange(3)
            if kind == 0 and i + 1 < len(chars):
                out += [chars[i + 1], chars[i]]
                i += 1
            elif kind == 2:
                out.append(chars[i].swapcase())
        i += 1
    return "".join(out)


def word_windows(words: list[bytes], seq_bytes: int) -> list[list[bytes]]:
    """Consecutive runs of whole words of at most ``seq_bytes`` bytes (at least two words each)."""
    windows, current, size = [], [], 0
    for word in words:
        if current and size + len(word) > seq_bytes:
            if len(current) > 1:
                windows.append(current)
            current, size = [], 0
        current.append(word)
        size += len(word)
    if len(current) > 1:
        windows.append(current)
    return windows


def split_documents(text: str, splitter: HATRuleSplitter) -> list[bytes]:
    return [bytes(word) for document in data.paragraphs(text) for word in splitter.encode(document + END_OF_TEXT)]


def hat_nats_per_byte(model: HATModel, windows: list[list[bytes]]) -> float:
    if not windows:
        raise ValueError("windows: expected at least one window to score")
    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            batch = HATBatch.from_words([window])
            logits = model(batch)
            total += float(F.cross_entropy(logits[:-1].float(), batch.bytes[1:], reduction="sum"))
            count += batch.bytes.shape[0] - 1
    return total / count


def train_hat(text: str, s: TrainSettings, log=print) -> TrainResult:
    torch.manual_seed(s.seed)
    config = HATConfig.tiny(width=s.width, layers=s.layers, window=s.window)
    splitter = HATRuleSplitter(config.special_token_dict, config.max_word_size)
    words = split_documents(text, splitter)
    if len(words) < 2:
        raise ValueError("text: no training window (the text has fewer than two words)")
    windows = word_windows(words, s.seq_bytes)
    if not windows:
        raise ValueError(f"seq_bytes: no training window (no two consecutive words fit in {s.seq_bytes} bytes)")
    model = HATModel(config)
    result = TrainResult(model, bytes_per_word=sum(len(w) for w in words) / len(words))
    optimiser, schedule = adamw_warmup_cosine(model, s.learning_rate, s.warmup, s.steps)
    generator = torch.Generator().manual_seed(s.seed)
    start = time.perf_counter()
    for step in range(s.steps):
        picks = torch.randint(len(windows), (s.batch_size,), generator=generator).tolist()
        batch = HATBatch.from_words([windows[i] for i in picks])
        loss = hat_loss(model(batch), batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        result.losses.append(loss.item())
        if log is print:
            show_progress("HAT ", step + 1, s.steps, result.losses, start)
    result.seconds = time.perf_counter() - start
    return result


def _bpe(text: str, vocab_size: int):
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as error:
        raise ImportError("the BPE comparison needs the tokenizers package: pip install 'lmkernels[hf]'") from error
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[END_OF_TEXT], show_progress=False)
    bpe.train_from_iterator(data.paragraphs(text), trainer=trainer)
    return bpe


def _token_windows(bpe, text: str, length: int) -> list[tuple[torch.Tensor, int]]:
    """Windows of ``length`` + 1 tokens and the bytes of text their last ``length`` tokens cover
    (``<|eot_id|>`` counted as the one byte it is for HAT)."""
    joined = END_OF_TEXT.join(data.paragraphs(text)) + END_OF_TEXT
    encoding = bpe.encode(joined)
    ids, offsets = encoding.ids, encoding.offsets
    windows = []
    for start in range(0, len(ids) - length - 1, length):
        span = joined[offsets[start + 1][0]:offsets[start + length][1]]
        windows.append((torch.tensor(ids[start:start + length + 1]),
                        len(span.encode()) - (len(END_OF_TEXT) - 1) * span.count(END_OF_TEXT)))
    return windows


def _same_size_causal_lm(vocab: int, width: int, parameters: int) -> CausalLM:
    """The ``CausalLM`` of width ``width`` over ``vocab`` tokens whose layer count brings its parameter
    count closest to ``parameters`` (the HAT model's)."""
    def build(layers: int) -> CausalLM:
        return CausalLM(vocab, DecoderConfig(dim=width, num_layers=layers, num_heads=max(1, width // 32)))

    def size(layers: int) -> int:
        return sum(p.numel() for p in build(layers).parameters())

    per_layer = size(2) - size(1)
    layers = max(1, round((parameters - size(1)) / per_layer) + 1)
    return build(layers)


def train_bpe(text: str, heldout: str, s: TrainSettings, hat_parameters: int, bytes_per_window: int,
              log=print) -> tuple[dict[float, float], int, int]:
    """Train the same-size BPE model; its nats per byte on the held-out text at each noise level."""
    torch.manual_seed(s.seed)
    bpe = _bpe(text, s.bpe_vocab)
    probe = bpe.encode(text[:20000])
    bytes_per_token = len(text[:20000].encode()) / max(len(probe.ids), 1)
    length = max(8, int(bytes_per_window / bytes_per_token))
    model = _same_size_causal_lm(bpe.get_vocab_size(), s.width, hat_parameters)
    windows = [w for w, _ in _token_windows(bpe, text, length)]
    if not windows:
        raise ValueError("text: too short for a BPE training window")
    optimiser, schedule = adamw_warmup_cosine(model, s.learning_rate, s.warmup, s.steps)
    generator = torch.Generator().manual_seed(s.seed)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(s.steps):
        picks = torch.randint(len(windows), (s.batch_size,), generator=generator).tolist()
        tokens = torch.stack([windows[i] for i in picks])
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if log is print:
            show_progress("BPE ", step + 1, s.steps, losses, start)
    scores = {}
    with torch.no_grad():
        for level in s.noise_levels:
            total, count = 0.0, 0
            for tokens, covered in _token_windows(bpe, add_noise(heldout, level, s.seed), length)[:s.eval_windows]:
                logits = model(tokens[None, :-1])[0]
                total += float(F.cross_entropy(logits, tokens[1:], reduction="sum"))
                count += covered
            if count:
                scores[level] = total / count
    parameters = sum(p.numel() for p in model.parameters())
    return scores, parameters, bpe.get_vocab_size()


def run(text: str, heldout: str, settings: TrainSettings | None = None, prompts: tuple[str, ...] = (),
        log=print) -> TrainResult:
    """Train HAT (and the BPE peer unless ``settings.bpe_vocab`` is None) and print the report."""
    s = settings or TrainSettings()
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}]: expected a str, got {type(prompt).__name__}")
        if not prompt:
            raise ValueError(f"prompts[{i}]: expected a non-empty prompt")
    result = train_hat(text, s, log)
    model = result.model.eval()
    hat_parameters = sum(p.numel() for p in model.parameters())
    splitter = HATRuleSplitter(model.config.special_token_dict, model.config.max_word_size)
    for level in s.noise_levels:
        noisy = add_noise(heldout, level, s.seed)
        windows = word_windows(split_documents(noisy, splitter), s.seq_bytes)[:s.eval_windows]
        if windows:
            result.hat_nats_per_byte[level] = hat_nats_per_byte(model, windows)
    log(f"HAT: {hat_parameters:,} parameters, {result.bytes_per_word:.2f} bytes per word "
        f"(the backbone runs once per word), {s.steps} steps in {result.seconds:.0f} s, "
        f"training loss {result.losses[0]:.3f} -> {sum(result.losses[-10:]) / len(result.losses[-10:]):.3f}")
    if s.bpe_vocab is not None and heldout:
        result.bpe_nats_per_byte, result.bpe_parameters, result.bpe_vocab = train_bpe(
            text, heldout, s, hat_parameters, s.seq_bytes, log)
        log(f"BPE: {result.bpe_parameters:,} parameters (vocabulary {result.bpe_vocab:,} trained on the same text)")
    if result.hat_nats_per_byte or result.bpe_nats_per_byte:
        log("held-out loss, nats per byte (character noise: swaps, drops, case flips)")
        log("  noise   HAT      BPE")
        for level in s.noise_levels:
            hat, bpe = result.hat_nats_per_byte.get(level), result.bpe_nats_per_byte.get(level)
            log(f"  {level:4.0%}   {_score(hat)}    {_score(bpe)}")
    else:
        log("held-out loss: not measured, the held-out text has no window of two words "
            "(a text of one paragraph holds nothing out)")
    for prompt in prompts:
        log(f"sample: {prompt!r} -> {generate(model, prompt, 80)!r}")
    return result


def _score(nats_per_byte: float | None) -> str:
    return "-" if nats_per_byte is None else f"{nats_per_byte:.3f}"
