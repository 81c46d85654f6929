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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from lmkernels.ops import dictionary_scores, top_words
from lmkernels.tfree.encoding import Encoding
from lmkernels.tfree.tokenizer import Tokenizer

# The official dictionary starts with these special words (data/generate_tokenizer.py).
SPECIAL_WORDS = ("<|\n|>", "<|endoftext|>", "<|no_ws|>", "<|ws|>", "<|2<-ws->|>", "<|4<-ws->|>", "<|6<-ws->|>",
                 "<|8<-ws->|>", "<|2<-\n->|>", "<|4<-\n->|>", "<|6<-\n->|>", "<|8<-\n->|>", "<|begin_of_text|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _index_sets(encoding: Encoding, keep_rows: Tensor, vocab_size: int) -> tuple[Tensor, Tensor]:
    """CSR (indices int32, offsets int32) of each word's distinct indices over the rows in ``keep_rows``."""
    words = encoding.num_words
    word_of_row = torch.repeat_interleave(torch.arange(words), encoding.row_offsets.diff())
    rows = encoding.rows[keep_rows].long()
    keys = (word_of_row[keep_rows, None] * vocab_size + rows).reshape(-1).unique()  # sorted by (word, index)
    counts = torch.bincount(keys // vocab_size, minlength=words)
    offsets = torch.zeros(words + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    return (keys % vocab_size).int(), offsets.int()


class Decoder:
    """Dictionary decoding: candidate words with their NE/E index sets, scored by the native kernel.

    ``edge_weight`` and ``variant`` are the defaults of :meth:`scores` and :meth:`top` (the official
    README suggests an edge weight below 0.8 to reduce artifacts; the official default is 1.0).
    """

    def __init__(self, tokenizer: Tokenizer, words: Iterable[str] = (), edge_weight: float = 1.0,
                 variant: str = "contrast"):
        self.tokenizer = tokenizer
        self.edge_weight, self.variant = edge_weight, variant
        self.words: list[str] = []
        self.index: dict[str, int] = {}
        empty = torch.zeros(0, dtype=torch.int32)
        self._tensors = (empty, torch.zeros(1, dtype=torch.int32), empty, torch.zeros(1, dtype=torch.int32), empty)
        # Copies of the tensors on other devices, made once: a dictionary of 100,000 words holds about
        # 20 MB of indices, which a GPU decoder would otherwise copy at every step.
        self._on_device: dict[torch.device, tuple[Tensor, ...]] = {}
        self.add(words)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def add(self, words: Iterable[str]) -> int:
        """Append the words not yet present; each must split to exactly one word. Returns how many were added."""
        new: dict[str, None] = {}  # insertion-ordered set: a dictionary can hold a million words
        for word in words:
            if not isinstance(word, str):
                raise TypeError(f"words: expected str entries, got {type(word).__name__}")
            if word in self.index or word in new:
                continue
            pieces = self.tokenizer.split(word)
            if pieces != [word]:
                raise ValueError(f"words: {word!r} is not a single word (it splits into {pieces!r})")
            new[word] = None
        if not new:
            return 0
        encoding = self.tokenizer.encode_words(list(new))
        ids = encoding.trigram_ids
        edge = (ids >= 0) & (((ids & 0xFF) == 0x20) | ((ids >> 16) == 0x20))
        ne_indices, ne_offsets = _index_sets(encoding, ~edge, self.tokenizer.vocab_size)
        e_indices, e_offsets = _index_sets(encoding, edge, self.tokenizer.vocab_size)
        counts = encoding.row_offsets.diff().int()
        for word in new:
            self.index[word] = len(self.words)
            self.words.append(word)
        self._append(ne_indices, ne_offsets, e_indices, e_offsets, counts)
        return len(new)

    def _append(self, ne_indices, ne_offsets, e_indices, e_offsets, counts) -> None:
        old = self._tensors
        self._on_device.clear()
        self._tensors = (torch.cat([old[0], ne_indices]), torch.cat([old[1], ne_offsets[1:] + old[1][-1]]),
                         torch.cat([old[2], e_indices]), torch.cat([old[3], e_offsets[1:] + old[3][-1]]),
                         torch.cat([old[4], counts]))

    def scores(self, logits: Tensor, edge_weight: float | None = None, variant: str | None = None) -> Tensor:
        """[Q, W] float32 scores of every word for each row of ``logits`` [Q, v]."""
        return dictionary_scores(logits, *self._tensors_on(logits.device), m=self.tokenizer.m,
                                 edge_weight=self.edge_weight if edge_weight is None else edge_weight,
                                 variant=variant or self.variant)

    def _tensors_on(self, device: torch.device) -> tuple[Tensor, ...]:
        if device.type == "cpu":
            return self._tensors
        copies = self._on_device.get(device)
        if copies is None:
            copies = self._on_device[device] = tuple(t.to(device) for t in self._tensors)
        return copies

    def top(self, logits: Tensor, k: int = 1, edge_weight: float | None = None, variant: str | None = None,
            ) -> list[list[tuple[str, float]]]:
        """The k best words with their log-probabilities (softmax over the dictionary), per row of logits."""
        values, indices = top_words(self.scores(logits, edge_weight, variant), k)
        return [[(self.words[int(i)], float(v)) for v, i in zip(vs, ids)] for vs, ids in zip(values, indices)]


def build_dictionary(tokenizer: Tokenizer, texts: Sequence[str], size: int = 100_000,
                     specials: Sequence[str] = SPECIAL_WORDS) -> list[str]:
    """The official construction: the special words first, then the words of ``texts`` by descending count
    (ties in order of first appearance), ``size`` words in all."""
    if size < 1:
        raise ValueError(f"size: expected a positive int, got {size}")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenizer.split(text))
    return list(dict.fromkeys([*specials, *(w for w, _ in counts.most_common())]))[:size]
