"""Dense attention with every option of the native kernel: the oracle for ``lmkernels.ops.attention``.

Shapes follow ``torch.nn.functional.scaled_dot_product_attention``: q [B, Hq, Sq, D],
k and v [B, Hkv, Sk, D] with Hq a multiple of Hkv (grouped-query attention: query head h reads
key/value head h // (Hq / Hkv)). Sq <= Sk; query i sits at absolute position p_i = Sk - Sq + i,
so Sq < Sk is a decoding step over a KV cache or a suffix pass over a shared prefix.
Shared-prefix mode: prefix_k and prefix_v [1 or B, Hkv, P, D] are keys/values common to the
batch (AtMan's clean pass); item b then attends over prefix ⊕ k[b] (Sk + P keys in all, key_bias
and key_factor [B, P + Sk] cover both), without the prefix being copied per item.

    s_ij = scale * q_i . k_j                                   scale defaults to D^-1/2
    key j is visible to query i  iff  (not causal or j <= p_i) and (window is None or p_i - j < window)
    log-additive suppression:    s_ij <- s_ij + key_bias[b, j]                 (AtMan default: log c_j)
    multiplicative suppression:  s_ij <- m_i + key_factor[b, j] * (s_ij - m_i)  (the paper's form)
        m_i = min of s_ij over the visible keys (factor_min="causal") or over all Sk keys ("all",
        the research code's choice)
    out_i = sum_j softmax_j(s_ij over visible keys) v_j

A row with no visible key left (every visible key has bias -inf) yields zeros. The computation
runs in float32 and returns q's dtype.
"""

import torch


def visible_keys(sq: int, sk: int, *, causal: bool, window: int | None, device=None) -> torch.Tensor:
    """[Sq, Sk] boolean mask: which keys each query may attend to."""
    query_pos = torch.arange(sk - sq, sk, device=device)[:, None]
    key_pos = torch.arange(sk, device=device)[None, :]
    visible = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if causal:
        visible &= key_pos <= query_pos
    if window is not None:
        visible &= query_pos - key_pos < window
    return visible


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, scale: float | None = None,
              window: int | None = None, key_bias: torch.Tensor | None = None,
              key_factor: torch.Tensor | None = None, factor_min: str = "causal",
              prefix_k: torch.Tensor | None = None, prefix_v: torch.Tensor | None = None) -> torch.Tensor:
    if prefix_k is not None:
        k = torch.cat([prefix_k.expand(k.shape[0], -1, -1, -1), k], dim=2)
        v = torch.cat([prefix_v.expand(v.shape[0], -1, -1, -1), v], dim=2)
    batch, q_heads, sq, dim = q.shape
    kv_heads, sk = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    scale = dim ** -0.5 if scale is None else scale
    keys = k.float().repeat_interleave(group, dim=1)
    values = v.float().repeat_interleave(group, dim=1)
    scores = (q.float() @ keys.transpose(-1, -2)) * scale
    visible = visible_keys(sq, sk, causal=causal, window=window, device=q.device)
    if key_factor is not None:
        counted = visible if factor_min == "causal" else torch.ones_like(visible)
        row_min = scores.masked_fill(~counted, float("inf")).amin(dim=-1, keepdim=True)
        scores = row_min + key_factor.float()[:, None, None, :] * (scores - row_min)
    if key_bias is not None:
        scores = scores + key_bias.float()[:, None, None, :]
    scores = scores.masked_fill(~visible, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    weights = torch.exp(scores - row_max.clamp_min(torch.finfo(torch.float32).min))
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return (weights @ values).to(q.dtype)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, *,
                     scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """Causal attention over packed sequences: q [T, Hq, D], k and v [T, Hkv, D]; sequence n holds
    rows cu_seqlens[n]:cu_seqlens[n+1] and attends only within itself."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            piece = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]
            out[start:end] = attention(*piece, causal=True, scale=scale, window=window)[0].transpose(0, 1)
    return out
