"""How a unit is suppressed: the factor of every key position, and the attention arguments that apply it.

A unit's own positions get the factor c (default 0.1; c > 1 amplifies, for steering). Two forms act on
the scaled attention logits s_rj of every head, in every layer or in ``layers`` only:

    log-additive (default):  s_rj + log c_j       (post-softmax weight of key j times c_j, renormalised;
                                                   c = 0 adds -10000, see below)
    multiplicative:          m_r + c_j (s_rj - m_r),   m_r the row minimum over the causally visible keys
                             (``factor_min="all"``: over all keys, as the research code)

For c = 0 the log-additive form adds -10000, as the official production code (``scaling``) does, not
log 0 = -inf: a knocked-out key's weight is exactly 0 wherever the row sees another key (exp(-10000) is 0
in float32), and a row whose every visible key is knocked out (a unit at the start of the sequence) is
left as it was, the c -> 0 limit, where -inf would zero its output.

Conceptual suppression (``conceptual_threshold`` = kappa, off by default): a unit also suppresses every
other position k whose input embedding is close to one of its positions i, cos(e_i, e_k) >= kappa, with
the similarity-scaled factor 1 - (1 - c) s_ik (for s_ik in [0, 1]; 1 otherwise). A position reached
from several unit positions keeps the strongest effect: the minimum factor, starting from 1, when
c <= 1, and the maximum when c > 1 amplifies (the unit's own positions keep c either way).

The official production code (``scaling``) starts that minimum from 0.0 instead, so every neighbour
ends at factor 0 (a full knockout, -10000 in log-additive form) whatever its similarity; that is
taken to be a bug, and this implementation starts from 1 as the intended "strongest wins" rule.
Similarities are fp32 cosines with norms clamped to at least 1e-8 and values clipped to [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lmkernels.atman.units import Unit
from lmkernels.nn import KeySuppression

FORMS = ("log_additive", "multiplicative")
KNOCKOUT_BIAS = -10000.0  # log-additive c = 0, as the official production code
FACTOR_MINIMA = ("causal", "all")


@dataclass(frozen=True)
class Suppression:
    factor: float = 0.1
    form: str = "log_additive"
    layers: tuple[int, ...] | None = None
    factor_min: str = "causal"
    conceptual_threshold: float | None = None

    def __post_init__(self):
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)):
            raise TypeError(f"factor: expected a float, got {type(self.factor).__name__}")
        if not math.isfinite(self.factor) or self.factor < 0:
            raise ValueError(f"factor: expected a finite number >= 0, got {self.factor}")
        if self.form not in FORMS:
            raise ValueError(f"form: expected one of {', '.join(FORMS)}, got {self.form!r}")
        if self.factor_min not in FACTOR_MINIMA:
            raise ValueError(f"factor_min: expected one of {', '.join(FACTOR_MINIMA)}, got {self.factor_min!r}")
        if self.layers is not None:
            if not all(isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0 for layer in self.layers):
                raise ValueError(f"layers: expected non-negative layer indices, got {self.layers!r}")
            if not self.layers:
                raise ValueError("layers: expected at least one layer index (None: all layers)")
        if self.conceptual_threshold is not None:
            if isinstance(self.conceptual_threshold, bool) or not isinstance(self.conceptual_threshold, (int, float)):
                raise TypeError(f"conceptual_threshold: expected a float or None, got "
                                f"{type(self.conceptual_threshold).__name__}")
            if not math.isfinite(self.conceptual_threshold):
                raise ValueError(f"conceptual_threshold: expected a finite number, got {self.conceptual_threshold}")

    def check_layers(self, num_layers: int) -> None:
        if self.layers is not None and max(self.layers) >= num_layers:
            raise IndexError(f"layers: the model has {num_layers} layers, got index {max(self.layers)}")

    def factors(self, units: list[Unit], length: int, embeddings: Tensor | None = None) -> Tensor:
        """[len(units), length] float32: the factor of every key position in each unit's pass (1 = untouched)."""
        factors = torch.ones(len(units), length)
        for row, unit in enumerate(units):
            factors[row, list(unit.positions)] = self.factor
        if self.conceptual_threshold is None:
            return factors
        if embeddings is None or embeddings.shape[0] != length:
            raise ValueError(f"embeddings: conceptual suppression needs [{length}, dim] input embeddings")
        similarity = _cosine_similarities(embeddings)
        neighbour_factor = torch.where((similarity >= 0) & (similarity <= 1),
                                       1 - (1 - self.factor) * similarity, torch.ones_like(similarity))
        close = similarity >= self.conceptual_threshold
        close.fill_diagonal_(False)
        neighbour_factor = torch.where(close, neighbour_factor, torch.ones_like(neighbour_factor))
        amplifies = self.factor > 1
        for row, unit in enumerate(units):
            reached = neighbour_factor[list(unit.positions)]
            if amplifies:
                factors[row] = torch.maximum(factors[row], reached.amax(dim=0))
            else:
                factors[row] = torch.minimum(factors[row], reached.amin(dim=0))
        return factors

    def attention_arguments(self, factors: Tensor) -> KeySuppression:
        """The ``KeySuppression`` applying ``factors`` [B, keys] in this form and these layers."""
        layers = None if self.layers is None else frozenset(self.layers)
        if self.form == "log_additive":
            return KeySuppression(key_bias=torch.log(factors).clamp_min(KNOCKOUT_BIAS), layers=layers)
        return KeySuppression(key_factor=factors, factor_min=self.factor_min, layers=layers)


def _cosine_similarities(embeddings: Tensor) -> Tensor:
    unit = embeddings.float() / embeddings.float().norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return (unit @ unit.T).clamp(-1, 1)
