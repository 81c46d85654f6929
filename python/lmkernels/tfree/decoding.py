"""T-FREE decoding: a dictionary of candidate words scored against the head's logits.

Each word w has two index sets built from its pattern rows: NE(w) from its non-edge trigrams and
E(w) from its edge trigrams (those starting or ending with the padding space; a word hashed whole
puts every index in NE), and n_w, its number of distinct trigrams (1 when hashed). With
``a = sigmoid(logits)`` and ``S = sum(a)``:

    s_w     = sum_{i in NE(w)} a_i + edge_weight * sum_{i in E(w)} a_i
    score_w = s_w / (m n_w) + (s_w - S) / (v - m n_w)     variant "contrast" (the official default)
    score_w = s_w / (m n_w)                               variant "mean"

and the next word is the argmax of ``softmax(score)``. Words of the prompt that are missing from
the dictionary are scored with it for that request, as the official pipeline does (``generate``).

Words share trigrams, and so pattern rows: 123,600 English words hold 883,000 rows (v = 32000,
m = 10), only 16,300 of them distinct (17,800 with the derived rows below). The decoder keeps a
table of the distinct rows and, per word, the ids of its NE and E rows. Where two rows of one set
share an index (hash collisions, the partial-lowercase rule) or a row holds one twice, the later
occurrence is dropped: the row gives way to a derived row of its remaining indices, itself in the
table, so that each set's rows are disjoint and their sums add up to the set's. The kernel is
given the row table when that takes fewer gathers (the table's indices plus the row ids, against
the sets' indices: 1.06 M against 8.8 M for those words), else the sets themselves (as for a few
unrelated words).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from lmkernels.ops import dictionary_scores, top_words
from lmkernels.tfree.tokenizer import Tokenizer

# The official dictionary starts with these special words (data/generate_tokenizer.py).
SPECIAL_WORDS = ("<|\n|>", "<|endoftext|>", "<|no_ws|>", "<|ws|>", "<|2<-ws->|>", "<|4<-ws->|>", "<|6<-ws->|>",
                 "<|8<-ws->|>", "<|2<-\n->|>", "<|4<-\n->|>", "<|6<-\n->|>", "<|8<-\n->|>", "<|begin_of_text|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _csr_offsets(counts: Tensor) -> Tensor:
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    return offsets


def _append_csr(values: Tensor, offsets: Tensor, new_values: Tensor, new_offsets: Tensor) -> tuple[Tensor, Tensor]:
    return (torch.cat([values, new_values.int()]),
            torch.cat([offsets, (new_offsets[1:] + offsets[-1]).int()]))


def _words_with_a_repeated_index(rows: Tensor, counts: Tensor, starts: Tensor) -> Tensor:
    """[W] bool: the words w whose rows ``rows[starts[w]:starts[w] + counts[w]]`` hold some index twice."""
    repeated = torch.zeros(counts.numel(), dtype=torch.bool)
    # A sort of each word's own indices, batched over the words with as many rows: a sort of all
    # (word, index) keys at once takes about 10x longer for 100,000 words.
    for count in counts[counts > 0].unique().tolist():
        group = (counts == count).nonzero().squeeze(1)
        indices = rows[starts[group, None] + torch.arange(count)].reshape(group.numel(), -1).sort(dim=1).values
        repeated[group] = (indices[:, 1:] == indices[:, :-1]).any(1)
    return repeated


def _expand(ids: Tensor, offsets: Tensor, row_indices: Tensor, row_offsets: Tensor) -> tuple[Tensor, Tensor]:
    """The index sets (CSR) of sets of row ids (CSR): each set's rows, concatenated."""
    ids = ids.long()
    starts, lengths = row_offsets[:-1].long()[ids], row_offsets.diff().long()[ids]
    ends = _csr_offsets(lengths)  # where each row's indices go in the result
    positions = torch.arange(int(ends[-1])) + torch.repeat_interleave(starts - ends[:-1], lengths)
    return row_indices[positions], ends[offsets.long()].int()


def _row_id(known: dict[tuple[int, ...], int], row: tuple[int, ...]) -> int:
    """The table id of a row with these indices: from ``known``, or a new one entered there."""
    return known.setdefault(row, len(known))


def _ids_of_rows(known: dict[tuple[int, ...], int], rows: Tensor, trigram_ids: Tensor) -> Tensor:
    """[R] int64: the table id of each of ``rows`` [R, m]."""
    # A trigram's row is a function of its id, so one row per distinct trigram is looked up
    # (torch.unique over the rows themselves takes seconds for 100,000 words). A hashed word's row
    # (id -1) stands for itself; rows equal in content get one id through ``known``.
    keys = torch.where(trigram_ids >= 0, trigram_ids.long(), -1 - torch.arange(trigram_ids.numel()))
    distinct, inverse = torch.unique(keys, return_inverse=True)
    first = torch.empty(distinct.numel(), dtype=torch.int64).scatter_(0, inverse, torch.arange(keys.numel()))
    table_ids = torch.tensor([_row_id(known, tuple(row)) for row in rows[first].tolist()], dtype=torch.int64)
    return table_ids[inverse]


def _row_sets(known: dict[tuple[int, ...], int], rows: Tensor, trigram_ids: Tensor, word_of_row: Tensor,
              words: int) -> tuple[Tensor, Tensor]:
    """CSR (row ids, offsets) of the words' sets of ``rows`` [R, m] (grouped by word, with their trigram
    ids and words), made disjoint: a row that repeats an index of the word's earlier rows, or one of
    its own, gives way to the row of its remaining indices (to none where none remain)."""
    counts = torch.bincount(word_of_row, minlength=words)
    redo = _words_with_a_repeated_index(rows, counts, counts.cumsum(0) - counts)[word_of_row]
    whole = torch.ones(rows.shape[0], dtype=torch.bool)  # the rows that stay as they are
    row_ids = torch.empty(rows.shape[0], dtype=torch.int64)
    if redo.any():  # only the rows of words with a repeated index go through Python
        stays_whole, derived_ids = [], []  # per row: kept as it is? else the id of its derived row (-1: none)
        taken: set[int] = set()
        previous_word = -1
        for row, word in zip(rows[redo].tolist(), word_of_row[redo].tolist()):
            if word != previous_word:
                taken, previous_word = set(), word
            remaining = [i for i in dict.fromkeys(row) if i not in taken]
            taken.update(remaining)
            stays_whole.append(len(remaining) == len(row))
            derived_ids.append(-1 if stays_whole[-1] or not remaining else _row_id(known, tuple(remaining)))
        whole[redo] = torch.tensor(stays_whole)
        row_ids[redo] = torch.tensor(derived_ids, dtype=torch.int64)
    # Only rows some word keeps enter the table: a row that always gives way would cost the kernel
    # its gathers for nothing.
    row_ids[whole] = _ids_of_rows(known, rows[whole], trigram_ids[whole])
    kept = row_ids >= 0
    return row_ids[kept], _csr_offsets(torch.bincount(word_of_row[kept], minlength=words))


def _cheaper_form(table: dict[str, Tensor], table_cost: int, set_cost: int) -> dict[str, Tensor]:
    """The kernel's arguments that take fewer gathers: the row table, whose gathers are its indices
    plus the sets' row ids, or the words' index sets expanded from it, whose gathers are their indices."""
    if table_cost < set_cost:
        return table
    rows = table["row_indices"], table["row_offsets"]
    ne_indices, ne_offsets = _expand(table["ne_indices"], table["ne_offsets"], *rows)
    edge_indices, edge_offsets = _expand(table["edge_indices"], table["edge_offsets"], *rows)
    return {"ne_indices": ne_indices, "ne_offsets": ne_offsets, "edge_indices": edge_indices,
            "edge_offsets": edge_offsets, "trigram_counts": table["trigram_counts"]}


class WordIndex(Mapping):
    """A read-only map from a word to its position in :attr:`Decoder.words`, which looks a word up in the
    form the dictionary holds it (lowercased where the tokenizer lowercases)."""

    def __init__(self, ids: dict[str, int], entry: Callable[[str], str]):
        self._ids, self._entry = ids, entry

    def __getitem__(self, word: str) -> int:
        return self._ids[self._entry(word)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, word: object) -> bool:
        return self._entry(word) in self._ids


class Decoder:
    """Dictionary decoding: candidate words with their NE/E index sets, scored by the native kernel.

    The sets are kept as rows of a table of distinct pattern rows (see the module docstring);
    :attr:`uses_row_table` says whether the kernel is given that table or the sets' indices.

    ``edge_weight`` and ``variant`` are the defaults of :meth:`scores` and :meth:`top` (the official
    README suggests an edge weight below 0.8 to reduce artifacts; the official default is 1.0).

    Where the tokenizer lowercases, so does the dictionary: ``"Hello"`` is entered, and found, as
    ``"hello"``, the only form the tokenizer gives the model and the only one it could generate;
    ``"Hello" in decoder`` and ``decoder.index["Hello"]`` (the position in :attr:`words`) look it up so.
    """

    def __init__(self, tokenizer: Tokenizer, words: Iterable[str] = (), edge_weight: float = 1.0,
                 variant: str = "contrast"):
        self.tokenizer = tokenizer
        self.edge_weight, self.variant = edge_weight, variant
        self.words: list[str] = []
        self._ids: dict[str, int] = {}  # word -> position in self.words, in the form the dictionary holds it
        # The dictionary as a row table (the arguments of dictionary_scores by name): distinct pattern
        # rows, and per word the ids of its NE and E rows. ``_row_ids`` maps a row's indices to its id.
        empty, zero = torch.zeros(0, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
        self._by_row = {"ne_indices": empty, "ne_offsets": zero, "edge_indices": empty, "edge_offsets": zero,
                        "trigram_counts": empty, "row_indices": empty, "row_offsets": zero}
        self._row_ids: dict[tuple[int, ...], int] = {}
        # Gathers per scoring call of the two forms (see _cheaper_form), kept as words are added.
        self._table_cost = self._set_cost = 0
        self._tensors = _cheaper_form(self._by_row, 0, 0)
        # Copies of the tensors on other devices, made once: a dictionary of 100,000 words holds a few
        # MB of indices, which a GPU decoder would otherwise copy at every step.
        self._on_device: dict[torch.device, dict[str, Tensor]] = {}
        self.add(words)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return self._entry(word) in self._ids

    @property
    def index(self) -> WordIndex:
        """Each word's position in :attr:`words` (the column of :meth:`scores`)."""
        return WordIndex(self._ids, self._entry)

    def _entry(self, word):
        """The form in which the dictionary holds ``word``."""
        return word.lower() if self.tokenizer.lowercase and isinstance(word, str) else word

    @property
    def uses_row_table(self) -> bool:
        """Whether :meth:`scores` passes the kernel the table of distinct rows (else the words' index sets)."""
        return "row_indices" in self._tensors

    def add(self, words: Iterable[str]) -> int:
        """Append the words not yet present (lowercased first where the tokenizer lowercases); each must
        split to exactly one word. Returns how many were added."""
        if isinstance(words, (str, bytes, bytearray)):  # else each character would become a word
            raise TypeError(f"words: expected an iterable of str, got {type(words).__name__} (wrap a single word "
                            "in a list)")
        new: dict[str, None] = {}  # insertion-ordered set: a dictionary can hold a million words
        for word in words:
            if not isinstance(word, str):
                raise TypeError(f"words: expected str entries, got {type(word).__name__}")
            entry = self._entry(word)
            if entry in self._ids or entry in new:
                continue
            pieces = self.tokenizer.split(word)
            if pieces != [entry]:
                lowered = f" (lowercased by the tokenizer to {entry!r})" if entry != word else ""
                raise ValueError(f"words: {word!r}{lowered} is not a single word (it splits into {pieces!r})")
            new[entry] = None
        if not new:
            return 0
        encoding = self.tokenizer.encode_words(list(new))
        ids = encoding.trigram_ids
        edge = (ids >= 0) & (((ids & 0xFF) == 0x20) | ((ids >> 16) == 0x20))
        # New rows go into a copy of the known rows, which replaces this decoder's only once everything
        # else succeeded: an add that fails (or is interrupted) leaves the decoder as it was.
        known = dict(self._row_ids)
        word_of_row = torch.repeat_interleave(torch.arange(encoding.num_words), encoding.row_offsets.diff())
        ne = _row_sets(known, encoding.rows[~edge], ids[~edge], word_of_row[~edge], encoding.num_words)
        e = _row_sets(known, encoding.rows[edge], ids[edge], word_of_row[edge], encoding.num_words)
        added_rows = list(itertools.islice(known, len(self._row_ids), None))
        added_lengths = torch.tensor([len(row) for row in added_rows], dtype=torch.int64)
        table = dict(self._by_row)  # a new dict, as a copy of this decoder (copy.copy) shares the old one
        table["row_indices"], table["row_offsets"] = _append_csr(
            table["row_indices"], table["row_offsets"], torch.tensor(list(itertools.chain.from_iterable(added_rows))),
            _csr_offsets(added_lengths))
        table["ne_indices"], table["ne_offsets"] = _append_csr(table["ne_indices"], table["ne_offsets"], *ne)
        table["edge_indices"], table["edge_offsets"] = _append_csr(table["edge_indices"], table["edge_offsets"], *e)
        table["trigram_counts"] = torch.cat([table["trigram_counts"], encoding.row_offsets.diff().int()])
        row_lengths = table["row_offsets"].diff().long()
        set_cost = self._set_cost + int(row_lengths[ne[0]].sum() + row_lengths[e[0]].sum())
        table_cost = self._table_cost + int(added_lengths.sum()) + ne[0].numel() + e[0].numel()
        tensors = _cheaper_form(table, table_cost, set_cost)
        ids = dict(self._ids)
        ids.update(zip(new, range(len(self.words), len(self.words) + len(new))))
        # One statement, so that nothing can interrupt the decoder half-grown. Every attribute is
        # replaced, so that a shallow copy (copy.copy) grows on its own; only the cache of device
        # copies changes in place, and it belongs to the tensors, which a copy shares until it grows.
        self.__dict__.update(words=self.words + list(new), _ids=ids, _row_ids=known, _by_row=table,
                             _tensors=tensors, _on_device={}, _table_cost=table_cost, _set_cost=set_cost)
        return len(new)

    def scores(self, logits: Tensor, edge_weight: float | None = None, variant: str | None = None) -> Tensor:
        """[Q, W] float32 scores of every word for each row of ``logits`` [Q, v]."""
        if not isinstance(logits, Tensor):
            raise TypeError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
        # The kernel takes v, and the total S of the contrast score, from the logits: a wider head
        # would silently change every score.
        vocab_size = self.tokenizer.vocab_size
        if logits.dim() != 2 or logits.shape[1] != vocab_size:
            raise ValueError(f"logits: expected shape [Q, {vocab_size}] (the tokenizer's vocab_size), got "
                             f"{list(logits.shape)}")
        return dictionary_scores(logits, **self._tensors_on(logits.device), m=self.tokenizer.m,
                                 edge_weight=self.edge_weight if edge_weight is None else edge_weight,
                                 variant=variant or self.variant)

    def _tensors_on(self, device: torch.device) -> dict[str, Tensor]:
        if device.type == "cpu":
            return self._tensors
        copies = self._on_device.get(device)
        if copies is None:
            copies = self._on_device[device] = {name: t.to(device) for name, t in self._tensors.items()}
        return copies

    def top(self, logits: Tensor, k: int = 1, edge_weight: float | None = None, variant: str | None = None,
            ) -> list[list[tuple[str, float]]]:
        """The k best words with their log-probabilities (softmax over the dictionary), per row of logits,
        best first; of equal scores the word added first comes first (NaN scores count as the highest),
        so that ``top(logits, 1)`` is what :func:`~lmkernels.tfree.generate` picks."""
        values, indices = top_words(self.scores(logits, edge_weight, variant), k)
        return [[(self.words[int(i)], float(v)) for v, i in zip(vs, ids)] for vs, ids in zip(values, indices)]


def build_dictionary(tokenizer: Tokenizer, texts: Sequence[str], size: int = 100_000,
                     specials: Sequence[str] = SPECIAL_WORDS) -> list[str]:
    """The official construction: the special words first, then the words of ``texts`` by descending count
    (ties in order of first appearance), ``size`` words in all."""
    for name, value in (("texts", texts), ("specials", specials)):
        if isinstance(value, (str, bytes, bytearray)):  # else read character by character
            raise TypeError(f"{name}: expected a sequence of str, got {type(value).__name__} (wrap a single "
                            "text in a list)")
    if size < 1:
        raise ValueError(f"size: expected a positive int, got {size}")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenizer.split(text))
    return list(dict.fromkeys([*specials, *(w for w, _ in counts.most_common())]))[:size]
