"""``lmk::word_attention`` and ``lmk::guide_broadcast``: HAT's encoder and decoder word connectors.

Bytes are packed into one stream and cut into words by ``cu_seqlens`` [W + 1] (word w holds rows
``cu_seqlens[w]:cu_seqlens[w + 1]``; int32 or int64, non-decreasing, within [0, T]).

Encoder connector (word attention): one learned query per word and head attends to that word's
bytes only, with grouped-query heads (query head h reads key/value head h // (Hq / Hkv))::

    s_j = scale * q[w, h] . k[j, g]   for the bytes j of word w      scale defaults to D^-1/2
    out[w, h] = sum_j softmax(s)_j v[j, g]

A segmented softmax over at most ``max_word_size`` keys: no [W, max_word_size] padding, no mask.
An empty word gives zeros. RoPE and the optional QK norm are applied to q and k before the call
(the model does that, with the word index for q and byte positions for k).

Decoder connector (guide broadcast): ``out[t] = x[t] + guide[w]`` for every byte t of word w, without
materialising the broadcast guide; its gradient for ``guide`` is the per-word sum of the upstream rows.

Both run in fp32 internally for float32, bfloat16 and float16 inputs, are differentiable, and are
bitwise reproducible (no atomics: each key row belongs to one word).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.ops._native import _C, TableCheck, call_op, define_autograd, define_op, dl, stream_of
from lmkernels.ops.attention import _scale

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _check_tensors(named: dict[str, Tensor], values: dict[str, int]) -> None:
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    first = next(iter(values))
    for name, ndim in values.items():
        if named[name].dtype not in _FLOATS:
            raise TypeError(f"{name}: expected dtype float32, bfloat16 or float16, got {named[name].dtype}")
        if named[name].dim() != ndim:
            raise ValueError(f"{name}: expected {ndim} dimensions, got shape {list(named[name].shape)}")
    device = named[first].device
    for name, t in named.items():
        if t.device != device:
            raise ValueError(f"{name}: expected the device of {first} ({device}), got {t.device}")
    if named["cu_seqlens"].dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens: expected dtype int32 or int64, got {named['cu_seqlens'].dtype}")


def _seqlens_check(cu_seqlens: Tensor, rows: int, like: Tensor) -> TableCheck:
    """The kernels check only cu_seqlens, against the rows of the byte stream."""
    return TableCheck(((cu_seqlens, (rows,)),), like)


def _raise_on_flag(check: TableCheck, rows: int) -> None:
    check.raise_on_flag(lambda: {_C.WORD_CONNECTOR_BAD_SEQLENS: ValueError(
        f"cu_seqlens: expected non-decreasing word boundaries within [0, {rows}] (the rows of the byte stream)")})


def word_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, *, scale: float | None = None) -> Tensor:
    """Each word's query attends to its own bytes; see the module docstring for the math.

    Args:
        q: [W, Hq, D] one query per word and head (D <= 256).
        k, v: [T, Hkv, D] byte keys and values, of q's dtype, with Hkv dividing Hq.
        cu_seqlens: [W + 1] int32 or int64 word boundaries in the byte stream.
        scale: logit scale, a finite number; D^-1/2 by default.

    Returns:
        [W, Hq, D] of q's dtype.
    """
    _check_tensors({"q": q, "k": k, "v": v, "cu_seqlens": cu_seqlens}, {"q": 3, "k": 3, "v": 3})
    if q.shape[-1] == 0:
        raise ValueError(f"q: expected a head dimension of at least 1, got shape {list(q.shape)}")
    return call_op("word_attention", q, k, v, cu_seqlens, _scale(scale, q.shape[-1]))[0]


def _word_attention(q: Tensor, k: Tensor, v: Tensor, table: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    q, k, v, cu_seqlens = q.contiguous(), k.contiguous(), v.contiguous(), table.contiguous()
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    check = _seqlens_check(table, k.shape[0], q)
    _C.word_attention(dl(q), dl(k), dl(v), dl(cu_seqlens), scale, dl(out), dl(lse), dl(check.flag), stream_of(q))
    _raise_on_flag(check, k.shape[0])
    return out, lse


def _word_attention_fake(q, k, v, cu_seqlens, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


define_op("word_attention(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, float scale) -> (Tensor, Tensor)",
          _word_attention, _word_attention_fake)


def _word_attention_backward(q: Tensor, k: Tensor, v: Tensor, table: Tensor, lse: Tensor, grad_out: Tensor,
                             scale: float) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v, cu_seqlens, lse = q.contiguous(), k.contiguous(), v.contiguous(), table.contiguous(), lse.contiguous()
    grad_out = grad_out.to(q.dtype).contiguous()
    grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    check = _seqlens_check(table, k.shape[0], q)
    _C.word_attention_backward(dl(q), dl(k), dl(v), dl(cu_seqlens), dl(lse), dl(grad_out), scale, dl(grad_q),
                               dl(grad_k), dl(grad_v), dl(delta), dl(check.flag), stream_of(q))
    _raise_on_flag(check, k.shape[0])
    return grad_q, grad_k, grad_v


def _word_attention_backward_fake(q, k, v, cu_seqlens, lse, grad_out, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


define_op("word_attention_backward(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, Tensor lse, Tensor grad_out, "
          "float scale) -> (Tensor, Tensor, Tensor)",
          _word_attention_backward, _word_attention_backward_fake)


def _word_attention_setup(ctx, inputs, output):
    q, k, v, cu_seqlens, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, cu_seqlens, output[1])
    ctx.mark_non_differentiable(output[1])


def _word_attention_grad(ctx, grad_out, _grad_lse):
    q, k, v, cu_seqlens, lse = ctx.saved_tensors
    grads = call_op("word_attention_backward", q, k, v, cu_seqlens, lse, grad_out, ctx.scale)
    return *grads, None, None


define_autograd("word_attention", _word_attention_grad, _word_attention_setup)


def guide_broadcast(x: Tensor, guide: Tensor, cu_seqlens: Tensor) -> Tensor:
    """``x[t] + guide[w]`` for every byte t of word w; see the module docstring.

    Args:
        x: [T, C] byte activations.
        guide: [W, C] one vector per word, of x's dtype.
        cu_seqlens: [W + 1] int32 or int64 word boundaries in the byte stream.

    Returns:
        [T, C] of x's dtype.
    """
    _check_tensors({"x": x, "guide": guide, "cu_seqlens": cu_seqlens}, {"x": 2, "guide": 2})
    return call_op("guide_broadcast", x, guide, cu_seqlens)


def _guide_broadcast(x: Tensor, guide: Tensor, table: Tensor) -> Tensor:
    x, guide, cu_seqlens = x.contiguous(), guide.contiguous(), table.contiguous()
    out = torch.empty_like(x)
    check = _seqlens_check(table, x.shape[0], x)
    _C.guide_broadcast(dl(x), dl(guide), dl(cu_seqlens), dl(out), dl(check.flag), stream_of(x))
    _raise_on_flag(check, x.shape[0])
    return out


define_op("guide_broadcast(Tensor x, Tensor guide, Tensor cu_seqlens) -> Tensor", _guide_broadcast,
          lambda x, guide, cu_seqlens: torch.empty_like(x))


def _guide_broadcast_backward(grad_out: Tensor, table: Tensor, words: int) -> Tensor:
    grad_out, cu_seqlens = grad_out.contiguous(), table.contiguous()
    grad_guide = grad_out.new_empty((words, grad_out.shape[1]))
    check = _seqlens_check(table, grad_out.shape[0], grad_out)
    _C.guide_broadcast_backward(dl(grad_out), dl(cu_seqlens), dl(grad_guide), dl(check.flag), stream_of(grad_out))
    _raise_on_flag(check, grad_out.shape[0])
    return grad_guide


define_op("guide_broadcast_backward(Tensor grad_out, Tensor cu_seqlens, SymInt words) -> Tensor",
          _guide_broadcast_backward,
          lambda grad_out, cu_seqlens, words: grad_out.new_empty((words, grad_out.shape[1])))


def _guide_broadcast_setup(ctx, inputs, output):
    x, guide, cu_seqlens = inputs
    ctx.words, ctx.dtype = guide.shape[0], x.dtype
    ctx.save_for_backward(cu_seqlens)


def _guide_broadcast_grad(ctx, grad_out):
    (cu_seqlens,) = ctx.saved_tensors
    grad_out = grad_out.to(ctx.dtype)
    grad_guide = (call_op("guide_broadcast_backward", grad_out, cu_seqlens, ctx.words)
                  if ctx.needs_input_grad[1] else None)
    return grad_out, grad_guide, None


define_autograd("guide_broadcast", _guide_broadcast_grad, _guide_broadcast_setup)
