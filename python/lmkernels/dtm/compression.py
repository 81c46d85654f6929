"""Compressions of one weight matrix: unstructured magnitude pruning, Wanda-style pruning and int8 absmax.

``magnitude_prune(w, s)`` zeroes the ``round(s * numel)`` (ties to even) entries of smallest ``|w|``; among equal
magnitudes the lower flat index goes first, so the result is deterministic. Entries that are
already zero have the smallest magnitude, so pruning an already pruned matrix to a higher
sparsity extends its mask (the order of the original magnitudes is kept).

``wanda_prune(w, norms, s)`` (Sun et al. 2023, "Wanda") zeroes, within each output row ``i``, the
entries of smallest ``|w_ij| * norms_j``, where ``norms_j = ||X_j||_2`` is the L2 norm of input
feature ``j`` of the layer over calibration tokens (``input_norms``). It also zeroes exactly
``round(s * numel)`` entries: every row gets ``count // rows`` of them and the first
``count % rows`` rows one more, so a row's share never shrinks as ``s`` grows. Among equal scores
the lower column goes first; entries that are already zero go before all others, so pruning a
matrix that ``wanda_prune`` pruned before (with any norms) to a higher sparsity extends its mask.
A row that already holds more zeros than its share keeps them all (pruning never revives a
weight), and the matrix then ends up sparser than ``s``.

``input_norms(model, references)`` gathers those norms with forward hooks on every component's
linear module during the teacher-forced pass of the references' prompts and continuations
through the model as it stands (padding excluded).

``int8_absmax(w)`` is ``lmkernels.ops.int8_fake_quantize``: per output channel,
``scale = max|row| / 127``, ``w' = clamp(round_half_even(w / scale), -127, 127) * scale``.

``MagnitudePruning(s)``, ``WandaPruning(s, norms)`` and ``Int8Absmax()`` are these in the form
``component_sweep`` and ``compressed`` take, with a ``label``. ``WandaPruning`` holds the norms of
every component and gives ``compressed`` the function for one of them through ``for_component``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from lmkernels.dtm import models
from lmkernels.dtm.components import component_modules, select
from lmkernels.dtm.continuations import References, teacher_forced_sequence
from lmkernels.nn import evaluating
from lmkernels.ops import int8_fake_quantize

CRITERIA = ("magnitude", "wanda")


def _check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity: expected a number in [0, 1], got {sparsity!r}")
    return float(sparsity)


@torch.no_grad()
def magnitude_prune(weight: Tensor, sparsity: float) -> Tensor:
    """A copy of ``weight`` with its ``round(sparsity * numel)`` smallest-magnitude entries zeroed."""
    sparsity = _check_sparsity(sparsity)
    count = round(sparsity * weight.numel())
    flat = weight.reshape(-1).clone()
    if count:
        order = torch.sort(flat.abs().float(), stable=True).indices
        flat[order[:count]] = 0
    return flat.view_as(weight)


@torch.no_grad()
def wanda_prune(weight: Tensor, input_norms: Tensor, sparsity: float) -> Tensor:
    """A copy of ``weight`` [out, in] with, row by row, the entries of smallest ``|w_ij| * input_norms[j]``
    zeroed, ``round(sparsity * numel)`` in all (see the module docstring)."""
    sparsity = _check_sparsity(sparsity)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        got = list(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight: expected a 2-D tensor [out_features, in_features], got {got}")
    norms = _check_input_norms(input_norms, weight.shape[1]).to(weight.device)
    rows, columns = weight.shape
    count = round(sparsity * weight.numel())
    pruned = weight.clone()
    if count:
        share = torch.full((rows, 1), count // rows, device=weight.device)
        share[:count % rows] += 1
        scores = weight.abs().float() * norms
        scores[weight == 0] = -1.0  # below every real score: earlier zeros go first, so masks extend
        order = torch.sort(scores, dim=1, stable=True).indices
        prune = torch.zeros_like(weight, dtype=torch.bool).scatter_(
            1, order, torch.arange(columns, device=weight.device) < share)
        pruned[prune] = 0
    return pruned


def _check_input_norms(input_norms, in_features: int) -> Tensor:
    if not isinstance(input_norms, Tensor):
        raise TypeError(f"input_norms: expected a tensor of {in_features} norms, got {type(input_norms).__name__}")
    if input_norms.shape != (in_features,) or not input_norms.dtype.is_floating_point:
        raise ValueError(f"input_norms: expected a floating-point tensor of shape [{in_features}] (one norm per "
                         f"input feature), got {input_norms.dtype} of shape {list(input_norms.shape)}")
    if not bool(torch.isfinite(input_norms).all()) or bool((input_norms < 0).any()):
        raise ValueError("input_norms: expected finite, non-negative norms")
    return input_norms.float()


@torch.no_grad()
def input_norms(model: torch.nn.Module, references: References,
                components: Iterable[str] | str | None = None) -> dict[str, Tensor]:
    """Per component, the L2 norm [in_features] (fp32) of every input feature of its linear module over
    all real tokens of the teacher-forced pass of ``references``' prompts and continuations."""
    if not isinstance(references, References):
        raise TypeError(f"references: expected References, got {type(references).__name__}")
    modules = component_modules(model)
    modules = {name: modules[name] for name in select(model, components)}
    device = models.device_of(model)
    squares = {name: torch.zeros(module.weight.shape[1], device=device) for name, module in modules.items()}
    current_batch = {}  # the hooks read the real-token mask of the batch being run

    def accumulate(name):
        def hook(module, inputs, output):
            x = inputs[0]
            # Left padding is no calibration data; the module may see only the last positions.
            squares[name] += x[current_batch["real"][:, -x.shape[1]:]].float().square().sum(0)
        return hook

    handles = [module.register_forward_hook(accumulate(name)) for name, module in modules.items()]
    try:
        with evaluating(model):  # dropout would make the norms random
            for _, tokens, real, continuations in references.batches():
                full, full_real = teacher_forced_sequence(tokens, real, continuations)
                current_batch["real"] = full_real.to(device)
                models.logits_of(model, full.to(device), current_batch["real"])
    finally:
        for handle in handles:
            handle.remove()
    return {name: total.sqrt() for name, total in squares.items()}


def int8_absmax(weight: Tensor) -> Tensor:
    return int8_fake_quantize(weight)


def sparsity_of(weight: Tensor) -> float:
    """The fraction of exact zeros in ``weight``."""
    return float((weight == 0).sum()) / max(weight.numel(), 1)


@dataclass(frozen=True)
class MagnitudePruning:
    sparsity: float

    def __post_init__(self):
        _check_sparsity(self.sparsity)

    @property
    def label(self) -> str:
        return f"magnitude pruning to {self.sparsity:.0%}"

    def __call__(self, weight: Tensor) -> Tensor:
        return magnitude_prune(weight, self.sparsity)


@dataclass(frozen=True, eq=False)  # eq=False: comparing the norm tensors has no single truth value
class WandaPruning:
    """Wanda-style pruning to ``sparsity``; ``input_norms`` maps each component's name to its norms."""

    sparsity: float
    input_norms: Mapping[str, Tensor]

    def __post_init__(self):
        _check_sparsity(self.sparsity)
        if not isinstance(self.input_norms, Mapping):
            raise TypeError(f"input_norms: expected a mapping component name -> norms (see input_norms()), "
                            f"got {type(self.input_norms).__name__}")

    @property
    def label(self) -> str:
        return f"Wanda pruning to {self.sparsity:.0%}"

    def for_component(self, name: str) -> Callable[[Tensor], Tensor]:
        if name not in self.input_norms:
            raise ValueError(f"input_norms: has no norms for the component {name!r}")
        return partial(wanda_prune, input_norms=self.input_norms[name], sparsity=self.sparsity)


@dataclass(frozen=True)
class Int8Absmax:
    label: str = "int8 absmax per output channel"

    def __call__(self, weight: Tensor) -> Tensor:
        return int8_absmax(weight)
