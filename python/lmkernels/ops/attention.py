"""``lmk::attention``: tiled attention with AtMan suppression, masks, GQA, a shared prefix and varlen packing.

Shapes follow ``torch.nn.functional.scaled_dot_product_attention``: q [B, Hq, Sq, D], k and v
[B, Hkv, Sk, D], Hq a multiple of Hkv (query head h reads key/value head h // (Hq / Hkv)).
Sq <= Sk: query i sits at absolute position p_i = Sk - Sq + i (a KV-cache step or a suffix pass).
With ``prefix_k`` / ``prefix_v`` [1 or B, Hkv, P, D] every item attends over prefix ⊕ its own
keys (P + Sk keys; ``key_bias`` and ``key_factor`` [B, P + Sk] cover both); the prefix is read in
place, never copied per item, and a batch-1 (or expanded, stride-0) prefix serves the whole batch::

    s_ij = scale * q_i . k_j                                         scale defaults to D^-1/2
    key j is visible to query i  iff  (not causal or j <= p_i) and (window is None or p_i - j < window)
    multiplicative suppression:  s_ij <- m_i + key_factor[b, j] (s_ij - m_i)      (the paper's form)
        m_i = min of s_ij over the visible keys (factor_min="causal") or over all keys ("all")
    log-additive suppression:    s_ij <- s_ij + key_bias[b, j]                   (AtMan's default: log c_j)
    out_i = sum_j softmax_j(s_ij over visible keys) v_j

A factor of exactly 1 leaves the score untouched, so an all-ones factor (or an all-zeros bias)
gives the clean output bit for bit. A row whose visible keys all have bias -inf gives zeros.
``varlen_attention`` runs causal attention over packed sequences (q [T, Hq, D], k and v
[T, Hkv, D], sequence n = rows ``cu_seqlens[n]:cu_seqlens[n+1]``), each on its own.

The kernel (``csrc/attention``) never materialises the [Sq, Sk] matrix: it walks 64 x 64 tiles
with an online softmax in fp32, skipping key tiles that no query of a tile can see (a sliding
window costs O(S x window)), and saves the row log-sum-exp for the backward, which recomputes the
probabilities tile by tile. Inputs are float32, bfloat16 or float16; the output has q's dtype.

Gradients flow to q, k, v, prefix_k, prefix_v, key_bias and key_factor; they are deterministic
(each gradient element is written by one task, no atomics) and accumulated in fp32. The kernels
write those of q, k and v in q's dtype, each element rounded once to nearest even (the keys of a
batch-1 prefix serving several items stay fp32 until their gradients are summed), and those of
key_bias and key_factor per key/value head in fp32, which the op sums over the heads. On the CPU a
bf16 or fp16 call whose gradient autograd will want also keeps, for the backward, out's rounding
residual (fp32 output - out, in q's dtype: one more tensor the size of out), from which the backward
finds delta = rowsum(grad_out * out) to about 16 bits.
One limit of the saved log-sum-exp: in a row whose visible keys all carry a finite bias below about
-1e6 (float32's lowest, say, as a padding mask), float32 cannot hold the log of the key count beside
it, so that row's gradients are off (its output is right); mask with -inf, or a bias above -1e4,
which removes a key as completely. Through the multiplicative form the chain rule runs through
m_i + c_j (s_ij - m_i) and the row minimum, whose sub-gradient goes to the first key holding it
(torch's ``amin`` splits it among tied keys; ties have measure zero).

NaN policy: a NaN in q, k, v, key_bias or key_factor of a key that a row can see makes that row
NaN (as in the reference). Keys a row cannot see are skipped a tile at a time, so unlike the dense
reference (where ``0 * NaN`` reaches every row) a NaN in an invisible key's value reaches a row
only when the key shares a 64-key tile with keys the row sees.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.ops._native import _C, TableCheck, call_op, define_autograd, define_op, dl, stream_of

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_FACTOR_MIN = ("causal", "all")
_WINDOW_BOUND = 2**62  # more keys than any tensor can hold


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, scale: float | None = None,
              window: int | None = None, key_bias: Tensor | None = None, key_factor: Tensor | None = None,
              factor_min: str = "causal", prefix_k: Tensor | None = None, prefix_v: Tensor | None = None) -> Tensor:
    """Attention with every option of the kernel; see the module docstring for the math.

    Args:
        q: [B, Hq, Sq, D] float32, bfloat16 or float16.
        k, v: [B, Hkv, Sk, D] of q's dtype, Hq % Hkv == 0, Sq <= P + Sk.
        causal: mask keys after each query's position.
        scale: the score scale (default D^-1/2).
        window: keep only keys with p_i - j < window (a positive int), or None.
        key_bias: [B or 1, P + Sk] (or [P + Sk]) additive bias on the scaled scores; differentiable.
        key_factor: [B or 1, P + Sk] (or [P + Sk]) multiplicative factor around the row minimum.
        factor_min: "causal" (the minimum over the visible keys) or "all" (over every key).
        prefix_k, prefix_v: [1 or B, Hkv, P, D] shared keys and values before each item's own.

    Returns:
        [B, Hq, Sq, D] in q's dtype.

    Raises:
        TypeError: a non-tensor or a wrong dtype. ValueError: wrong shapes, devices or options.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    for name, t in (("key_bias", key_bias), ("key_factor", key_factor), ("prefix_k", prefix_k),
                    ("prefix_v", prefix_v)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(t).__name__}")
    _check_values(q, k, v, 4)
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError("prefix_k: expected prefix_k and prefix_v together")
    device = q.device
    for name, t in (("prefix_k", prefix_k), ("prefix_v", prefix_v)):
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected the device of q ({device}), got {t.device}")
    if factor_min not in _FACTOR_MIN:
        raise ValueError(f"factor_min: expected 'causal' or 'all', got {factor_min!r}")
    batch, _, sq, dim = q.shape
    keys = k.shape[2] + (0 if prefix_k is None else prefix_k.shape[-2])
    if sq > keys:
        raise ValueError(f"q: expected at most as many queries as keys ({keys}), got {sq}")
    key_bias = _key_vector(key_bias, "key_bias", batch, keys, device)
    key_factor = _key_vector(key_factor, "key_factor", batch, keys, device)
    keep_residual = _keeps_residual(q, k, v, key_bias, key_factor, prefix_k, prefix_v)
    out, *_ = call_op("attention", q, k, v, _unit_last(prefix_k), _unit_last(prefix_v), key_bias, key_factor,
                      None, 0, bool(causal), _scale(scale, dim), _window(window), factor_min == "all", keep_residual)
    return out


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, *, scale: float | None = None,
                     window: int | None = None, max_seqlen: int | None = None) -> Tensor:
    """Causal attention over packed sequences; see the module docstring.

    Args:
        q: [T, Hq, D]; k, v: [T, Hkv, D] of q's dtype.
        cu_seqlens: [n + 1] int32 or int64: 0, non-decreasing, ending at T.
        scale, window: as for :func:`attention`.
        max_seqlen: the longest sequence (CUDA sizes its grid with it; computed when None, which
            synchronises with the GPU once). Ignored on the CPU.

    Returns:
        [T, Hq, D] in q's dtype.

    Raises:
        TypeError, ValueError: as for :func:`attention`; ValueError for a cu_seqlens that does not
        start at 0, decreases or does not end at T; IndexError for an entry outside [0, T].
    """
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens", cu_seqlens)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    _check_values(q, k, v, 3)
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens: expected dtype int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError(f"cu_seqlens: expected a 1-dimensional tensor of at least one entry, got shape "
                         f"{list(cu_seqlens.shape)}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens: expected the device of q ({q.device}), got {cu_seqlens.device}")
    if max_seqlen is None:  # a decreasing table is reported by the kernel, not here
        max_seqlen = max(0, int(cu_seqlens.diff().max().item())) if q.is_cuda and cu_seqlens.shape[0] > 1 else 0
    out, *_ = call_op("attention", q, k, v, None, None, None, None, cu_seqlens.contiguous(), int(max_seqlen),
                      True, _scale(scale, q.shape[-1]), _window(window), False, _keeps_residual(q, k, v))
    return out


def _keeps_residual(q: Tensor, *inputs: Tensor | None) -> bool:
    """Whether the forward should keep out's rounding residual for the backward's delta: calls whose
    gradient autograd will want (the op keeps one only where it applies, see ``_has_residual``)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, *inputs))


def _has_residual(q: Tensor, keep_residual: bool) -> bool:
    """Whether the op writes the residual: asked for, on the CPU (CUDA's backward finds delta itself),
    for bf16 and fp16 (a float32 out is its own fp32 value)."""
    return keep_residual and not q.is_cuda and q.dtype != torch.float32


def _check_values(q: Tensor, k: Tensor, v: Tensor, ndim: int) -> None:
    device = q.device
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name}: expected dtype float32, bfloat16 or float16, got {t.dtype}")
        if t.dim() != ndim:
            layout = "[B, H, S, D]" if ndim == 4 else "[T, H, D]"
            raise ValueError(f"{name}: expected {ndim} dimensions {layout}, got shape {list(t.shape)}")
        if t.device != device:
            raise ValueError(f"{name}: expected the device of q ({device}), got {t.device}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k, v: expected the dtype of q ({q.dtype}), got {k.dtype} and {v.dtype}")
    q_shape, k_shape = q.shape, k.shape
    if k_shape != v.shape:
        raise ValueError(f"v: expected the shape of k ({list(k_shape)}), got {list(v.shape)}")
    if k_shape[-1] != q_shape[-1]:
        raise ValueError(f"k: expected the head dimension of q ({q_shape[-1]}), got shape {list(k_shape)}")
    if q_shape[-1] == 0:
        raise ValueError(f"q: expected a head dimension of at least 1, got shape {list(q_shape)}")
    if k_shape[1] < 1 or q_shape[1] % k_shape[1] != 0:
        raise ValueError(f"k: expected a number of heads that divides the query heads ({q_shape[1]}), got "
                         f"{k_shape[1]}")


def _key_vector(t: Tensor | None, name: str, batch: int, keys: int, device) -> Tensor | None:
    """``t`` as float32 [B, keys], broadcast without a copy from [keys] or [1, keys]."""
    if t is None:
        return None
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point dtype, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: expected the device of q ({device}), got {t.device}")
    if t.dim() not in (1, 2) or t.shape[-1] != keys or (t.dim() == 2 and t.shape[0] not in (1, batch)):
        raise ValueError(f"{name}: expected shape [{batch}, {keys}] (batch, prefix + own keys), or [1, {keys}] or "
                         f"[{keys}], got {list(t.shape)}")
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    if t.dim() == 1 or t.shape[0] != batch:  # a view costs host time on every call: only where it broadcasts
        t = t.expand(batch, keys)
    return _unit_last(t)


def _scale(scale: float | None, dim: int) -> float:
    if scale is None:
        return dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a float or None, got {type(scale).__name__}")
    if scale != scale or scale in (float("inf"), float("-inf")):
        raise ValueError(f"scale: expected a finite number, got {scale}")
    return float(scale)


def _window(window: int | None) -> int:
    if window is None:
        return 0
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window: expected an int or None, got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window: expected a positive number of keys (or None), got {window}")
    return window


def _bounded(window: int) -> int:
    """A window past every key is no window: the op, however called, hands the kernels at most
    _WINDOW_BOUND, which keeps their position + window within int64."""
    return min(window, _WINDOW_BOUND)


def _unit_last(t: Tensor | None) -> Tensor | None:
    if t is None or t.stride(-1) == 1 or t.shape[-1] <= 1:
        return t
    # An empty tensor counts as contiguous whatever its strides, so contiguous() would keep them.
    return t.new_empty(t.shape) if t.numel() == 0 else t.contiguous()


# raise_on_flag raises copies of these.
_FLAG_MESSAGES: dict[int, BaseException] = {
    _C.ATTENTION_BAD_SEQLENS: ValueError("cu_seqlens: expected 0 first, non-decreasing entries, the number of rows "
                                         "of q last, and no sequence longer than max_seqlen"),
    _C.ATTENTION_BAD_ARGMIN: IndexError("row_argmin: expected the keys the forward found, in [0, keys)"),
}


def _table_check(q: Tensor, cu_seqlens: Tensor | None, max_seqlen: int, factor: bool) -> TableCheck:
    """The kernels check the backward's row_argmin on every call, and a cu_seqlens table until it is
    known valid (then no call waits for the GPU); nothing else."""
    tables = () if cu_seqlens is None else ((cu_seqlens, (q.shape[0], max_seqlen)),)
    return TableCheck(tables, q, always=factor)


def _attention(q: Tensor, k: Tensor, v: Tensor, prefix_k: Tensor | None, prefix_v: Tensor | None,
               key_bias: Tensor | None, key_factor: Tensor | None, cu_seqlens: Tensor | None, max_seqlen: int,
               causal: bool, scale: float, window: int, factor_min_all: bool,
               keep_residual: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    # No detach() here or in the backward: autograd records nothing where the op's kernels run (under
    # no_grad or below the autograd key), and a DLPack capsule carries no autograd state.
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # [B, Hq, Sq], varlen [T, Hq]
    if key_factor is None:  # the op's outputs, empty: the kernels take None
        row_min, row_argmin = lse.new_empty(0), lse.new_empty(0, dtype=torch.int64)
        factor_outputs = None, None
    else:
        row_min, row_argmin = torch.empty_like(lse), torch.empty_like(lse, dtype=torch.int64)
        factor_outputs = dl(row_min), dl(row_argmin)
    keep_residual = _has_residual(q, keep_residual)
    residual = torch.empty_like(out) if keep_residual else lse.new_empty(0, dtype=q.dtype)
    check = _table_check(q, cu_seqlens, max_seqlen, factor=False)  # the forward checks only cu_seqlens
    _C.attention_forward(dl(q), dl(k), dl(v), dl(prefix_k), dl(prefix_v), dl(key_bias), dl(key_factor), dl(cu_seqlens),
                         max_seqlen, causal, scale, _bounded(window), factor_min_all, dl(out), dl(lse), *factor_outputs,
                         dl(residual) if keep_residual else None, dl(check.flag), stream_of(q))
    check.raise_on_flag(_FLAG_MESSAGES)
    return out, lse, row_min, row_argmin, residual


def _attention_fake(q, k, v, prefix_k, prefix_v, key_bias, key_factor, cu_seqlens, max_seqlen, causal, scale, window,
                    factor_min_all, keep_residual=False):
    rows = q.shape[:-1]
    factor_rows = rows if key_factor is not None else (0,)
    residual = q.shape if _has_residual(q, keep_residual) else (0,)
    return (q.new_empty(q.shape), q.new_empty(rows, dtype=torch.float32),
            q.new_empty(factor_rows, dtype=torch.float32), q.new_empty(factor_rows, dtype=torch.int64),
            q.new_empty(residual))


define_op("attention(Tensor q, Tensor k, Tensor v, Tensor? prefix_k, Tensor? prefix_v, Tensor? key_bias, "
          "Tensor? key_factor, Tensor? cu_seqlens, int max_seqlen, bool causal, float scale, int window, "
          "bool factor_min_all, bool keep_residual=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)", _attention,
          _attention_fake)


def _attention_backward(grad_out: Tensor, out: Tensor, out_residual: Tensor, q: Tensor, k: Tensor, v: Tensor,
                        prefix_k: Tensor | None, prefix_v: Tensor | None, key_bias: Tensor | None,
                        key_factor: Tensor | None, cu_seqlens: Tensor | None, max_seqlen: int, causal: bool,
                        scale: float, window: int, factor_min_all: bool, lse: Tensor, row_min: Tensor,
                        row_argmin: Tensor) -> tuple[Tensor, ...]:
    q, k, v, grad_out, out = _unit_last(q), _unit_last(k), _unit_last(v), _unit_last(grad_out), _unit_last(out)
    out_residual, lse = _unit_last(out_residual), lse.contiguous()
    grad_q = torch.empty_like(q, memory_format=torch.contiguous_format)
    prefix = 0 if prefix_k is None else prefix_k.shape[2]
    if prefix:
        # The kernels round each gradient once into q's dtype, but a batch-1 prefix that served
        # several items gets the sum of their gradients: then the keys stay fp32 until summed.
        batch, heads, own, dim = k.shape
        shared = batch > 1 and min(prefix_k.shape[0], prefix_v.shape[0]) == 1
        keys_shape = (batch, heads, prefix + own, dim)
        grad_k = q.new_empty(keys_shape, dtype=torch.float32 if shared else None)
    else:
        keys_shape = k.shape
        grad_k = torch.empty_like(k, memory_format=torch.contiguous_format)
    grad_v = torch.empty_like(grad_k)
    delta = torch.empty_like(lse)  # rowsum(grad_out * out), filled by the kernels in fp32
    factor = key_factor is not None
    grad_bias = lse.new_empty(keys_shape[:3]) if key_bias is not None else None
    grad_factor = lse.new_empty(keys_shape[:3]) if factor else None
    grad_min = torch.empty_like(lse) if factor else None
    check = _table_check(q, cu_seqlens, max_seqlen, factor)
    _C.attention_backward(dl(q), dl(k), dl(v), dl(prefix_k), dl(prefix_v), dl(key_bias), dl(key_factor),
                          dl(cu_seqlens), max_seqlen, causal, scale, _bounded(window), factor_min_all, dl(grad_out),
                          dl(out), dl(out_residual) if out_residual.numel() else None, dl(lse),
                          dl(row_min) if factor else None, dl(row_argmin) if factor else None, dl(delta),
                          dl(grad_min), dl(grad_q), dl(grad_k), dl(grad_v), dl(grad_bias), dl(grad_factor),
                          dl(check.flag), stream_of(q))
    check.raise_on_flag(_FLAG_MESSAGES)
    if prefix:
        # (.to() is a no-op where the kernels wrote q's dtype.)
        grad_prefix_k, grad_prefix_v = (
            (g[:, :, :prefix].sum(0, keepdim=True) if t.shape[0] < g.shape[0] else g[:, :, :prefix]).to(q.dtype)
            for g, t in ((grad_k, prefix_k), (grad_v, prefix_v)))
        grad_k, grad_v = grad_k[:, :, prefix:].to(q.dtype), grad_v[:, :, prefix:].to(q.dtype)
    else:
        grad_prefix_k = grad_prefix_v = q.new_empty(0)
    no_key_vector = lse.new_empty(0) if grad_bias is None or grad_factor is None else None
    return (grad_q, grad_k, grad_v, grad_prefix_k, grad_prefix_v,
            grad_bias.sum(1) if grad_bias is not None else no_key_vector,
            grad_factor.sum(1) if grad_factor is not None else no_key_vector)


def _attention_backward_fake(grad_out, out, out_residual, q, k, v, prefix_k, prefix_v, key_bias, key_factor,
                             cu_seqlens, max_seqlen, causal, scale, window, factor_min_all, lse, row_min, row_argmin):
    empty = q.new_empty((0,))
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            empty if prefix_k is None else prefix_k.new_empty(prefix_k.shape),
            empty if prefix_v is None else prefix_v.new_empty(prefix_v.shape),
            q.new_empty(key_bias.shape if key_bias is not None else (0,), dtype=torch.float32),
            q.new_empty(key_factor.shape if key_factor is not None else (0,), dtype=torch.float32))


define_op("attention_backward(Tensor grad_out, Tensor out, Tensor out_residual, Tensor q, Tensor k, Tensor v, "
          "Tensor? prefix_k, Tensor? prefix_v, Tensor? key_bias, Tensor? key_factor, Tensor? cu_seqlens, "
          "int max_seqlen, bool causal, float scale, int window, bool factor_min_all, Tensor lse, Tensor row_min, "
          "Tensor row_argmin) "
          "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", _attention_backward,
          _attention_backward_fake)


def _setup_context(ctx, inputs, output):
    ctx.options = inputs[8:13]  # max_seqlen, causal, scale, window, factor_min_all
    ctx.save_for_backward(*inputs[:8], *output)  # q, k, v, prefix_k, ..., cu_seqlens, out, lse, row_min, ...
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, _grad_lse, _grad_row_min, _grad_row_argmin, _grad_residual):
    if grad_out is None:
        return (None,) * 14
    q, k, v, prefix_k, prefix_v, key_bias, key_factor, cu_seqlens, out, lse, row_min, row_argmin, residual = (
        ctx.saved_tensors)
    grads = call_op("attention_backward", grad_out, out, residual, q, k, v, prefix_k, prefix_v, key_bias, key_factor,
                    cu_seqlens, *ctx.options, lse, row_min, row_argmin)
    grad_q, grad_k, grad_v, grad_prefix_k, grad_prefix_v, grad_bias, grad_factor = grads
    prefix = prefix_k is not None
    return (grad_q, grad_k, grad_v, grad_prefix_k if prefix else None, grad_prefix_v if prefix else None,
            grad_bias if key_bias is not None else None, grad_factor if key_factor is not None else None,
            None, None, None, None, None, None, None)


define_autograd("attention", _backward, _setup_context)

__all__ = ["attention", "varlen_attention"]
