"""``SelfAttention``: multi-head (optionally grouped-query) attention with RoPE and a KV cache.

    q, k, v = x W_q, x W_k, x W_v (no biases);  q, k rotated by RoPE at ``positions``
    out = softmax(q k^T / sqrt(d) + mask) v, then W_o

``allowed`` [batch, queries, keys] (True = may attend) overrides the default causal mask, for
example to reset attention at document boundaries in packed training sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels.nn.kv_cache import KVCache
from lmkernels.nn.rotary import RotaryEmbedding


class SelfAttention(torch.nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, rope_base: float = 10000.0,
                 device=None, dtype=None):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if dim % num_heads or num_heads % num_kv_heads:
            raise ValueError(f"num_heads: {num_heads} must divide dim {dim} and be a multiple of num_kv_heads "
                             f"{num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, dim // num_heads
        self.q_proj = torch.nn.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.k_proj = torch.nn.Linear(dim, num_kv_heads * self.head_dim, bias=False, device=device, dtype=dtype)
        self.v_proj = torch.nn.Linear(dim, num_kv_heads * self.head_dim, bias=False, device=device, dtype=dtype)
        self.o_proj = torch.nn.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        self.rotary = RotaryEmbedding(self.head_dim, rope_base)

    def forward(self, x: Tensor, positions: Tensor, allowed: Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = self.rotary(q, positions.unsqueeze(1))
        k = self.rotary(k, positions.unsqueeze(1))
        past = 0
        if cache is not None:
            past = cache.seen(layer)
            k, v = cache.append(layer, k, v)
        if self.num_kv_heads != self.num_heads:
            repeat = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if allowed is None:
            # Query i (absolute position past + i) sees keys 0..past + i.
            allowed = torch.ones(length, past + length, dtype=torch.bool, device=x.device).tril(past)
        else:
            allowed = allowed.unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
