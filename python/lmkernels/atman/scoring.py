"""Relevance from losses: R = CE(perturbed) - CE(clean), per unit and target token (positive = supports).

    CE_t        = -log p(y_t | x_<P+t), from fp32 logits at position P - 1 + t (teacher forcing)
    R[u, t]     = CE_t(unit u suppressed) - CE_t(clean) = log p_clean(y_t) - log p_u(y_t)
    token score = post(R[u, t]),  post in {none, abs, square} (the API's postprocessing)
    unit score  = sum_t post(R[u, t])

``normalize`` min-max scales each target token's column and the unit scores to [0, 1], after
postprocessing (as the API); a constant vector becomes all ones (the research code's rule for one
element). An encoder explanation has one "target": its score (e.g. a similarity), R = score(clean) -
score(perturbed).
"""

from __future__ import annotations

import torch
from torch import Tensor

POSTPROCESSING = ("none", "abs", "square")


def check_postprocessing(postprocessing: str) -> None:
    if postprocessing not in POSTPROCESSING:
        raise ValueError(f"postprocessing: expected one of {', '.join(POSTPROCESSING)}, got {postprocessing!r}")


def token_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy [..., T] of ``targets`` [T] under ``logits`` [..., T, V], in fp32."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -log_probs.gather(-1, targets.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def postprocess(relevance: Tensor, postprocessing: str) -> Tensor:
    check_postprocessing(postprocessing)
    if postprocessing == "abs":
        return relevance.abs()
    if postprocessing == "square":
        return relevance.square()
    return relevance


def min_max(values: Tensor, dim: int = 0) -> Tensor:
    """``values`` scaled to [0, 1] along ``dim``; constant slices become ones."""
    low = values.amin(dim=dim, keepdim=True)
    span = values.amax(dim=dim, keepdim=True) - low
    return torch.where(span > 0, (values - low) / torch.where(span > 0, span, 1), torch.ones_like(values))


def scores(relevance: Tensor, postprocessing: str = "none", normalize: bool = False) -> tuple[Tensor, Tensor]:
    """(token scores [N, T], unit scores [N]) of the relevance matrix [N, T]."""
    token = postprocess(relevance, postprocessing)
    unit = token.sum(dim=1)
    if normalize:
        token, unit = min_max(token, 0), min_max(unit, 0)
    return token, unit

