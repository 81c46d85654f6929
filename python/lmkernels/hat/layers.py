"""The Llama-style layer and the word connectors of HAT, over packed sequences.

Every tensor is packed: T bytes (or W words) of N sequences in one [T, d] stream, with
``cu_seqlens`` [N + 1] marking the sequences. Parameter names follow the released checkpoints
(``self_attn.q_proj``, ``mlp.gate_proj``, ``input_layernorm``, ``cross_attention_encoder_connector``,
...), so their safetensors load with ``load_state_dict``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels.hat.config import CrossAttentionConfig, StackConfig
from lmkernels.nn.rms_norm import RMSNorm
from lmkernels.nn.rotary import RotaryEmbedding
from lmkernels.ops import attention, guide_broadcast, varlen_attention, word_attention


def rotary_for(config: StackConfig, head_dim: int) -> RotaryEmbedding:
    return RotaryEmbedding(head_dim, config.rope_theta, interleaved=not config.is_neox_style,
                           scaling=config.rope_scaling)


def rotate(x: Tensor, positions: Tensor, rotary: RotaryEmbedding) -> Tensor:
    """RoPE on packed heads: x [T, H, D] at positions [T]."""
    return rotary(x.transpose(0, 1), positions).transpose(0, 1)


# Bytes that generation may re-decode after a crop: those of a multi-byte first character but its last.
_MAX_RECROPPED = 3


class LayerCache:
    """One layer's rotated keys and values of the bytes (or words) seen so far, [Hkv, S, D] each.

    With a sliding ``window`` (keys a query sees), rows no later query can see are dropped, so that
    memory stays bounded however long the text: the cache keeps at least the last ``window - 1``
    rows plus the few a crop may take back, and trims only when it has grown to twice that, so that
    trimming costs O(1) per row. ``len`` counts every row seen, dropped or not.
    """

    def __init__(self, window: int | None = None):
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.keep = None if window is None else window + _MAX_RECROPPED
        self.dropped = 0

    def __len__(self) -> int:
        return self.dropped + (0 if self.keys is None else self.keys.shape[1])

    def extend(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Append rows and return the rows their queries attend over (their window's, at least)."""
        if self.keep is not None and self.keys is not None and self.keys.shape[1] > 2 * self.keep:
            drop = self.keys.shape[1] - self.keep
            self.keys, self.values = self.keys[:, drop:], self.values[:, drop:]
            self.dropped += drop
        self.keys = keys if self.keys is None else torch.cat([self.keys, keys], dim=1)
        self.values = values if self.values is None else torch.cat([self.values, values], dim=1)
        return self.keys, self.values

    def crop(self, length: int) -> None:
        """Keep the first ``length`` entries (generation re-decodes bytes that changed word)."""
        if length < self.dropped:
            raise RuntimeError(f"cannot crop the cache to {length} rows: the first {self.dropped} were dropped")
        if self.keys is not None:
            self.keys, self.values = self.keys[:, :length - self.dropped], self.values[:, :length - self.dropped]


class SelfAttention(torch.nn.Module):
    """Causal (optionally sliding-window) grouped-query attention within each packed sequence."""

    def __init__(self, config: StackConfig):
        super().__init__()
        if config.key_query_norm:
            raise ValueError("key_query_norm: QK norm in a stack's self-attention is not supported (the released "
                             "models use it only in the word connectors)")
        width, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.kv_heads
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, config.head_size
        self.window = config.attention_window
        self.q_proj = torch.nn.Linear(width, heads * self.head_dim, bias=False)
        self.k_proj = torch.nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.v_proj = torch.nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.o_proj = torch.nn.Linear(heads * self.head_dim, width, bias=False)
        self.rotary = rotary_for(config, self.head_dim)

    def forward(self, x: Tensor, positions: Tensor, cu_seqlens: Tensor) -> Tensor:
        q = rotate(self.q_proj(x).unflatten(-1, (self.heads, self.head_dim)), positions, self.rotary)
        k = rotate(self.k_proj(x).unflatten(-1, (self.kv_heads, self.head_dim)), positions, self.rotary)
        v = self.v_proj(x).unflatten(-1, (self.kv_heads, self.head_dim))
        return self.o_proj(varlen_attention(q, k, v, cu_seqlens, window=self.window).flatten(-2))

    def step(self, x: Tensor, positions: Tensor, cache: LayerCache) -> Tensor:
        """The next n rows [n, d] of one sequence, attending to the cached rows and to each other."""
        q = rotate(self.q_proj(x).unflatten(-1, (self.heads, self.head_dim)), positions, self.rotary)
        k = rotate(self.k_proj(x).unflatten(-1, (self.kv_heads, self.head_dim)), positions, self.rotary)
        keys, values = cache.extend(k.transpose(0, 1), self.v_proj(x).unflatten(-1, (self.kv_heads,
                                                                                      self.head_dim)).transpose(0, 1))
        out = attention(q.transpose(0, 1)[None], keys[None], values[None], causal=True, window=self.window)
        return self.o_proj(out[0].transpose(0, 1).flatten(-2))


class MLP(torch.nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: StackConfig):
        super().__init__()
        width, hidden, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = torch.nn.Linear(width, hidden, bias=bias)
        self.up_proj = torch.nn.Linear(width, hidden, bias=bias)
        self.down_proj = torch.nn.Linear(hidden, width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(torch.nn.Module):
    """``h = x + attn(norm(x)); out = h + mlp(norm(h))``."""

    def __init__(self, config: StackConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, positions: Tensor, cu_seqlens: Tensor) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), positions, cu_seqlens)
        return h + self.mlp(self.post_attention_layernorm(h))

    def step(self, x: Tensor, positions: Tensor, cache: LayerCache) -> Tensor:
        h = x + self.self_attn.step(self.input_layernorm(x), positions, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class CrossAttention(torch.nn.Module):
    """A word connector's attention: query width ``hidden_size_q``, key/value width ``hidden_size_kv``.

    Encoder side (:meth:`word_embeddings`): one query per word over that word's bytes, RoPE at the
    word index for the query and at byte positions for the keys (the released code's two position
    spaces), optional QK RMSNorm (per head or over all heads) before RoPE.
    Decoder side (:meth:`guide`): every byte of word i attends to exactly one key/value, P_i, so the
    softmax is 1 and the output is ``o_proj(v_proj(P_i))`` with the KV heads repeated over their
    query heads; queries, keys, RoPE and QK norm drop out.
    """

    def __init__(self, cross: CrossAttentionConfig, stack: StackConfig):
        super().__init__()
        self.heads, self.kv_heads = cross.num_attention_heads, cross.attention_num_kv_heads
        self.head_dim = cross.hidden_size // self.heads
        kv_width = self.kv_heads * self.head_dim
        self.q_proj = torch.nn.Linear(cross.hidden_size_q, cross.hidden_size, bias=False)
        self.k_proj = torch.nn.Linear(cross.hidden_size_kv, kv_width, bias=False)
        self.v_proj = torch.nn.Linear(cross.hidden_size_kv, kv_width, bias=False)
        self.o_proj = torch.nn.Linear(cross.hidden_size, cross.hidden_size_q, bias=False)
        self.per_head_norm = cross.key_query_norm_per_head
        if cross.key_query_norm:
            query_dim, key_dim = (self.head_dim, self.head_dim) if self.per_head_norm else (cross.hidden_size,
                                                                                             kv_width)
            self.norm_query = RMSNorm(query_dim, stack.rms_norm_eps)
            self.norm_key = RMSNorm(key_dim, stack.rms_norm_eps)
        else:
            self.norm_query = self.norm_key = None
        self.rotary = rotary_for(stack, self.head_dim)

    def _heads(self, x: Tensor, heads: int, norm: RMSNorm | None) -> Tensor:
        if norm is not None and not self.per_head_norm:
            x = norm(x)
        x = x.unflatten(-1, (heads, self.head_dim))
        return norm(x) if norm is not None and self.per_head_norm else x

    def word_embeddings(self, query: Tensor, byte_states: Tensor, word_cu: Tensor, word_positions: Tensor,
                        byte_positions: Tensor) -> Tensor:
        """query [hidden_size_q] (shared by all words), byte_states [T, hidden_size_kv] -> [W, hidden_size_q]."""
        words = word_positions.shape[0]
        q = self._heads(self.q_proj(query), self.heads, self.norm_query).expand(words, -1, -1)
        k = self._heads(self.k_proj(byte_states), self.kv_heads, self.norm_key)
        v = self.v_proj(byte_states).unflatten(-1, (self.kv_heads, self.head_dim))
        q, k = rotate(q, word_positions, self.rotary), rotate(k, byte_positions, self.rotary)
        return self.o_proj(word_attention(q, k, v, word_cu).flatten(-2))

    def guide(self, word_states: Tensor) -> Tensor:
        """word_states [W, hidden_size_kv] -> the per-word vector [W, hidden_size_q] added to its bytes."""
        v = self.v_proj(word_states).unflatten(-1, (self.kv_heads, self.head_dim))
        return self.o_proj(v.repeat_interleave(self.heads // self.kv_heads, dim=-2).flatten(-2))


class DecoderBlock(torch.nn.Module):
    """Optional guide broadcast (``h += guide(kv_norm(P_word))``), then a Llama layer over bytes."""

    def __init__(self, config: StackConfig, with_cross_attention: bool):
        super().__init__()
        cross = config.cross_attention_config
        self.llama_layer = LlamaLayer(config)
        self.cross_attention = CrossAttention(cross, config) if with_cross_attention else None
        # query_norm normalises the queries, which a one-key attention ignores; it is kept so that
        # released checkpoints load strictly.
        self.query_norm = RMSNorm(cross.hidden_size_q, config.rms_norm_eps)
        self.kv_norm = RMSNorm(cross.hidden_size_kv, config.rms_norm_eps)
        # The weights that drop out get no gradient, ever: frozen, so that an optimiser skips them and
        # DistributedDataParallel does not wait for their gradients (it raises at the second step).
        unused = [self.query_norm]
        if self.cross_attention is not None:
            unused += [self.cross_attention.q_proj, self.cross_attention.k_proj, self.cross_attention.norm_query,
                       self.cross_attention.norm_key]
        for module in unused:
            if module is not None:
                module.requires_grad_(False)

    def forward(self, x: Tensor, predictive: Tensor, word_cu: Tensor, positions: Tensor, cu_seqlens: Tensor,
                cache: LayerCache | None = None) -> Tensor:
        """Packed sequences; or, with ``cache``, the next rows of one sequence (``cu_seqlens`` unused)."""
        if self.cross_attention is not None:
            # Under autocast the guide's projections give bf16 (or fp16) while the residual stream x
            # stays fp32; the broadcast adds in x's dtype.
            guide = self.cross_attention.guide(self.kv_norm(predictive)).to(x.dtype)
            x = guide_broadcast(x, guide, word_cu)
        if cache is not None:
            return self.llama_layer.step(x, positions, cache)
        return self.llama_layer(x, positions, cu_seqlens)
