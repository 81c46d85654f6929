"""``SelfAttention``: multi-head (optionally grouped-query) attention with RoPE and a KV cache.

    q, k, v = x W_q, x W_k, x W_v (no biases);  q, k rotated by RoPE at ``positions``
    out = softmax(q k^T / sqrt(d) + mask) v, then W_o

``allowed`` [batch, queries, keys] (True = may attend) overrides the default causal mask, for
example to reset attention at document boundaries in packed training sequences.

``queries`` (an int) computes the outputs of the last ``queries`` positions only; keys and values
still come from every position (a caller that needs only the final rows, such as AtMan's last layer).

``suppression`` (a ``KeySuppression``: AtMan's per-key bias or factor) and ``prefix`` (a ``KVCache``
of batch 1 holding keys/values shared by every batch item, which then computes only its own suffix
positions) route the pass through ``lmkernels.ops.attention``. Without them, plain causal attention
runs through it as well on the CPU (its forward and backward measured 1.2-1.5x torch's flash SDPA
there, docs/benchmarks.md), and through SDPA with the causal mask elsewhere; ``allowed`` takes SDPA
with that mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels.nn.kv_cache import KVCache
from lmkernels.nn.rotary import RotaryEmbedding
from lmkernels.ops import attention


@dataclass(frozen=True)
class KeySuppression:
    """Per-(batch item, key) attention suppression, as ``lmkernels.ops.attention`` applies it.

    ``key_bias`` [B, keys] is added to the scaled logits (log-additive AtMan: log c); ``key_factor``
    [B, keys] scales them about the row minimum over ``factor_min`` keys (the paper's form). ``keys``
    counts every key a query may see: the shared prefix, the cache and the new positions. ``layers``
    names the layer indices it acts in (None: all); elsewhere attention is unsuppressed.
    """

    key_bias: Tensor | None = None
    key_factor: Tensor | None = None
    factor_min: str = "causal"
    layers: frozenset[int] | None = None

    def acts_in(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    @property
    def batch_size(self) -> int:
        """The batch items it suppresses for: rows of ``key_bias`` or ``key_factor`` (1 without either)."""
        tensor = self.key_bias if self.key_bias is not None else self.key_factor
        return 1 if tensor is None else tensor.shape[0]


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
        self.rotary = RotaryEmbedding(self.head_dim, rope_base, device=device)

    def forward(self, x: Tensor, positions: Tensor, allowed: Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0, suppression: KeySuppression | None = None,
                prefix: KVCache | None = None, queries: int | None = None) -> Tensor:
        batch, length, _ = x.shape
        count = length if queries is None else queries
        if not 1 <= count <= length:
            raise ValueError(f"queries: expected 1..{length} (the positions of x), got {queries}")
        q = self.q_proj(x[:, length - count:]).view(batch, count, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = self.rotary(q, positions[:, length - count:].unsqueeze(1))
        k = self.rotary(k, positions.unsqueeze(1))
        if suppression is not None or prefix is not None:
            out = self._suppressed(q, k, v, allowed, cache, layer, suppression, prefix)
            return self.o_proj(out.transpose(1, 2).reshape(batch, count, self.num_heads * self.head_dim))
        past = 0
        if cache is not None:
            past = cache.seen(layer)
            k, v = cache.append(layer, k, v)
        if allowed is None and not x.is_cuda:  # the kernel puts query i at key past + length - count + i
            out = attention(q, k, v, causal=True)
            return self.o_proj(out.transpose(1, 2).reshape(batch, count, self.num_heads * self.head_dim))
        if self.num_kv_heads != self.num_heads:
            repeat = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if allowed is None:
            # Query i (absolute position past + length - count + i) sees keys up to that position.
            allowed = torch.ones(count, past + length, dtype=torch.bool, device=x.device).tril(past + length - count)
        else:
            allowed = allowed[:, allowed.shape[1] - count:].unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.o_proj(out.transpose(1, 2).reshape(batch, count, self.num_heads * self.head_dim))

    def _suppressed(self, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, cache: KVCache | None, layer: int,
                    suppression: KeySuppression | None, prefix: KVCache | None) -> Tensor:
        """Causal attention through ``lmkernels.ops.attention`` with the suppression of this layer."""
        if allowed is not None:
            raise ValueError("allowed: a custom mask cannot be combined with suppression or prefix")
        if prefix is not None and cache is not None:
            raise ValueError("prefix: cannot be combined with a cache")
        if cache is not None:
            k, v = cache.append(layer, k, v)
        active = suppression if suppression is not None and suppression.acts_in(layer) else KeySuppression()
        prefix_k = prefix_v = None
        if prefix is not None:
            prefix_k, prefix_v = prefix.keys[layer], prefix.values[layer]
        return attention(q, k, v, causal=True, key_bias=active.key_bias, key_factor=active.key_factor,
                         factor_min=active.factor_min, prefix_k=prefix_k, prefix_v=prefix_v)
