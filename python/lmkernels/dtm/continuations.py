"""Reference continuations: the base model's greedy output, generated once and reused.

For every prompt ``x`` the reference is ``y = y_1 .. y_N`` with ``y_i = argmax F(. | x, y_<i)``: greedy
decoding with the KV cache, a fixed ``N`` tokens, stop tokens ignored. Prompts run in batches of
``batch_size`` (in the given order), left-padded.

Self-consistency (``reconcile=True``, the default): the evaluation in ``lmkernels.dtm.metrics``
runs one teacher-forced pass over ``[x; y]``, whose floating-point sums differ from the
incremental decode's. At a near-tie the two argmaxes can differ, and ``FDT(F, F)`` would fall
below ``N`` for no reason. So each batch is checked with exactly that evaluation pass; where its
argmax first disagrees with ``y``, ``y`` takes the evaluation's token there and decoding resumes
from it, until the pass reproduces ``y`` everywhere. ``FDT(F, F) = N`` then holds on every prompt
by construction (same batches, same kernels, same device and dtype).

The result is cached on disk under a key that hashes the model's class, its configuration and state
(every parameter and buffer, non-persistent ones such as RoPE frequencies included, bit for bit),
its attention implementation (Hugging Face), its device (with the GPU's name) and dtype, the torch,
lmkernels and transformers versions, the prompts, ``N``, the batch size and the reconcile flag.
The references are generated in eval mode (the model's modes are restored afterwards). Without the disk cache
no key is computed (hashing the state of a 7B model takes about a minute).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import lmkernels
from lmkernels.dtm import models
from lmkernels.nn import evaluating
from lmkernels.ops import token_divergence


@dataclass
class References:
    """Prompts [P] (1-D int64 tensors) and their reference continuations [P, N], with the batch size
    the references were checked with (evaluation uses the same batches) and the model's vocabulary size."""

    prompts: list[Tensor]
    continuations: Tensor
    batch_size: int
    vocab_size: int
    key: str | None  # the disk cache key (None where the disk cache was not used)

    @property
    def num_tokens(self) -> int:
        return self.continuations.shape[1]

    def batches(self):
        """``(first prompt index, left-padded prompts [b, L], real [b, L], continuations [b, N])`` per batch."""
        for start in range(0, len(self.prompts), self.batch_size):
            tokens, real = left_pad(self.prompts[start:start + self.batch_size])
            yield start, tokens, real, self.continuations[start:start + self.batch_size]


def default_cache_dir() -> Path:
    """``$LMK_CACHE_DIR/dtm``, else ``~/.cache/lmkernels/dtm``."""
    root = os.environ.get("LMK_CACHE_DIR")
    return Path(root) / "dtm" if root else Path.home() / ".cache" / "lmkernels" / "dtm"


def check_prompts(prompts, vocab: int) -> list[Tensor]:
    """The prompts as 1-D int64 CPU tensors; raises on an empty set, empty prompts or out-of-vocabulary ids."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts: expected a sequence of token sequences, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts: expected at least one prompt, got an empty set")
    checked = []
    for index, prompt in enumerate(prompts):
        tokens = prompt if isinstance(prompt, Tensor) else torch.as_tensor(prompt)
        if tokens.numel() == 0:
            raise ValueError(f"prompts[{index}]: expected at least one token")
        if tokens.dim() != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"prompts[{index}]: expected a 1-D sequence of integer token ids, "
                            f"got {tokens.dtype} of shape {list(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
            raise IndexError(f"prompts[{index}]: token ids must lie in [0, {vocab}) (the model's vocabulary)")
        checked.append(tokens.to("cpu", torch.int64))
    return checked


def left_pad(prompts: list[Tensor], pad: int = 0) -> tuple[Tensor, Tensor]:
    """``tokens`` [B, L] and ``real`` [B, L] (False on padding), the prompts aligned at the right."""
    length = max(p.numel() for p in prompts)
    tokens = torch.full((len(prompts), length), pad, dtype=torch.int64)
    real = torch.zeros(len(prompts), length, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, length - prompt.numel():] = prompt
        real[row, length - prompt.numel():] = True
    return tokens, real


@torch.no_grad()
def greedy(model: torch.nn.Module, tokens: Tensor, real: Tensor, num_tokens: int, use_cache: bool = True) -> Tensor:
    """``num_tokens`` greedy tokens [B, num_tokens] after the left-padded ``tokens`` [B, L].

    With ``use_cache`` the prompt runs once and every step runs one token against the KV cache;
    without, every step reruns the whole sequence (the slow oracle).
    """
    device = models.device_of(model)
    tokens, real = tokens.to(device), real.to(device)
    generated = []
    cache = models.new_cache(model) if use_cache else None
    step_input = tokens
    for _ in range(num_tokens):
        logits = models.logits_of(model, step_input, real, cache)
        next_token = logits[:, -1].float().argmax(-1, keepdim=True)
        generated.append(next_token)
        real = torch.cat((real, torch.ones_like(next_token, dtype=torch.bool)), dim=1)
        if use_cache:
            step_input = next_token
        else:
            tokens = torch.cat((tokens, next_token), dim=1)
            step_input = tokens
    return torch.cat(generated, dim=1).cpu()


def generate(model: torch.nn.Module, prompts, num_tokens: int = 100, batch_size: int = 16,
             use_cache: bool = True) -> Tensor:
    """Greedy continuations [P, num_tokens] of ``prompts``, without the reconcile check or the disk cache."""
    _check_sizes(num_tokens, batch_size)
    prompts = check_prompts(prompts, models.vocab_size(model))
    return torch.cat([greedy(model, *left_pad(prompts[i:i + batch_size]), num_tokens, use_cache)
                      for i in range(0, len(prompts), batch_size)])


@torch.no_grad()
def teacher_forced_sequence(tokens: Tensor, real: Tensor, continuations: Tensor) -> tuple[Tensor, Tensor]:
    """The left-padded prompts followed by their ``continuations`` [B, N], and which entries are real."""
    return (torch.cat((tokens, continuations), dim=1),
            torch.cat((real, torch.ones_like(continuations, dtype=torch.bool)), dim=1))


def teacher_forced_logits(model: torch.nn.Module, tokens: Tensor, real: Tensor, continuations: Tensor) -> Tensor:
    """Logits [B, N, V] that predict each of ``continuations`` [B, N] after the left-padded prompts."""
    device = models.device_of(model)
    full, full_real = teacher_forced_sequence(tokens, real, continuations)
    logits = models.logits_of(model, full.to(device), full_real.to(device))
    length = tokens.shape[1]
    return logits[:, length - 1:length - 1 + continuations.shape[1]]


@torch.no_grad()
def reference_continuations(model: torch.nn.Module, prompts, num_tokens: int = 100, batch_size: int = 16,
                            cache_dir: str | os.PathLike | None = None, use_disk_cache: bool = True,
                            reconcile: bool = True) -> References:
    """The reference continuations of ``model`` on ``prompts`` (see the module docstring).

    Args:
        model: an ``lmkernels.nn.CausalLM`` or a Hugging Face causal LM, in eval mode.
        prompts: a non-empty sequence of non-empty 1-D token id sequences.
        num_tokens: ``N`` >= 1, the continuation length.
        batch_size: prompts per forward pass (also used by the evaluation).
        cache_dir: where cached references live (default: ``default_cache_dir()``).
        use_disk_cache: read and write the disk cache.
        reconcile: make the references self-consistent with the teacher-forced evaluation.
    """
    _check_sizes(num_tokens, batch_size)
    with evaluating(model):  # dropout would make the references random
        return _references(model, prompts, num_tokens, batch_size, cache_dir, use_disk_cache, reconcile)


def _references(model, prompts, num_tokens: int, batch_size: int, cache_dir, use_disk_cache: bool,
                reconcile: bool) -> References:
    vocab = models.vocab_size(model)
    prompts = check_prompts(prompts, vocab)
    key = _cache_key(model, prompts, num_tokens, batch_size, reconcile) if use_disk_cache else None
    path = Path(cache_dir or default_cache_dir()) / f"{key}.pt"
    if use_disk_cache and path.is_file():
        continuations = torch.load(path, weights_only=True)
        return References(prompts, continuations, batch_size, vocab, key)
    parts = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        tokens, real = left_pad(batch)
        continuations = greedy(model, tokens, real, num_tokens)
        if reconcile:
            continuations = _reconcile(model, batch, tokens, real, continuations)
        parts.append(continuations)
    references = References(prompts, torch.cat(parts), batch_size, vocab, key)
    if use_disk_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            torch.save(references.continuations, temporary)
            temporary.replace(path)  # atomic: a concurrent reader never sees half a file
        finally:
            temporary.unlink(missing_ok=True)  # what a failed save (a full disk) left
    return references


def _reconcile(model, prompts: list[Tensor], tokens: Tensor, real: Tensor, continuations: Tensor) -> Tensor:
    num_tokens = continuations.shape[1]
    fixed_up_to = torch.full((len(prompts),), -1)
    while True:
        logits = teacher_forced_logits(model, tokens, real, continuations)
        result = token_divergence(logits, continuations.to(logits.device))
        mismatched = ~result.match.cpu()
        if not bool(mismatched.any()):
            return continuations
        first = torch.where(mismatched.any(1), mismatched.int().argmax(1), num_tokens)
        for row in torch.nonzero(first < num_tokens).flatten().tolist():
            position = int(first[row])
            if position <= fixed_up_to[row]:
                raise RuntimeError("reference_continuations: the teacher-forced pass is not deterministic "
                                   f"(prompt {row} of its batch disagrees again at token {position})")
            fixed_up_to[row] = position
            continuations[row, position] = result.argmax[row, position].cpu()
            prefix = torch.cat((prompts[row], continuations[row, :position + 1]))[None]
            rest = num_tokens - position - 1
            if rest:
                continuations[row, position + 1:] = greedy(model, prefix, torch.ones_like(prefix, dtype=torch.bool),
                                                           rest)[0]


def _check_sizes(num_tokens: int, batch_size: int) -> None:
    for name, value in (("num_tokens", num_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")


def _cache_key(model: torch.nn.Module, prompts: list[Tensor], num_tokens: int, batch_size: int,
               reconcile: bool) -> str:
    digest = hashlib.sha256()
    parameter = next(model.parameters())
    config = getattr(model, "config", None)
    # The attention implementation changes the greedy tokens at near-ties but is no part of the JSON.
    attention = getattr(config, "_attn_implementation", None)
    config = config.to_json_string() if hasattr(config, "to_json_string") else repr(config)
    device = parameter.device.type
    if device == "cuda":
        device += f" {torch.cuda.get_device_name(parameter.device)}"
    libraries = f"torch {torch.__version__} lmkernels {lmkernels.__version__}"
    if models.is_huggingface(model):
        import transformers

        libraries += f" transformers {transformers.__version__}"
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}|{device}|{parameter.dtype}|{libraries}|"
                  f"{config}|{attention}|{num_tokens}|{batch_size}|{reconcile}".encode())
    state = dict(model.named_buffers())
    state.update(model.state_dict())
    for name, value in sorted(state.items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"|{name}|{value.dtype}|{list(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    for prompt in prompts:
        digest.update(f"|{prompt.numel()}|".encode())
        digest.update(prompt.numpy().tobytes())
    return digest.hexdigest()[:32]
