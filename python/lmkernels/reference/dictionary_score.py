"""Reference T-FREE dictionary scoring: dense sigmoid and two ``torch.sparse_csr_tensor`` products."""

from __future__ import annotations

import torch
from torch import Tensor


def dictionary_scores(
    logits: Tensor,
    ne_indices: Tensor,
    ne_offsets: Tensor,
    edge_indices: Tensor,
    edge_offsets: Tensor,
    trigram_counts: Tensor,
    m: int,
    edge_weight: float = 1.0,
    variant: str = "contrast",
    row_indices: Tensor | None = None,
    row_offsets: Tensor | None = None,
) -> Tensor:
    """Scores [Q, W] of every dictionary word against each row of ``logits`` [Q, v], in fp32.

    ``a = sigmoid(logits)``, ``s = a @ NE^T + e * a @ E^T`` with NE and E the [W, v] CSR matrices
    of the words' non-edge and edge sets, ``S = a.sum(-1)``; contrast:
    ``s / (m n_w) + (s - S) / (v - m n_w)`` (the second term 0 where ``v - m n_w <= 0``); mean:
    ``s / (m n_w)``. With a row table (``row_indices``, ``row_offsets``) the sets hold row ids and
    each row stands for its vocabulary indices: NE and E become (sets of rows) @ (rows of indices),
    entries counted with multiplicity.
    """
    if variant not in ("contrast", "mean"):
        raise ValueError(f"variant: expected 'contrast' or 'mean', got {variant!r}")
    activations = logits.float().sigmoid()
    queries, vocab = activations.shape
    words = trigram_counts.numel()
    if words == 0:
        return activations.new_zeros(queries, 0)

    def coo(indices: Tensor, offsets: Tensor, columns: int) -> Tensor:
        rows = torch.repeat_interleave(torch.arange(offsets.numel() - 1, device=logits.device), offsets.diff().long())
        ones = torch.ones(indices.numel(), device=logits.device)
        return torch.sparse_coo_tensor(torch.stack([rows, indices.long()]), ones, (offsets.numel() - 1, columns),
                                       check_invariants=False)

    table = None if row_indices is None else coo(row_indices, row_offsets, vocab)

    def pattern(indices: Tensor, offsets: Tensor) -> Tensor:
        if table is None:
            return coo(indices, offsets, vocab).coalesce().to_sparse_csr()
        return (coo(indices, offsets, table.shape[0]) @ table).coalesce().to_sparse_csr()

    transposed = activations.t().contiguous()
    pattern_sums = (pattern(ne_indices, ne_offsets) @ transposed
                    + edge_weight * (pattern(edge_indices, edge_offsets) @ transposed)).t()
    slots = m * trigram_counts.long()
    scores = pattern_sums / slots.float()
    if variant == "contrast":
        off_pattern = (vocab - slots).float()
        totals = activations.sum(-1, keepdim=True)
        contrast = (pattern_sums - totals) / off_pattern
        scores = scores + torch.where(off_pattern > 0, contrast, torch.zeros_like(contrast))
    return scores
