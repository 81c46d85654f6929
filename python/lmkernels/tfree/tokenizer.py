"""``Tokenizer``: T-FREE's tokenizer-free text encoding, from text to trigram pattern rows.

    words   = split(text)                    # the exact official word splitter (invertible)
    pattern = for each distinct byte trigram t of " " + word + " ": T[t]  (m hash indices each)
              or one row of m hashed indices for a word containing "<|"
    text    = join(words)                    # the exact inverse

Batches are encoded in native code, in parallel and without the GIL, into flat CSR tensors
(:class:`~lmkernels.tfree.encoding.Encoding`) that feed the embedding kernel directly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from lmkernels import _C
from lmkernels.tfree.encoding import Encoding, TrainingBatch, batch_from_stream
from lmkernels.tfree.patterns import TrigramPatterns
from lmkernels.tfree.words import join_words, split_words

Chunks = Sequence[tuple[str, float]]


class Tokenizer:
    """T-FREE tokenizer with hash vocabulary ``vocab_size`` (v), ``m`` indices per trigram and ``k_lowercase``
    of them shared with the lowercase trigram (the released 7B model: 32000, 10, 2).

    Args:
        lowercase: lowercase every text before splitting (official config option, default off).
        entire_words: hash every word whole instead of by trigrams (official config option).
        patterns: an existing :class:`TrigramPatterns` table to share (its config wins).
    """

    def __init__(self, vocab_size: int = 32000, m: int = 10, k_lowercase: int = 2, lowercase: bool = False,
                 entire_words: bool = False, patterns: TrigramPatterns | None = None):
        self.patterns = patterns if patterns is not None else TrigramPatterns(vocab_size, m, k_lowercase)
        self.lowercase, self.entire_words = bool(lowercase), bool(entire_words)

    @property
    def vocab_size(self) -> int:
        return self.patterns.vocab_size

    @property
    def m(self) -> int:
        return self.patterns.m

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, m={self.m}, k_lowercase={self.patterns.k_lowercase}, "
                f"lowercase={self.lowercase}, entire_words={self.entire_words})")

    def split(self, text: str) -> list[str]:
        return split_words(self._prepare(text, strip=False))

    def join(self, words: Sequence[str]) -> str:
        return join_words(words)

    def word_pattern(self, word: str) -> list[list[int]]:
        """One row of m indices per distinct trigram (ascending trigram id), or the single hashed row."""
        if self.entire_words:
            return [self.patterns.hashed_word(word)]
        return self.patterns.word_pattern(word)

    def encode(self, texts: str | Sequence[str], strip: bool = False) -> Encoding:
        """Encode one text or a batch (inference encoding: texts are not stripped by default)."""
        if isinstance(texts, (bytes, bytearray)):  # else read as a sequence of ints
            raise TypeError(f"texts: expected a str or a sequence of str, got {type(texts).__name__} (decode it "
                            "to str first)")
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._encode([self._prepare(t, strip, f"texts[{i}]") for i, t in enumerate(texts)], split=True)

    def encode_words(self, words: Sequence[str]) -> Encoding:
        """Encode each entry as a single word, without splitting (dictionary entries, generated words);
        lowercased first where the tokenizer lowercases, as ``encode`` does."""
        if isinstance(words, (str, bytes, bytearray)):
            raise TypeError(f"words: expected a sequence of str, got {type(words).__name__} (wrap a single word "
                            "in a list)")
        words = [self._prepare(word, False, f"words[{i}]") for i, word in enumerate(words)]
        return self._encode(words, split=False)

    def encode_training(self, sequences: str | Chunks | Sequence[str | Chunks], seq_len: int | None = None,
                        strip: bool = True, reset_at_endoftext: bool = True) -> TrainingBatch:
        """Training encoding of one sequence or a batch of sequences.

        A sequence is a text, or a list of ``(text, loss_weight)`` chunks (instruction data; a weight is
        a finite real number) that are split separately and concatenated with no whitespace marker
        between them. ``seq_len`` truncates or pads every sequence to that many positions (required
        for batches of unequal length). Texts are stripped before splitting, as the official training
        code does.
        """
        if isinstance(sequences, (bytes, bytearray)) or not isinstance(sequences, Sequence):
            raise TypeError("sequences: expected a str, a list of (text, loss_weight) chunks or a list of those, "
                            f"got {type(sequences).__name__}")
        single = isinstance(sequences, str) or (sequences and isinstance(sequences[0], tuple))
        if single:
            sequences = [sequences]
        if len(sequences) == 0:
            raise ValueError("sequences: expected at least one sequence")
        if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 1):
            raise ValueError(f"seq_len: expected a positive int or None, got {seq_len!r}")
        texts, weights, first_chunk = [], [], []
        for s, sequence in enumerate(sequences):
            name = "sequences" if single else f"sequences[{s}]"
            if not isinstance(sequence, (str, list, tuple)):
                raise TypeError(f"{name}: expected a str or a list of (text, loss_weight) chunks, got "
                                f"{type(sequence).__name__}")
            first_chunk.append(len(texts))
            if isinstance(sequence, str):
                texts.append(self._prepare(sequence, strip, name))
                weights.append(1.0)
                continue
            for c, chunk in enumerate(sequence):
                text, weight = _chunk(chunk, f"{name}[{c}]")
                texts.append(self._prepare(text, strip, f"{name}[{c}]"))
                weights.append(weight)
        first_chunk.append(len(texts))
        encoding = self._encode(texts, split=True)
        starts = encoding.word_offsets[first_chunk[:-1]]
        stops = encoding.word_offsets[first_chunk[1:]]
        if seq_len is None:
            lengths = (stops - starts - 1).clamp(min=0)
            if lengths.unique().numel() > 1:
                raise ValueError(f"seq_len: sequences of unequal length ({sorted(set(lengths.tolist()))} positions) "
                                 "need a common seq_len")
            seq_len = int(lengths[0])
        word_weights = torch.repeat_interleave(torch.tensor(weights), encoding.word_offsets.diff())
        return batch_from_stream(encoding, starts, stops, seq_len, word_weights, reset_at_endoftext)

    def _prepare(self, text, strip: bool, name: str = "text") -> str:
        if not isinstance(text, str):
            raise TypeError(f"{name}: expected str, got {type(text).__name__}")
        if strip:
            text = text.strip()
        return text.lower() if self.lowercase else text

    def _encode(self, texts: list[str], split: bool) -> Encoding:
        word_offsets, row_offsets, rows, trigram_ids, is_eot = _C.tfree_encode(
            self.patterns.native, texts, split, self.entire_words)
        return Encoding(torch.from_numpy(word_offsets), torch.from_numpy(row_offsets),
                        torch.from_numpy(rows).view(-1, self.m), torch.from_numpy(trigram_ids),
                        torch.from_numpy(is_eot).bool())


def _chunk(chunk, name: str) -> tuple[str, float]:
    """The (text, loss_weight) of one instruction chunk."""
    if not isinstance(chunk, (tuple, list)) or len(chunk) != 2:
        raise TypeError(f"{name}: expected a (text, loss_weight) pair, got {chunk!r:.80}")
    text, weight = chunk
    # A str weight such as "0.5" would pass float() and hide a column mix-up.
    if not isinstance(weight, numbers.Real):
        raise TypeError(f"{name}: expected a real number as loss_weight, got {type(weight).__name__}")
    if not math.isfinite(weight):
        raise ValueError(f"{name}: expected a finite loss_weight, got {weight}")
    return text, float(weight)
