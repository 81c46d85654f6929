"""``EmbeddingBag``: a learnable table reduced over bags by ``lmk::embedding_bag``."""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.ops import embedding_bag


class EmbeddingBag(torch.nn.Module):
    """Sum or mean of learnable embedding rows per bag (the T-FREE input embedding, for example).

    Bags are given either as CSR (``indices`` [N] and ``offsets`` [num_bags + 1]) or as a 2-D
    ``indices`` [num_bags, bag_size] of equal-size bags. The table gradient is deterministic;
    with ``sparse=True`` it is a sparse COO tensor of the touched rows (for ``torch.optim.SparseAdam``).
    The table is initialised from N(0, 1), as ``torch.nn.EmbeddingBag`` does.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "sum", sparse: bool = False,
                 device=None, dtype=None):
        super().__init__()
        if mode not in ("sum", "mean"):
            raise ValueError(f"mode: expected 'sum' or 'mean', got {mode!r}")
        self.num_embeddings, self.embedding_dim, self.mode, self.sparse = num_embeddings, embedding_dim, mode, sparse
        self.weight = torch.nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.weight)

    @classmethod
    def from_pretrained(cls, table: Tensor, freeze: bool = True, mode: str = "sum", sparse: bool = False):
        module = cls(table.shape[0], table.shape[1], mode, sparse, device=table.device, dtype=table.dtype)
        with torch.no_grad():
            module.weight.copy_(table)
        module.weight.requires_grad_(not freeze)
        return module

    def forward(self, indices: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        if offsets is None:
            if indices.dim() != 2:
                raise ValueError(f"indices: expected 2-D [num_bags, bag_size] when offsets is None, got shape "
                                 f"{list(indices.shape)}")
            num_bags, bag_size = indices.shape
            offsets = torch.arange(num_bags + 1, device=indices.device) * bag_size
            indices = indices.reshape(-1)
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.reshape(-1)
        return embedding_bag(self.weight, indices, offsets, per_sample_weights, self.mode, self.sparse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, sparse={self.sparse}"
