"""``token_divergence``: compare logits with reference tokens (and optionally reference logits).

For every position ``(b, t)`` with logits ``x = logits[b, t]`` over a vocabulary of ``V`` and
reference token ``r = reference_tokens[b, t]``::

    argmax = min { i : x_i = max_j x_j }             (the lowest index on ties)
    match  = (argmax == r)
    nll    = logsumexp(x) - x_r
    margin = x_r - max_{j != r} x_j                  (> 0 iff r is the unique argmax)
    kl     = sum_i p_i (log p_i - log q_i),  p = softmax(reference_logits[b, t]), q = softmax(x)

all in fp32. Where ``mask`` is False the position is skipped: argmax -1, match False and zeros.
Evaluation only: no gradient flows through the results.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class TokenDivergence(NamedTuple):
    argmax: Tensor
    match: Tensor
    nll: Tensor
    margin: Tensor
    kl: Tensor | None


@torch.no_grad()
def token_divergence(logits: Tensor, reference_tokens: Tensor, mask: Tensor | None = None,
                     reference_logits: Tensor | None = None) -> TokenDivergence:
    """Argmax agreement, NLL, margin and (with ``reference_logits``) KL per position.

    Args:
        logits: [B, T, V] float32, bfloat16 or float16.
        reference_tokens: [B, T] int64, each in ``[0, V)``.
        mask: optional [B, T] bool, False = skip the position.
        reference_logits: optional [B, T, V], the dtype of ``logits``.

    Returns:
        ``TokenDivergence(argmax int64 [B, T], match bool [B, T], nll float32 [B, T],
        margin float32 [B, T], kl float32 [B, T] or None)``.
    """
    if not isinstance(logits, Tensor) or logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"logits: expected a float32, bfloat16 or float16 tensor, got {_describe(logits)}")
    if logits.dim() != 3 or logits.shape[2] == 0:
        raise ValueError(f"logits: expected [B, T, V] with V > 0, got shape {list(logits.shape)}")
    if not isinstance(reference_tokens, Tensor) or reference_tokens.dtype != torch.int64:
        raise TypeError(f"reference_tokens: expected an int64 tensor, got {_describe(reference_tokens)}")
    if reference_tokens.shape != logits.shape[:2]:
        raise ValueError(f"reference_tokens: expected shape {list(logits.shape[:2])}, "
                         f"got {list(reference_tokens.shape)}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask: expected a bool tensor, got {_describe(mask)}")
        if mask.shape != logits.shape[:2]:
            raise ValueError(f"mask: expected shape {list(logits.shape[:2])}, got {list(mask.shape)}")
    if reference_logits is not None:
        if not isinstance(reference_logits, Tensor) or reference_logits.dtype != logits.dtype:
            raise TypeError(f"reference_logits: expected a {logits.dtype} tensor, got {_describe(reference_logits)}")
        if reference_logits.shape != logits.shape:
            raise ValueError(f"reference_logits: expected shape {list(logits.shape)}, "
                             f"got {list(reference_logits.shape)}")
    for name, t in (("reference_tokens", reference_tokens), ("mask", mask), ("reference_logits", reference_logits)):
        if t is not None and t.device != logits.device:
            raise ValueError(f"{name}: expected device {logits.device}, got {t.device}")
    vocab = logits.shape[2]
    active = torch.ones_like(reference_tokens, dtype=torch.bool) if mask is None else mask
    if bool(((reference_tokens < 0) | (reference_tokens >= vocab))[active].any()):
        raise IndexError(f"reference_tokens: expected values in [0, {vocab})")

    x = logits.float()
    tokens = torch.where(active, reference_tokens, 0)
    argmax = x.argmax(-1)
    target = x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    nll = torch.logsumexp(x, -1) - target
    others = x.scatter(-1, tokens.unsqueeze(-1), float("-inf"))
    margin = target - others.max(-1).values if vocab > 1 else torch.full_like(target, float("inf"))
    kl = None
    if reference_logits is not None:
        log_p = torch.log_softmax(reference_logits.float(), -1)
        kl = (log_p.exp() * (log_p - torch.log_softmax(x, -1))).sum(-1)
        kl = torch.where(active, kl, 0.0)
    return TokenDivergence(torch.where(active, argmax, -1), (argmax == tokens) & active,
                           torch.where(active, nll, 0.0), torch.where(active, margin, 0.0), kl)


def _describe(value) -> str:
    return f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
