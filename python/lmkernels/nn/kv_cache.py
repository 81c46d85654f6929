"""``KVCache``: the keys and values of the positions seen so far, one entry per layer."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values [batch, kv_heads, seen, head_dim] per layer, grown by ``append``.

    Positions are appended in order; ``length`` is the number of positions cached so far (the
    position of the next token, for a single sequence without resets).
    """

    def __init__(self, num_layers: int):
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        """Positions cached in every layer (after a complete forward pass)."""
        return self.seen(len(self.keys) - 1)

    def seen(self, layer: int) -> int:
        """Positions cached so far in ``layer``."""
        return 0 if self.keys[layer] is None else self.keys[layer].shape[2]

    def append(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions' keys/values of ``layer``; returns all cached keys and values."""
        if self.keys[layer] is not None:
            keys = torch.cat((self.keys[layer], keys), dim=2)
            values = torch.cat((self.values[layer], values), dim=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values

    def prefix(self, length: int) -> KVCache:
        """A cache of the first ``length`` positions of this one (views, nothing copied)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"length: expected 0..{self.length}, got {length}")
        prefix = KVCache(len(self.keys))
        prefix.keys = [keys[:, :, :length] for keys in self.keys]
        prefix.values = [values[:, :, :length] for values in self.values]
        return prefix
