"""Compressions of one weight matrix: unstructured magnitude pruning and int8 absmax.

``magnitude_prune(w, s)`` zeroes the ``round(s * numel)`` (ties to even) entries of smallest ``|w|``; among equal
magnitudes the lower flat index goes first, so the result is deterministic. Entries that are
already zero have the smallest magnitude, so pruning an already pruned matrix to a higher
sparsity extends its mask (the order of the original magnitudes is kept).

``int8_absmax(w)`` is ``lmkernels.ops.int8_fake_quantize``: per output channel,
``scale = max|row| / 127``, ``w' = clamp(round_half_even(w / scale), -127, 127) * scale``.

``MagnitudePruning(s)`` and ``Int8Absmax()`` are these as callables with a ``label``, the form
``component_sweep`` and ``compressed`` take.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmkernels.ops import int8_fake_quantize


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


@dataclass(frozen=True)
class Int8Absmax:
    label: str = "int8 absmax per output channel"

    def __call__(self, weight: Tensor) -> Tensor:
        return int8_absmax(weight)
