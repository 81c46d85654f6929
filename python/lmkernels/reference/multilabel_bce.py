"""Reference sparse multi-label BCE: the dense multi-hot target and torch's BCE-with-logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def multilabel_bce_with_logits(
    logits: Tensor,
    pos_indices: Tensor,
    pos_offsets: Tensor,
    weights: Tensor | None = None,
    pos_weight: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """``BCEWithLogitsLoss(pos_weight)`` on the materialised ``[positions, v]`` multi-hot target.

    Position ``p``'s target is 1 at every index of ``pos_indices[pos_offsets[p]:pos_offsets[p+1]]``
    (duplicates count once) and 0 elsewhere; each row's summed loss is scaled by ``weights[p]``.
    ``"mean"`` divides the sum by ``positions * v``. Computed in fp32, or fp64 for fp64 logits (the
    tests' oracle: fp32 loses the positives' gradient ``P * (sigmoid(x) - 1)`` to cancellation).
    """
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    positions, v = logits.shape
    counts = (pos_offsets[1:] - pos_offsets[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(positions, device=logits.device), counts)
    target = torch.zeros(positions, v, dtype=compute_dtype, device=logits.device)
    target[rows, pos_indices.long()] = 1.0
    elementwise = F.binary_cross_entropy_with_logits(
        logits.to(compute_dtype), target,
        pos_weight=torch.tensor(float(pos_weight), dtype=compute_dtype, device=logits.device), reduction="none")
    per_position = elementwise.sum(1)
    if weights is not None:
        per_position = per_position * weights.to(compute_dtype)
    if reduction == "none":
        return per_position
    if reduction == "sum":
        return per_position.sum()
    if reduction == "mean":
        return per_position.sum() / (positions * v)
    raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
