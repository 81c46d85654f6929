"""Rotary position embedding (RoPE), interleaved convention.

Dimensions ``(2i, 2i+1)`` of each head rotate together by the angle ``p * base^(-2i/d)`` at
position ``p`` (the complex-pair form T-FREE uses; not the NeoX half-split):

    y_2i   = x_2i cos(theta) - x_2i+1 sin(theta)
    y_2i+1 = x_2i sin(theta) + x_2i+1 cos(theta)
"""

from __future__ import annotations

import torch
from torch import Tensor


class RotaryEmbedding(torch.nn.Module):
    """Rotates query/key heads by their positions; ``forward(x [..., S, d], positions [..., S])``."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim: expected an even number, got {head_dim}")
        inverse_frequencies = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inverse_frequencies", inverse_frequencies.float(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        angles = positions.unsqueeze(-1).float() * self.inverse_frequencies  # [..., S, d/2]
        cos, sin = angles.cos(), angles.sin()
        pairs = x.float().unflatten(-1, (-1, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)
