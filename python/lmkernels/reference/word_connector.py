"""HAT's word connectors in plain PyTorch: the oracles for ``lmkernels.ops.word_attention`` and
``lmkernels.ops.guide_broadcast``. Word w holds byte rows ``cu_seqlens[w]:cu_seqlens[w + 1]``."""

import torch


def word_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, *,
                   scale: float | None = None) -> torch.Tensor:
    """One query per word and head over that word's byte keys: q [W, Hq, D], k and v [T, Hkv, D]."""
    words, q_heads, dim = q.shape
    group = q_heads // k.shape[1]
    scale = dim ** -0.5 if scale is None else scale
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    pieces = []
    for w in range(words):
        start, end = bounds[w], bounds[w + 1]
        if end == start:
            pieces.append(out[w])
            continue
        keys = k[start:end].float().repeat_interleave(group, dim=1)      # [L, Hq, D]
        values = v[start:end].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,lhd->hl", q[w].float(), keys) * scale
        pieces.append(torch.einsum("hl,lhd->hd", scores.softmax(dim=-1), values))
    return torch.stack(pieces).to(q.dtype) if pieces else out.to(q.dtype)


def guide_broadcast(x: torch.Tensor, guide: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """x [T, C] plus guide [W, C] broadcast onto the bytes of each word (bytes outside every word: x)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    start, end = int(cu_seqlens[0]), int(cu_seqlens[-1])
    spread = torch.repeat_interleave(guide.float(), lengths.long(), dim=0)
    out = x.float().clone()
    out[start:end] += spread
    return out.to(x.dtype)
