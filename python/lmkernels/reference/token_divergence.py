"""Reference token divergence: log_softmax in fp32, argmax, gather, topk and a masked KL sum."""

from __future__ import annotations

import torch
from torch import Tensor


def token_divergence(logits: Tensor, reference_tokens: Tensor, mask: Tensor | None = None,
                     reference_logits: Tensor | None = None):
    """(argmax, match, nll, margin, kl) per position of ``logits`` [B, T, V], as ``lmk.token_divergence``.

    ``log_q = log_softmax(c)``, ``argmax = c.argmax(-1)`` (torch returns the first maximum, and the
    first NaN), ``nll = -log_q.gather(y)``, ``margin = top1 - top2`` (0 where equal, top2 = -inf for
    V = 1), ``kl = sum_v where(log_p_v = -inf, 0, p_v (log_p_v - log_q_v))`` (torch's ``kl_div``
    would give NaN for the p = 0 terms where ``log_q_v = -inf``). Masked positions give -1, False
    and zeros. kl is None without reference logits.
    """
    candidate = logits.float()
    log_q = torch.log_softmax(candidate, dim=-1)
    argmax = candidate.argmax(dim=-1)
    if mask is None:
        mask = torch.ones(reference_tokens.shape, dtype=torch.bool, device=logits.device)
    tokens = torch.where(mask, reference_tokens.long(), 0)
    nll = -log_q.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    padded = torch.cat([candidate, candidate.new_full((*candidate.shape[:-1], 1), -torch.inf)], dim=-1)
    top = padded.topk(2, dim=-1).values
    margin = torch.where(top[..., 0] == top[..., 1], 0.0, top[..., 0] - top[..., 1])
    kl = None
    if reference_logits is not None:
        log_p = torch.log_softmax(reference_logits.float(), dim=-1)
        terms = torch.where(log_p == -torch.inf, 0.0, log_p.exp() * (log_p - log_q))
        kl = torch.where(mask, terms.sum(-1), 0.0)
    match = (argmax == reference_tokens.long()) & mask
    return (torch.where(mask, argmax, -1), match, torch.where(mask, nll, 0.0), torch.where(mask, margin, 0.0), kl)
