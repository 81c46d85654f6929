"""``Decoder``: a Llama-style pre-norm transformer stack over input embeddings.

    h = x + Attention(RMSNorm(x));  x' = h + SwiGLU(RMSNorm(h));  ...;  out = RMSNorm(x_L)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmkernels.nn.attention import KeySuppression, SelfAttention
from lmkernels.nn.kv_cache import KVCache
from lmkernels.nn.rms_norm import RMSNorm
from lmkernels.nn.swiglu import SwiGLU


@dataclass
class DecoderConfig:
    dim: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    mlp_ratio: float = 2.66796875  # T-FREE's intermediate size factor
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def hidden_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)


class DecoderLayer(torch.nn.Module):
    def __init__(self, config: DecoderConfig, device=None, dtype=None):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps, device=device, dtype=dtype)
        self.attention = SelfAttention(config.dim, config.num_heads, config.num_kv_heads, config.rope_base,
                                       device=device, dtype=dtype)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps, device=device, dtype=dtype)
        self.mlp = SwiGLU(config.dim, config.hidden_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor, positions: Tensor, allowed: Tensor | None, cache: KVCache | None,
                layer: int, suppression: KeySuppression | None = None, prefix: KVCache | None = None,
                queries: int | None = None) -> Tensor:
        attended = self.attention(self.attention_norm(x), positions, allowed, cache, layer, suppression, prefix,
                                  queries)
        x = x[:, x.shape[1] - attended.shape[1]:] + attended
        return x + self.mlp(self.mlp_norm(x))


class Decoder(torch.nn.Module):
    """``forward(x [B, S, dim], positions [B, S], allowed=None, cache=None, suppression=None, prefix=None,
    queries=None) -> [B, S, dim]`` (``suppression`` and ``prefix``: see ``SelfAttention``). With
    ``queries``, the output is [B, queries, dim], the last positions only: the last layer computes only
    those (every position's keys and values still enter its cache), which saves most of a layer when
    a caller needs a few final rows of a long pass."""

    def __init__(self, config: DecoderConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.layers = torch.nn.ModuleList(DecoderLayer(config, device, dtype) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps, device=device, dtype=dtype)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.layers))

    def forward(self, x: Tensor, positions: Tensor, allowed: Tensor | None = None,
                cache: KVCache | None = None, suppression: KeySuppression | None = None,
                prefix: KVCache | None = None, queries: int | None = None) -> Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x, positions, allowed, cache, index, suppression, prefix, queries if index == last else None)
        return self.norm(x)
