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

**Row tables.** Many words share a trigram, and so its m indices: a dictionary of 96,000 English
words holds 684,000 trigram rows but only 14,000 distinct ones. Given a table of pattern rows
(``row_indices``, ``row_offsets``: CSR of int32 vocabulary indices), the sets hold row ids instead
of indices and each row counts as its indices::

    s_qw = sum_{r in NE(w)} sum_{i in row r} a_q[i] + e * sum_{r in E(w)} sum_{i in row r} a_q[i]

The kernels then sum each row's activations once and each word's row sums, about 8x fewer
gathers for a real dictionary. The rows of one set must not share an index for this to equal the
set semantics above (``lmkernels.tfree.Decoder`` builds its table so); the op sums what it is given.

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
    row_indices: Tensor | None = None,
    row_offsets: Tensor | None = None,
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
        row_indices, row_offsets: an optional table of pattern rows as CSR (int32 indices in ``[0, v)``,
            int32 offsets [R + 1]); given, the sets hold row ids in ``[0, R)`` (see the module docstring).

    Returns:
        [Q, W] float32 scores.
    """
    tensors = dict(zip(("logits",) + _INDEX_ARGUMENTS,
                       (logits, ne_indices, ne_offsets, edge_indices, edge_offsets, trigram_counts)))
    if (row_indices is None) != (row_offsets is None):
        raise ValueError("row_indices, row_offsets: expected both or neither")
    if row_indices is not None:
        tensors.update(row_indices=row_indices, row_offsets=row_offsets)
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if isinstance(m, bool) or not isinstance(m, int):
        raise TypeError(f"m: expected an int, got {type(m).__name__}")
    if isinstance(edge_weight, bool) or not isinstance(edge_weight, (int, float)):
        raise TypeError(f"edge_weight: expected a float, got {type(edge_weight).__name__}")
    if variant not in _VARIANTS:
        raise ValueError(f"variant: expected 'contrast' or 'mean', got {variant!r}")
    device = logits.device
    for name, t in tensors.items():
        if t.device != device:
            raise ValueError(f"{name}: expected the device of logits ({device}), got {t.device}")
    return call_op("dictionary_scores", logits, ne_indices, ne_offsets, edge_indices, edge_offsets,
                   trigram_counts, m, float(edge_weight), variant, row_indices, row_offsets)


def top_words(scores: Tensor, k: int, softmax: bool = True) -> tuple[Tensor, Tensor]:
    """The ``k`` best words of each row of ``scores`` [Q, W]: (values [Q, k], word indices [Q, k]).

    Best first; of equal scores the lower index first, as a stable sort and ``argmax`` order them (NaN
    ranks as +inf), so that greedy decoding, ``indices[:, 0]``, is ``scores.argmax(1)`` (in a row
    without both NaN and +inf). With ``softmax`` the values are log-probabilities, ``log_softmax`` of
    the scores over the words (T-FREE's default); without, the raw scores.
    """
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores: expected a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"scores: expected 2 dimensions [Q, W], got shape {list(scores.shape)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if not 0 <= k <= scores.shape[1]:
        raise ValueError(f"k: expected 0 <= k <= {scores.shape[1]} (the number of words), got {k}")
    indices = _first_best(scores, k)  # ranked by the scores: log_softmax can round distinct ones together
    values = torch.log_softmax(scores.float(), dim=-1) if softmax else scores
    return values.gather(1, indices), indices


def _first_best(scores: Tensor, k: int) -> Tensor:
    """[Q, k] int64: per row, the indices of the k highest scores, highest first, equal ones in index order."""
    if k == 0:
        return torch.zeros(scores.shape[0], 0, dtype=torch.int64, device=scores.device)
    keys = torch.where(scores.isnan(), torch.inf, scores)  # NaN compares unequal, even to itself
    values, indices = keys.topk(k, dim=1)
    # topk takes some of the words that share the k-th highest score, not necessarily the first ones:
    # in the rows where more words share it than topk took, take those above it and the first of those
    # equal to it, as a stable sort would (a few passes over those rows only).
    kth = values[:, -1:]
    ambiguous = ((keys == kth).sum(1) > (values == kth).sum(1)).nonzero()[:, 0]  # no branch: torch.compile
    rows, bound = keys[ambiguous], kth[ambiguous]
    above, equal = rows > bound, rows == bound
    first_equal = equal & (equal.cumsum(1, dtype=torch.int32) <= k - above.sum(1, keepdim=True))
    indices[ambiguous] = (above | first_equal).nonzero()[:, 1].view(-1, k)
    indices = indices.sort(dim=1).values  # then by score, stably: equal scores stay in index order
    order = keys.gather(1, indices).sort(dim=1, descending=True, stable=True).indices
    return indices.gather(1, order)


def _dictionary_scores(logits: Tensor, ne_indices: Tensor, ne_offsets: Tensor, edge_indices: Tensor,
                       edge_offsets: Tensor, trigram_counts: Tensor, m: int, edge_weight: float,
                       variant: str, row_indices: Tensor | None = None, row_offsets: Tensor | None = None) -> Tensor:
    if logits.dim() != 2:
        raise ValueError(f"logits: expected 2 dimensions [Q, v], got shape {list(logits.shape)}")
    if trigram_counts.dim() != 1:
        raise ValueError(f"trigram_counts: expected 1 dimension [W], got shape {list(trigram_counts.shape)}")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    factored = row_indices is not None
    if factored and row_offsets.dim() != 1:
        raise ValueError(f"row_offsets: expected 1 dimension [R + 1], got shape {list(row_offsets.shape)}")
    dictionary = [t.contiguous() for t in (ne_indices, ne_offsets, edge_indices, edge_offsets, trigram_counts)]
    rows = [row_indices.contiguous(), row_offsets.contiguous()] if factored else [None, None]
    queries, vocab = logits.shape
    num_rows = row_offsets.shape[0] - 1 if factored else vocab
    scores = torch.empty((queries, trigram_counts.shape[0]), dtype=torch.float32, device=logits.device)
    activations = totals = row_sums = None
    if logits.is_cuda:
        activations = torch.empty((vocab, queries), dtype=torch.float32, device=logits.device)
        totals = torch.empty(queries, dtype=torch.float32, device=logits.device)
        if factored:
            row_sums = torch.empty((max(num_rows, 0), queries), dtype=torch.float32, device=logits.device)
    # A decoder scores against the same dictionary at every step: once the kernels found it valid for
    # this vocabulary, later calls need not wait for the GPU's verdict.
    tables = ((ne_indices, (num_rows,)), (edge_indices, (num_rows,)), (ne_offsets, (ne_indices.numel(),)),
              (edge_offsets, (edge_indices.numel(),)), (trigram_counts, ()))
    if factored:
        tables += ((row_indices, (vocab,)), (row_offsets, (row_indices.numel(),)))
    check = TableCheck(tables, logits)
    _C.dictionary_scores(dl(logits), *map(dl, dictionary), m, edge_weight, _VARIANTS[variant], dl(scores),
                         dl(activations), dl(totals), dl(check.flag), stream_of(logits), *map(dl, rows),
                         dl(row_sums))
    def messages():
        set_range = (f"a row id is out of range for a table of {num_rows} rows" if factored else
                     f"an index is out of range for logits of {vocab} columns")
        return {
            _C.DICTIONARY_BAD_OFFSETS: ValueError("ne_offsets, edge_offsets: expected offsets[0] == 0, non-decreasing, "
                                                  "and last == the number of indices"),
            _C.DICTIONARY_BAD_COUNT: ValueError("trigram_counts: expected every word to have at least 1 trigram"),
            _C.DICTIONARY_BAD_ROW_OFFSETS: ValueError("row_offsets: expected row_offsets[0] == 0, non-decreasing, "
                                                      "and last == the number of row indices"),
            _C.DICTIONARY_BAD_ROW_INDEX: IndexError(f"row_indices: an index is out of range for logits of {vocab} "
                                                    f"columns"),
            _C.DICTIONARY_BAD_INDEX: IndexError(f"ne_indices, edge_indices: {set_range}"),
        }

    check.raise_on_flag(messages)
    return scores


def _dictionary_scores_fake(logits, ne_indices, ne_offsets, edge_indices, edge_offsets, trigram_counts, m,
                            edge_weight, variant, row_indices=None, row_offsets=None):
    return logits.new_empty((logits.shape[0], trigram_counts.shape[0]), dtype=torch.float32)


define_op("dictionary_scores(Tensor logits, Tensor ne_indices, Tensor ne_offsets, Tensor edge_indices, "
          "Tensor edge_offsets, Tensor trigram_counts, int m, float edge_weight, str variant, "
          "Tensor? row_indices=None, Tensor? row_offsets=None) -> Tensor",
          _dictionary_scores, _dictionary_scores_fake)


def _no_backward(ctx, grad):
    raise RuntimeError("lmk::dictionary_scores is inference-only and has no gradient; T-FREE trains the head with "
                       "the multi-label loss on the logits")


define_autograd("dictionary_scores", _no_backward)
