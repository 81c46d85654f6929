"""``lmk::multilabel_bce``: BCE-with-logits against a sparse multi-hot target (the T-FREE head loss).

For position ``p`` with logits ``x = logits[p]`` over a vocabulary of ``v`` and positive set
``pos(p)``, the distinct entries of ``pos_indices[pos_offsets[p]:pos_offsets[p+1]]`` (an index
listed several times counts once), target ``y_i = 1`` iff ``i`` is in ``pos(p)``, and ``P = pos_weight``::

    l(x, y) = P * y * softplus(-x) + (1 - y) * softplus(x)
    L_p     = w_p * sum_i l(x_i, y_i)
            = w_p * (sum_i softplus(x_i) + sum_{i in pos(p)} [P * softplus(-x_i) - softplus(x_i)])
    dL_p / dx_i = w_p * sigmoid(x_i)         if y_i = 0
                = -w_p * P * sigmoid(-x_i)   if y_i = 1

``w_p`` is the optional per-position weight (1 without). Reductions: ``"none"`` gives the
float32 vector ``[L_p]``, ``"sum"`` gives ``sum_p L_p`` and ``"mean"`` gives
``sum_p L_p / (num_positions * v)``: T-FREE's convention, in which padded positions (weight 0)
still count in the denominator. This is ``BCEWithLogitsLoss(pos_weight=P, reduction=...)`` on the
dense target with the rows scaled by ``w``, without ever building the ``[positions, v]`` target.

The gradient is fused into the forward pass, like Liger-Kernel's fused losses: when ``logits``
requires a gradient, the kernel writes ``d(sum_p L_p) / d logits`` in the same pass that reads the
logits for the loss, and the backward only scales row ``p`` by the incoming gradient of ``L_p``.
The logits are thus read once, at the price of holding a ``[positions, v]`` tensor of the logits'
dtype (as large as the logits) from the forward until the backward; without a gradient nothing
beyond the ``[positions]`` loss is allocated.

Logits are float32, bfloat16 or float16 and accumulate in fp32 (on the CPU each row's fp32 partial
sums are added up in fp64); the loss is float32, the gradient has the logits' dtype. The backward
(``lmk::multilabel_bce_backward``) scales in fp32 and rounds once. ``weights`` are constants: they
get no gradient, and a ``weights`` tensor that requires one is rejected.

Non-finite logits: a NaN logit makes its position's loss NaN (and its own gradient NaN); ``+inf``
gives an infinite loss on a negative and NaN on a positive (``inf - inf`` in the
dense-plus-correction form; the dense reference gives NaN there too); ``-inf`` gives 0 on a
negative and ``+inf`` on a positive (where the dense reference gives NaN). Results are bitwise
reproducible run to run on one device, for any thread count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmkernels.ops._native import (_C, call_op, define_autograd, define_op, dl, error_flag, kernel_output,
                                   narrowed_offsets, raise_on_flag, stream_of)

_REDUCTIONS = ("mean", "sum", "none")
_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INDEX_DTYPES = (torch.int32, torch.int64)


def multilabel_bce_with_logits(
    logits: Tensor,
    pos_indices: Tensor,
    pos_offsets: Tensor,
    weights: Tensor | None = None,
    pos_weight: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """BCE-with-logits of ``logits`` against the multi-hot target given in CSR; see the module docstring.

    Args:
        logits: [positions, v] float32, bfloat16 or float16 (rows may be strided).
        pos_indices: [N] int32 or int64, the positives of every position, each in ``[0, v)``.
        pos_offsets: [positions + 1] int32 or int64: position ``p``'s positives are
            ``pos_indices[pos_offsets[p]:pos_offsets[p+1]]``; starts at 0, non-decreasing, ends at N.
        weights: optional [positions] float32 per-position loss weight (0 for padding); constants,
            not differentiated.
        pos_weight: ``P``, the weight of the positive term (a finite number).
        reduction: ``"mean"`` (over ``positions * v`` elements), ``"sum"`` or ``"none"``.

    Returns:
        A float32 scalar (``"mean"``, ``"sum"``) or a [positions] float32 vector (``"none"``).

    Raises:
        TypeError: an argument of the wrong type or dtype.
        ValueError: wrong shapes, devices, reduction, a non-finite ``pos_weight``, malformed offsets.
        IndexError: a positive index outside ``[0, v)``.
    """
    for name, t in (("logits", logits), ("pos_indices", pos_indices), ("pos_offsets", pos_offsets)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if weights is not None and not isinstance(weights, Tensor):
        raise TypeError(f"weights: expected a torch.Tensor or None, got {type(weights).__name__}")
    if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)):
        raise TypeError(f"pos_weight: expected a float, got {type(pos_weight).__name__}")
    if not math.isfinite(pos_weight):
        raise ValueError(f"pos_weight: expected a finite number, got {pos_weight}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"logits: expected dtype float32, bfloat16 or float16, got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"logits: expected 2 dimensions [positions, v], got shape {list(logits.shape)}")
    for name, t in (("pos_indices", pos_indices), ("pos_offsets", pos_offsets)):
        if t.dtype not in _INDEX_DTYPES:
            raise TypeError(f"{name}: expected dtype int32 or int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name}: expected 1 dimension, got shape {list(t.shape)}")
    positions, v = logits.shape
    if pos_offsets.shape[0] != positions + 1:
        raise ValueError(f"pos_offsets: expected positions + 1 = {positions + 1} entries, got {pos_offsets.shape[0]}")
    if weights is not None:
        if weights.dtype != torch.float32:
            raise TypeError(f"weights: expected dtype float32, got {weights.dtype}")
        if weights.shape != (positions,):
            raise ValueError(f"weights: expected shape [{positions}], got {list(weights.shape)}")
    device = logits.device
    for name, t in (("pos_indices", pos_indices), ("pos_offsets", pos_offsets), ("weights", weights)):
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected the device of logits ({device}), got {t.device}")
    if weights is not None and weights.requires_grad and torch.is_grad_enabled():
        raise ValueError("weights: the loss is not differentiable in the weights; pass weights.detach()")

    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    loss, _ = call_op("multilabel_bce", logits, pos_indices, pos_offsets, weights, float(pos_weight), compute_grad)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (positions * v)


def _multilabel_bce(
    logits: Tensor, pos_indices: Tensor, pos_offsets: Tensor, weights: Tensor | None, pos_weight: float,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    if logits.dim() == 2 and logits.shape[1] > 1 and logits.stride(1) != 1:
        logits = logits.contiguous()
    pos_indices = pos_indices.contiguous()
    pos_offsets = narrowed_offsets(pos_offsets, pos_indices, "pos_indices").contiguous()
    weights = None if weights is None else weights.contiguous()
    loss = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    grad = kernel_output(logits.shape if compute_grad else (0,), logits.dtype, logits.device)
    flag = error_flag(logits)
    _C.multilabel_bce(dl(logits), dl(pos_indices), dl(pos_offsets), dl(weights), pos_weight, dl(loss),
                      dl(grad) if compute_grad else None, dl(flag), stream_of(logits))
    raise_on_flag(flag, lambda: {
        _C.BCE_BAD_OFFSETS: ValueError("pos_offsets: expected pos_offsets[0] == 0, non-decreasing, and last == "
                                       "len(pos_indices)"),
        _C.BCE_BAD_INDEX: IndexError(f"pos_indices: an index is out of range for a vocabulary of {logits.shape[1]} "
                                     "logits"),
    })
    return loss, grad


def _multilabel_bce_fake(logits, pos_indices, pos_offsets, weights, pos_weight, compute_grad):
    loss = logits.new_empty((logits.shape[0],), dtype=torch.float32)
    grad = logits.new_empty(logits.shape if compute_grad else (0,))
    return loss, grad


define_op("multilabel_bce(Tensor logits, Tensor pos_indices, Tensor pos_offsets, Tensor? weights, float pos_weight, "
          "bool compute_grad) -> (Tensor, Tensor)", _multilabel_bce, _multilabel_bce_fake)


def _multilabel_bce_backward(grad: Tensor, grad_loss: Tensor) -> Tensor:
    grad_loss = grad_loss.to(torch.float32).contiguous()
    grad_logits = kernel_output(grad.shape, grad.dtype, grad.device)
    _C.multilabel_bce_backward(dl(grad.contiguous()), dl(grad_loss), dl(grad_logits), stream_of(grad))
    return grad_logits


def _multilabel_bce_backward_fake(grad, grad_loss):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


define_op("multilabel_bce_backward(Tensor grad, Tensor grad_loss) -> Tensor", _multilabel_bce_backward,
          _multilabel_bce_backward_fake)


def _setup_context(ctx, inputs, output):
    compute_grad = inputs[5]
    ctx.compute_grad = compute_grad
    ctx.save_for_backward(output[1])
    # Autograd would otherwise fill a [positions, v] tensor of zeros as the incoming gradient of
    # the (never differentiated) fused-gradient output, on every backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad_of_grad):
    if grad_loss is None:
        return None, None, None, None, None, None
    if not ctx.compute_grad:
        raise RuntimeError("multilabel_bce: the gradient was not computed in the forward pass (logits did not require "
                           "a gradient then)")
    (grad,) = ctx.saved_tensors
    return call_op("multilabel_bce_backward", grad, grad_loss), None, None, None, None, None


define_autograd("multilabel_bce", _backward, _setup_context)
