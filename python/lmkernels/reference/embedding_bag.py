"""Reference embedding bag, built on ``torch.nn.functional.embedding_bag`` and computed in fp32."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def embedding_bag(
    table: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None = None, mode: str = "sum"
) -> Tensor:
    """``out[b] = scale_b * sum_{i in bag b} w_i * table[indices[i]]``, CSR ``offsets`` of num_bags + 1.

    Accumulates in fp32 and rounds once to ``table.dtype``, as the kernels do. torch has no
    weighted mean, so mean is the weighted sum divided by the bag size (empty bags give zeros).
    """
    if table.shape[1] == 0:  # torch's embedding_bag rejects zero-width tables
        return table.sum(0).expand(offsets.numel() - 1, 0)
    weights = None if per_sample_weights is None else per_sample_weights.float()
    summed = F.embedding_bag(
        indices, table.float(), offsets.to(indices.dtype), mode="sum",
        per_sample_weights=weights, include_last_offset=True,
    )
    if mode == "mean":
        counts = (offsets[1:] - offsets[:-1]).clamp(min=1).to(summed.dtype)
        summed = summed / counts.unsqueeze(1)
    elif mode != "sum":
        raise ValueError(f"mode: expected 'sum' or 'mean', got {mode!r}")
    return summed.to(table.dtype)
