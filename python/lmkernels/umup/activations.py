"""Unit-scaled nonlinearities, attention, dropout and the loss (re-exported by ``lmkernels.umup.functional``).

The scales of the nonlinearities are empirical models of the output and gradient standard
deviation for a unit-normal input, as functions of the op's multiplier ``mult``, interpolated
geometrically (``logint(a, lo, hi) = lo^(1-a) hi^a``) between the small-``mult`` and large-``mult``
limits, with ``a`` a sigmoid of ``log(mult^2)``. ``mult`` must lie in [1e-150, 1e150] (a ValueError
otherwise, for the loss too): the scales square it, and a float's square overflows beyond about
1e154 and rounds to 0 below about 2e-162, where unit-scaling raises OverflowError or ZeroDivisionError.
"""

from __future__ import annotations

import numbers
from math import log, nan, pi

import torch
import torch.nn.functional as F
from torch import Tensor

from lmkernels.umup.scale import apply_constraint, logarithmic_interpolation, scale_bwd, scale_fwd

_GAUSSIAN_LIMIT = (2 / (1 - 1 / pi)) ** 0.5  # 1 / std of relu(z), z ~ N(0, 1): the large-mult output limit
_MULT_RANGE = (1e-150, 1e150)


def _scaled_elementwise(input: Tensor, fn, output_scale: float, grad_input_scale: float,
                        constraint: str | None) -> Tensor:
    output_scale, grad_input_scale = apply_constraint(constraint, output_scale, grad_input_scale)
    return scale_fwd(fn(scale_bwd(input, grad_input_scale)), output_scale)


def gelu(input: Tensor, mult: float = 1.0, constraint: str | None = "to_output_scale",
         approximate: str = "none") -> Tensor:
    """Unit-scaled GELU with multiplier ``m``::

        y = gelu(m x) / m * logint(a, 2, sqrt(2 / (1 - 1/pi)))        a = 1 / (1 + 1 / (4 m^2))
        s_x = logint(a, 2, sqrt(2))                                   (constrained with s_out)
    """
    _check_mult(mult)
    alpha = 1 / (1 + 0.25 / mult**2)

    def fn(x):
        return F.gelu(x, approximate=approximate) if mult == 1 else F.gelu(x * mult, approximate=approximate) / mult

    return _scaled_elementwise(input, fn, logarithmic_interpolation(alpha, 2.0, _GAUSSIAN_LIMIT),
                               logarithmic_interpolation(alpha, 2.0, 2**0.5), constraint)


def silu(input: Tensor, mult: float = 1.0, constraint: str | None = "to_output_scale", inplace: bool = False) -> Tensor:
    """Unit-scaled SiLU (swish) with multiplier ``m``::

        y = x sigmoid(m x) * logint(1 / (1 + 1 / (4 m^2)), 2, sqrt(2 / (1 - 1/pi)))
        s_x = logint(1 / (1 + 1 / m^2), 2, sqrt(2))                   (constrained with s_out)

    ``inplace`` is not supported (as in unit-scaling).
    """
    _check_mult(mult)
    if inplace:
        raise ValueError("inplace: the unit-scaled silu does not support inplace=True")
    return _scaled_elementwise(input, lambda x: _unscaled_silu(x, mult),
                               logarithmic_interpolation(1 / (1 + 0.25 / mult**2), 2.0, _GAUSSIAN_LIMIT),
                               logarithmic_interpolation(1 / (1 + 1 / mult**2), 2.0, 2**0.5), constraint)


def silu_glu(input: Tensor, gate: Tensor, mult: float = 1.0) -> Tensor:
    """Unit-scaled SwiGLU core ``x * silu(g)`` with multiplier ``m`` (u-muP's ``act_mult``)::

        y = x g sigmoid(m g) * S        s_x = s_g = S        S = logint(1 / (1 + 1 / m^2), 2, sqrt(2))

    (``S = 2^(3/4)`` at ``m = 1``). One scale for both passes, so no constraint argument.
    """
    _check_mult(mult)
    scale = logarithmic_interpolation(1 / (1 + 1 / mult**2), 2.0, 2**0.5)
    output = scale_bwd(input, scale) * _unscaled_silu(scale_bwd(gate, scale), mult)
    return scale_fwd(output, scale)


def softmax(input: Tensor, dim: int, dtype: torch.dtype | None = None, constraint: str | None = "to_output_scale",
            mult: float = 1.0) -> Tensor:
    """Unit-scaled softmax over ``dim`` of size ``D`` with multiplier ``m``::

        y = softmax(m x) * logint(a, D, sqrt(D))         s_x = logint(a, D/m, sqrt(D/m))         a = 1 / (1 + 4 / m^2)

    (the flat limit ``D`` at small ``m``, the one-hot limit ``sqrt(D)`` at large ``m``; ``D^0.9`` at m = 1).
    Over an empty ``dim`` (``D = 0``) both scales are 1 and the result is ``F.softmax``'s, an empty
    tensor; unit-scaling raises "math domain error" there.
    """
    _check_mult(mult)
    size = input.shape[dim]
    if size:
        alpha = 1 / (1 + 4 / mult**2)
        output_scale = logarithmic_interpolation(alpha, size, size**0.5)
        grad_input_scale = logarithmic_interpolation(alpha, size / mult, (size / mult) ** 0.5)
    else:
        output_scale = grad_input_scale = 1.0
    return _scaled_elementwise(input, lambda x: F.softmax(x * mult, dim=dim, dtype=dtype), output_scale,
                               grad_input_scale, constraint)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Unit-scaled dropout: ``F.dropout(x, p) * sqrt(1 - p)``, gradient also times ``sqrt(1 - p)``.

    ``F.dropout`` multiplies kept values by ``1 / (1 - p)``, which preserves the mean but raises the
    standard deviation by ``1 / sqrt(1 - p)``; the extra factor brings it back to unit scale.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1], got {p}")
    if inplace:
        raise ValueError("inplace: the unit-scaled dropout does not support inplace=True")
    scale = (1 - p) ** 0.5
    return _scaled_elementwise(input, lambda x: F.dropout(x, p, training), scale, scale, None)


def attention_output_scale(seq_len: int, d_head: int, mult: float, dropout_p: float, is_causal: bool) -> float:
    """``S`` of ``scaled_dot_product_attention`` for ``seq_len`` keys of ``d_head`` dimensions."""
    uniform_limit = ((log(seq_len) if is_causal else 1) / seq_len) ** 0.5 if seq_len > 1 else 1.0
    return (1 - dropout_p) ** 0.5 / logarithmic_interpolation(1 / (1 + 4 * d_head / mult**2), uniform_limit, 1.0)


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, mult: float = 1.0,
                                 training: bool = True) -> Tensor:
    """Unit-scaled attention with the muP ``1 / d_head`` logit scale and multiplier ``m`` (u-muP's ``attn_mult``)::

        O = softmax(m q k^T / d_head + mask) v * S               s_q = s_k = s_v = S
        S = sqrt(1 - p) / logint(1 / (1 + 4 d_head / m^2), sqrt(c / T), 1)

    with ``T`` the sequence length of ``value`` and ``c = ln T`` if ``is_causal`` else 1: at small
    ``m`` the attention is nearly uniform over ``T`` (or, causally, a harmonic average) keys and
    the output standard deviation falls to ``sqrt(c / T)``. An arbitrary ``attn_mask`` does not
    change the model (only ``is_causal`` does). One position (T = 1) attends only to itself, so
    its limit is 1 (the causal formula would give 0, whose logarithm is undefined). With
    ``d_head = 0`` the output is empty whatever the logits, so the logit scale is ``m`` and the
    result is ``F.scaled_dot_product_attention``'s (unit-scaling raises ZeroDivisionError there).

    ``training=False`` drops no attention weights and keeps the ``sqrt(1 - p)`` in ``S``, the expected
    output, as :func:`dropout` does out of training (unit-scaling has no such argument and always drops).
    """
    _check_mult(mult)
    *_, seq_len, d_head = value.shape
    scale = attention_output_scale(seq_len, d_head, mult, dropout_p, is_causal)
    query, key, value = (scale_bwd(t, scale) for t in (query, key, value))
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                            dropout_p=dropout_p if training else 0.0, is_causal=is_causal,
                                            scale=mult / d_head if d_head else mult)
    return scale_fwd(output, scale)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average: bool | None = None,
                  ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0, mult: float = 1.0) -> Tensor:
    """Unit-scaled cross entropy of logits ``input`` [B, V] (or [V]) with multiplier ``m`` (u-muP's ``loss_mult``)::

        loss = sum_b CE(m z_b, y_b)  (/ B for reduction "mean")        s_z = V / sqrt(V - 1)

    The multiplier ``m`` and the ``1 / B`` apply to the forward value only: the logits' gradient is
    ``(softmax(m z) - onehot(y)) * V / sqrt(V - 1)`` per row, unit scale whatever the batch size
    (rows of ``ignore_index`` still count in ``B``). Flatten [B, T, V] logits to [B T, V] first.
    An empty batch (B = 0) gives ``F.cross_entropy``'s result: NaN, the mean over no rows, for
    "mean" and 0 for "sum" (unit-scaling raises ZeroDivisionError for "mean").
    """
    for name, value, default in (("weight", weight, None), ("size_average", size_average, None),
                                 ("reduce", reduce, None), ("label_smoothing", label_smoothing, 0.0)):
        if value is not default and value != default:  # unit-scaling raises for these too
            raise ValueError(f"{name}: not supported by the unit-scaled cross entropy, got {value!r}")
    _check_mult(mult)
    if input.dim() not in (1, 2):
        raise ValueError(f"input: expected logits of shape [V] or [B, V] (flatten [B, T, V] first), "
                         f"got {list(input.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    batch_size, vocab_size = (1, input.shape[0]) if input.dim() == 1 else input.shape
    if vocab_size < 2:
        raise ValueError(f"input: expected a vocabulary of at least 2 classes, got {vocab_size}")
    input = scale_fwd(scale_bwd(input, vocab_size / (vocab_size - 1) ** 0.5), mult)
    loss = F.cross_entropy(input, target, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return loss
    return scale_fwd(loss, 1 / batch_size if batch_size else nan)


def _unscaled_silu(x: Tensor, mult: float) -> Tensor:
    return F.silu(x) if mult == 1 else x * torch.sigmoid(x * mult)


def _check_mult(mult: float) -> None:
    if isinstance(mult, torch.Tensor) and mult.numel() == 1:
        mult = mult.item()
    if isinstance(mult, bool) or not isinstance(mult, numbers.Real):
        raise TypeError(f"mult: expected a number, got {type(mult).__name__}")
    # A round range inside the one whose squares are finite and nonzero (see the module docstring).
    if not _MULT_RANGE[0] <= mult <= _MULT_RANGE[1]:
        raise ValueError(f"mult: expected a positive finite number in [{_MULT_RANGE[0]:g}, {_MULT_RANGE[1]:g}], "
                         f"got {mult!r}")
