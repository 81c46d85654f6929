"""In-context associative recall: a task with known ground truth for checking explanations.

A prompt lists key/value pairs, then asks for one key; the target is that key's value:

    " a=3 f=9 x=0 m=7 c=2 q=4 | x"  ->  "0"

Tokens (vocabulary of 297): a key token per letter (26), a value token per (key, digit) (260), the
separator, and an answer token per digit (10). A pair is a key token and its value token; which digit
a key has lives only in the prompt, so the model must find the queried key's value token in context
and copy its digit. The value token names its key, which lets a small ``CausalLM`` learn the task in
seconds on a CPU (one attention match, no induction circuit to grow). A faithful explanation ranks the
queried pair's value (or key) token first. ``lmk explain`` and ``lmk tour`` use it as their subject.
Training sequences ask every key once, in random order, each query followed by its answer; the loss
is on the answers.
"""

from __future__ import annotations

import random
import string
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmkernels.atman.tokens import Tokens
from lmkernels.nn import CausalLM, DecoderConfig

KEYS = string.ascii_lowercase
SEPARATOR = len(KEYS) * 11
ANSWERS = SEPARATOR + 1
VOCAB_SIZE = ANSWERS + 10


def _key(k: int) -> int:
    return k


def _value(k: int, digit: int) -> int:
    return len(KEYS) + 10 * k + digit


@dataclass(frozen=True)
class Probe:
    prompt: Tokens
    target: Tokens
    key_position: int  # of the queried pair in the prompt (its value token follows)

    @property
    def value_position(self) -> int:
        return self.key_position + 1


def probe(generator: random.Random, pairs: int = 6, asked_in_target: bool = False) -> Probe:
    """A random recall prompt of ``pairs`` key/value pairs and its answer.

    ``asked_in_target``: the asked pair is the last one and the target starts there, so that the answer
    rests on target tokens: "a=3 f=9 x=0 m=7 c=2" -> " q=4 | q4" (the same token sequence as a probe
    asking its last pair; ``key_position`` then indexes prompt ⊕ target).
    """
    keys = generator.sample(range(len(KEYS)), pairs)
    digits = [generator.randrange(10) for _ in keys]
    asked = pairs - 1 if asked_in_target else generator.randrange(pairs)
    pieces = []
    for index, (k, digit) in enumerate(zip(keys, digits)):
        pieces += [(_key(k), " " * (index > 0) + KEYS[k]), (_value(k, digit), f"={digit}")]
    pieces += [(SEPARATOR, " |"), (_key(keys[asked]), " " + KEYS[keys[asked]])]
    answer = [(ANSWERS + digits[asked], str(digits[asked]))]
    split = 2 * asked if asked_in_target else len(pieces)
    return Probe(_tokens(pieces[:split]), _tokens(pieces[split:] + answer), 2 * asked)


def _tokens(pieces: list[tuple[int, str]]) -> Tokens:
    spans, start = [], 0
    for _, text in pieces:
        spans.append((start, start + len(text)))
        start += len(text)
    return Tokens(tuple(i for i, _ in pieces), "".join(text for _, text in pieces), tuple(spans),
                  (False,) * len(pieces))


@dataclass
class RecallSettings:
    pairs: int = 6
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 200
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = 0


def train_recall(settings: RecallSettings | None = None) -> tuple[CausalLM, float]:
    """A ``CausalLM`` trained on recall; returns it and the seconds taken."""
    s = settings or RecallSettings()
    torch.manual_seed(s.seed)
    generator = random.Random(s.seed)
    model = CausalLM(VOCAB_SIZE, DecoderConfig(dim=s.dim, num_layers=s.num_layers, num_heads=s.num_heads))
    optimiser = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=0.0)
    start = time.perf_counter()
    first_answer = 2 * s.pairs + 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread (no OpenMP hand-offs)
    try:
        _fit(model, optimiser, generator, s, first_answer)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, time.perf_counter() - start


def _fit(model, optimiser, generator, s: RecallSettings, first_answer: int) -> None:
    for _ in range(s.steps):
        tokens = torch.tensor([_training_sequence(generator, s.pairs) for _ in range(s.batch_size)])
        logits = model(tokens[:, :-1])[:, first_answer - 1::2]
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, first_answer::2].flatten())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()


def _training_sequence(generator: random.Random, pairs: int) -> list[int]:
    keys = generator.sample(range(len(KEYS)), pairs)
    digits = [generator.randrange(10) for _ in keys]
    sequence = [token for k, digit in zip(keys, digits) for token in (_key(k), _value(k, digit))] + [SEPARATOR]
    for index in generator.sample(range(pairs), pairs):
        sequence += [_key(keys[index]), ANSWERS + digits[index]]
    return sequence


@torch.no_grad()
def accuracy(model: CausalLM, probes: list[Probe]) -> float:
    """Share of ``probes`` whose answer (the target's last token) is the model's greedy next token after
    the prompt and the rest of the target."""
    inputs = torch.stack([torch.cat([p.prompt.tensor(), p.target.tensor()[:-1]]) for p in probes])
    answers = torch.tensor([p.target.ids[-1] for p in probes])
    return float((model(inputs)[:, -1].argmax(-1) == answers).float().mean())
