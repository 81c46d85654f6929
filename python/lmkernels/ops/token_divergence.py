"""``lmk::token_divergence``: a candidate model's logits scored against reference tokens and logits.

For candidate logits ``c`` [B, T, V], reference tokens ``y`` [B, T] and optional reference logits
``r`` [B, T, V], per position (all in fp32, one pass over the vocabulary, no [B, T, V] temporary)::

    argmax = min { v : c_v = max_u c_u }                  (the lowest index on ties)
    match  = argmax == y
    nll    = -log softmax(c)[y] = logsumexp(c) - c_y
    margin = top1(c) - top2(c), 0 where they are equal    (top2 = -inf when V = 1)
    kl     = KL(softmax(r) || softmax(c)) = sum_v p_v (log p_v - log q_v)

with the terms where p_v = 0 (``r_v = -inf``) taken as 0; kl is exactly 0 where ``r == c``.
Divergent Token Metrics read ``match`` (teacher-forced greedy agreement: the first mismatch is the
first divergent token, the mismatch share is SDT), ``nll`` and ``kl``.

Special values: a NaN logit makes nll, margin and kl NaN and argmax the index of the first NaN
(as torch.argmax). +inf logits make nll and kl NaN (as torch.log_softmax). ``-inf`` logits are
probability 0: ``c_y = -inf`` gives nll = +inf, ``c_v = -inf`` where ``p_v > 0`` gives kl = +inf,
and a row of only ``-inf`` has argmax 0, margin 0 and NaN nll and kl (its softmax is undefined).
Masked positions (``mask`` False) are skipped: argmax -1, match False, nll, margin and kl 0.
Results are bitwise reproducible.

Evaluation only: the op has no gradient, and backpropagating through it raises a RuntimeError.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lmkernels.ops._native import _C, call_op, define_autograd, define_op, dl, error_flag, raise_on_flag, stream_of

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


class TokenDivergence(NamedTuple):
    """Per-position results of :func:`token_divergence`, each [B, T]."""

    argmax: Tensor  # int64, -1 where masked
    match: Tensor   # bool
    nll: Tensor     # float32
    margin: Tensor  # float32
    kl: Tensor | None  # float32, None without reference logits


def token_divergence(logits: Tensor, reference_tokens: Tensor, mask: Tensor | None = None,
                     reference_logits: Tensor | None = None) -> TokenDivergence:
    """Argmax agreement, NLL, top-2 margin and KL per position; see the module docstring for the math.

    Args:
        logits: [B, T, V] float32, bfloat16 or float16, the candidate's logits; the last dimension
            must have unit stride (the others may be strided).
        reference_tokens: [B, T] int64 or int32 in ``[0, V)`` wherever ``mask`` is True.
        mask: optional [B, T] bool; False positions are skipped.
        reference_logits: optional [B, T, V] of the dtype of ``logits``, the reference model's logits.

    Returns:
        A :class:`TokenDivergence` (argmax, match, nll, margin, kl); kl is None without reference logits.
    """
    named = {"logits": logits, "reference_tokens": reference_tokens, "mask": mask,
             "reference_logits": reference_logits}
    for name, t in named.items():
        if t is None and name in ("mask", "reference_logits"):
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if logits.dtype not in _FLOATS:
        raise TypeError(f"logits: expected dtype float32, bfloat16 or float16, got {logits.dtype}")
    if logits.dim() != 3:
        raise ValueError(f"logits: expected 3 dimensions [B, T, V], got shape {list(logits.shape)}")
    device = logits.device
    for name, t in named.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected the device of logits ({device}), got {t.device}")
    argmax, match, nll, margin, kl = call_op("token_divergence", logits, reference_tokens, mask, reference_logits)
    return TokenDivergence(argmax, match, nll, margin, kl if reference_logits is not None else None)


def _unit_last_stride(t: Tensor) -> Tensor:
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _outputs(logits: Tensor, with_reference: bool) -> tuple[Tensor, ...]:
    batch, length = logits.shape[:2]
    new = dict(device=logits.device)
    return (torch.empty((batch, length), dtype=torch.int64, **new),
            torch.empty((batch, length), dtype=torch.bool, **new),
            torch.empty((batch, length), dtype=torch.float32, **new),
            torch.empty((batch, length), dtype=torch.float32, **new),
            torch.empty((batch, length) if with_reference else (0, 0), dtype=torch.float32, **new))


def _token_divergence(logits: Tensor, reference_tokens: Tensor, mask: Tensor | None,
                      reference_logits: Tensor | None) -> tuple[Tensor, ...]:
    logits = _unit_last_stride(logits)
    if reference_logits is not None:
        reference_logits = _unit_last_stride(reference_logits)
    argmax, match, nll, margin, kl = _outputs(logits, reference_logits is not None)
    flag = error_flag(logits)
    _C.token_divergence(dl(logits), dl(reference_tokens), dl(mask), dl(reference_logits), dl(argmax), dl(match),
                        dl(nll), dl(margin), dl(kl if reference_logits is not None else None), dl(flag),
                        stream_of(logits))
    raise_on_flag(flag, lambda: {
        _C.DIVERGENCE_BAD_TOKEN: IndexError(f"reference_tokens: expected values in [0, {logits.shape[-1]}) (the "
                                            f"vocabulary of logits) at every unmasked position"),
    })
    return argmax, match, nll, margin, kl


def _token_divergence_fake(logits, reference_tokens, mask, reference_logits):
    batch, length = logits.shape[:2]
    shape = (batch, length)
    return (logits.new_empty(shape, dtype=torch.int64), logits.new_empty(shape, dtype=torch.bool),
            logits.new_empty(shape, dtype=torch.float32), logits.new_empty(shape, dtype=torch.float32),
            logits.new_empty(shape if reference_logits is not None else (0, 0), dtype=torch.float32))


define_op("token_divergence(Tensor logits, Tensor reference_tokens, Tensor? mask, Tensor? reference_logits) -> "
          "(Tensor, Tensor, Tensor, Tensor, Tensor)", _token_divergence, _token_divergence_fake)


def _no_backward(ctx, *grads):
    raise RuntimeError("lmk::token_divergence is evaluation-only and has no gradient; train with a loss such as "
                       "torch.nn.functional.cross_entropy on the logits")


define_autograd("token_divergence", _no_backward)
