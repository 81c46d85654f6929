"""``lmk::dictionary_scores``: T-FREE decoding, every dictionary word scored against head logits.

For logits ``l`` [Q, v] and a dictionary of W words, each with a non-edge index set NE(w), an
edge index set E(w) (CSR, int32) and n_w distinct trigrams (1 for hashed words)::

    a_q      = sigmoid(l_q)                                        (fp32)
    s_qw     = sum_{i in NE(w)} a_q[i] + e * sum_{i in E(w)} a_q[i]
    S_q      = sum_{i < v} a_q[i]
    contrast = s_qw / (m n_w) + (s_qw - S_q) / (v - m n_w)        (the official code; default)
    mean     = s_qw / (m n_w)                                      (its commented-out alternative)

``m`` is the number of indices per trigram and ``e`` the edge weight. Where ``v - m n_w <= 0`` (a
word with more trigram slots than the head has outputs) the off-pattern term is taken as 0, so
the contrast score of that word equals its mean score. A dictionary of W = 0 words gives a
[Q, 0] result. NaN logits give NaN scores: under contrast every word of that row (through S_q),
under mean the words whose pattern holds the NaN column. Scores are bitwise reproducible.

Inference only: the op has no gradient (T-FREE decodes with it; training uses the multi-label
loss on the logits), and backpropagating through it raises a RuntimeError.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.ops._native import _C, TableCheck, call_op, define_autograd, define_op, dl, stream_of

_VARIANTS = {"contrast": 0, "mean": 1}
_INDEX_ARGUMENTS = ("ne_indices", "ne_offsets", "edge_indices", "edge_offsets", "trigram_counts")


def dictionary_scores(
    logits: Tensor,
    ne_indices: Tensor,
    ne_offsets: Tensor,
    edge_indices: Tensor,
    edge_offsets: Tensor,
    trigram_counts: Tensor,
    m: int,
    edge_weight: float = 1.0,
    variant: str = "contrast",
) -> Tensor:
    """Score every dictionary word against each row of ``logits``; see the module docstring for the math.

    Args:
        logits: [Q, v] float32, bfloat16 or float16 (the T-FREE head's output).
        ne_indices, ne_offsets: the words' non-edge index sets as CSR: int32 indices in ``[0, v)``,
            distinct within a word, and int32 offsets [W + 1] (0, non-decreasing, ``len(ne_indices)``).
        edge_indices, edge_offsets: the edge index sets, the same way.
        trigram_counts: [W] int32, each word's number of distinct trigrams (>= 1; 1 for hashed words).
        m: indices per trigram (>= 1).
        edge_weight: the weight ``e`` of the edge sums.
        variant: ``"contrast"`` or ``"mean"``.

    Returns:
        [Q, W] float32 scores.
    """
    tensors = dict(zip(("logits",) + _INDEX_ARGUMENTS,
                       (logits, ne_indices, ne_offsets, edge_indices, edge_offsets, trigram_counts)))
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if isinstance(m, bool) or not isinstance(m, int):
        raise TypeError(f"m: expected an int, got {type(m).__name__}")
    if isinstance(edge_weight, bool) or not isinstance(edge_weight, (int, float)):
        raise TypeError(f"edge_weight: expected a float, got {type(edge_weight).__name__}")
    if variant not in _VARIANTS:
        raise ValueError(f"variant: expected 'contrast' or 'mean', got {variant!r}")
    for name in _INDEX_ARGUMENTS:
        if tensors[name].device != logits.device:
            raise ValueError(f"{name}: expected the device of logits ({logits.device}), got {tensors[name].device}")
    return call_op("dictionary_scores", logits, ne_indices, ne_offsets, edge_indices, edge_offsets,
                                           trigram_counts, m, float(edge_weight), variant)


def top_words(scores: Tensor, k: int, softmax: bool = True) -> tuple[Tensor, Tensor]:
    """The ``k`` best words of each row of ``scores`` [Q, W]: (values [Q, k], word indices [Q, k]).

    With ``softmax`` the values are log-probabilities, ``log_softmax`` of the scores over the
    words (T-FREE's default); without, the raw scores. Greedy decoding takes ``indices[:, 0]``.
    """
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores: expected a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"scores: expected 2 dimensions [Q, W], got shape {list(scores.shape)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if not 0 <= k <= scores.shape[1]:
        raise ValueError(f"k: expected 0 <= k <= {scores.shape[1]} (the number of words), got {k}")
    values = torch.log_softmax(scores.float(), dim=-1) if softmax else scores
    return torch.topk(values, k, dim=-1)


def _dictionary_scores(logits: Tensor, ne_indices: Tensor, ne_offsets: Tensor, edge_indices: Tensor,
                       edge_offsets: Tensor, trigram_counts: Tensor, m: int, edge_weight: float,
                       variant: str) -> Tensor:
    if logits.dim() != 2:
        raise ValueError(f"logits: expected 2 dimensions [Q, v], got shape {list(logits.shape)}")
    if trigram_counts.dim() != 1:
        raise ValueError(f"trigram_counts: expected 1 dimension [W], got shape {list(trigram_counts.shape)}")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    dictionary = [t.detach().contiguous() for t in (ne_indices, ne_offsets, edge_indices, edge_offsets,
                                                    trigram_counts)]
    queries, vocab = logits.shape
    scores = torch.empty((queries, trigram_counts.shape[0]), dtype=torch.float32, device=logits.device)
    activations = totals = None
    if logits.is_cuda:
        activations = torch.empty((vocab, queries), dtype=torch.float32, device=logits.device)
        totals = torch.empty(queries, dtype=torch.float32, device=logits.device)
    # A decoder scores against the same dictionary at every step: once the kernels found it valid for
    # this vocabulary, later calls need not wait for the GPU's verdict.
    check = TableCheck(((ne_indices, (vocab,)), (edge_indices, (vocab,)), (ne_offsets, (ne_indices.numel(),)),
                        (edge_offsets, (edge_indices.numel(),)), (trigram_counts, ())), logits)
    _C.dictionary_scores(dl(logits.detach()), *map(dl, dictionary), m, edge_weight, _VARIANTS[variant], dl(scores),
                         dl(activations), dl(totals), dl(check.flag), stream_of(logits))
    check.raise_on_flag({
        _C.DICTIONARY_BAD_INDEX: IndexError(f"ne_indices, edge_indices: an index is out of range for logits of "
                                            f"{vocab} columns"),
        _C.DICTIONARY_BAD_OFFSETS: ValueError("ne_offsets, edge_offsets: expected offsets[0] == 0, non-decreasing, "
                                              "and last == the number of indices"),
        _C.DICTIONARY_BAD_COUNT: ValueError("trigram_counts: expected every word to have at least 1 trigram"),
    })
    return scores


def _dictionary_scores_fake(logits, ne_indices, ne_offsets, edge_indices, edge_offsets, trigram_counts, m,
                            edge_weight, variant):
    return logits.new_empty((logits.shape[0], trigram_counts.shape[0]), dtype=torch.float32)


define_op("dictionary_scores(Tensor logits, Tensor ne_indices, Tensor ne_offsets, Tensor edge_indices, "
          "Tensor edge_offsets, Tensor trigram_counts, int m, float edge_weight, str variant) -> Tensor",
          _dictionary_scores, _dictionary_scores_fake)


def _no_backward(ctx, grad):
    raise RuntimeError("lmk::dictionary_scores is inference-only and has no gradient; T-FREE trains the head with "
                       "the multi-label loss on the logits")


define_autograd("dictionary_scores", _no_backward)
