"""T-FREE trigram patterns: each word becomes the sparse set of vocabulary indices it activates.

A word ``w`` that contains ``"<|"`` (the splitter's special tokens) is hashed whole; any other word
is padded to ``b" " + utf8(w) + b" "`` and cut into its distinct byte trigrams, trigram
``(b0, b1, b2)`` having the id ``b0 + 256 b1 + 65536 b2`` in ``[0, 2^24)``. With
``MD5(s)`` the 128-bit digest of the UTF-8 bytes of ``s`` read as a big-endian integer, and
``v = vocab_size``, ``k = k_lowercase``:

- trigram row: for ``i = 0 .. m-1``, draw ``MD5(f"{id}_{i}_{j}") mod v`` for ``j = 0, 1, ...``
  until the value is new to the row; sort the ``m`` values ascending. Then, if ``k > 0`` and the
  trigram's bytes are all in ``[A-Za-z ]`` and differ from their lowercase, its last ``k``
  entries are replaced by the last ``k`` entries of the lowercase trigram's row (such rows may be
  unsorted and hold duplicates);
- hashed word: ``MD5(f"{w}_{i}") mod v`` for ``i < m - k``, then
  ``MD5(f"{w.lower()}_lower_{i}") mod v`` for ``i < k`` (Python's ``str.lower()``), unsorted.

This is the official implementation's table (``vocab_population = m``,
``vocab_population_partial_lowercase = k``), bit for bit. Rows are computed on first use and
kept (thread-safe), or all 2^24 at once by :meth:`TrigramPatterns.precompute`. A pickled or copied
table carries its config only: the rows are a function of it, computed again on use, and the full
table would be hundreds of MB.
"""

from __future__ import annotations

import os

import torch

from lmkernels import _C

TRIGRAM_IDS = 1 << 24


class TrigramPatterns:
    """The pattern table of one ``(vocab_size, m, k_lowercase)`` config (see the module docstring)."""

    def __init__(self, vocab_size: int, m: int, k_lowercase: int = 0):
        for name, value in (("vocab_size", vocab_size), ("m", m), ("k_lowercase", k_lowercase)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
        if not 1 <= m <= 64:
            raise ValueError(f"m: expected indices per trigram in [1, 64], got {m}")
        if not 0 <= k_lowercase <= m:
            raise ValueError(f"k_lowercase: expected a value in [0, m = {m}], got {k_lowercase}")
        if not m <= vocab_size <= 2**31:
            raise ValueError(f"vocab_size: expected a value in [m = {m}, 2^31], got {vocab_size}")
        self._table = _C.PatternTable(vocab_size, m, k_lowercase)

    @classmethod
    def _wrap(cls, table) -> TrigramPatterns:
        patterns = cls.__new__(cls)
        patterns._table = table
        return patterns

    @property
    def native(self):
        """The ``_C.PatternTable`` behind this object, for native callers such as the batched encoder."""
        return self._table

    @property
    def vocab_size(self) -> int:
        return self._table.vocab_size

    @property
    def m(self) -> int:
        return self._table.m

    @property
    def k_lowercase(self) -> int:
        return self._table.k_lowercase

    @property
    def rows_computed(self) -> int:
        """How many of the 2^24 trigram rows have been computed and kept."""
        return self._table.rows_computed

    def __reduce__(self):
        return TrigramPatterns, (self.vocab_size, self.m, self.k_lowercase)

    def __repr__(self) -> str:
        return (f"TrigramPatterns(vocab_size={self.vocab_size}, m={self.m}, k_lowercase={self.k_lowercase}; "
                f"{self.rows_computed} rows computed)")

    def trigram_ids(self, word: str) -> list[int]:
        """The distinct trigram ids of ``b" " + utf8(word) + b" "``, ascending."""
        return _C.tfree_trigram_ids(_utf8(word))

    def row(self, trigram_id: int) -> list[int]:
        """The ``m`` indices of one trigram id."""
        if not isinstance(trigram_id, int) or isinstance(trigram_id, bool):
            raise TypeError(f"trigram_id: expected an int, got {type(trigram_id).__name__}")
        if not 0 <= trigram_id < TRIGRAM_IDS:
            raise IndexError(f"trigram_id: expected a trigram id in [0, 2^24), got {trigram_id}")
        return self._table.row(trigram_id)

    def rows(self, trigram_ids: torch.Tensor) -> torch.Tensor:
        """``int32 [n, m]``: the rows of a 1-D integer tensor of trigram ids (computed in parallel)."""
        if not isinstance(trigram_ids, torch.Tensor):
            raise TypeError(f"trigram_ids: expected a torch.Tensor, got {type(trigram_ids).__name__}")
        if trigram_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"trigram_ids: expected dtype int32 or int64, got {trigram_ids.dtype}")
        if trigram_ids.dim() != 1:
            raise ValueError(f"trigram_ids: expected 1 dimension, got shape {tuple(trigram_ids.shape)}")
        if trigram_ids.device.type != "cpu":
            raise ValueError(f"trigram_ids: the pattern table lives on the CPU, got device {trigram_ids.device}")
        ids = trigram_ids.contiguous()
        out = torch.empty(ids.numel(), self.m, dtype=torch.int32)
        self._table.rows(torch.utils.dlpack.to_dlpack(ids), torch.utils.dlpack.to_dlpack(out))
        return out

    def hashed_word(self, word: str) -> list[int]:
        """The ``m`` indices of ``word`` hashed whole (what words containing ``"<|"`` get)."""
        return self._table.hashed_word(_utf8(word))

    def word_pattern(self, word: str) -> list[list[int]]:
        """One row per distinct trigram of ``word`` in ascending id order, or ``[hashed_word(word)]``
        when ``word`` contains ``"<|"``."""
        return self._table.word_pattern(_utf8(word))

    def precompute(self) -> None:
        """Compute every row not yet computed, on all CPU threads (the full table for m = 10 takes
        seconds, and 2^24 * m * 2 bytes when vocab_size <= 65536, else 4 bytes per index)."""
        self._table.precompute()

    def save(self, path: str | os.PathLike) -> None:
        """Write the config and every computed row to ``path`` (OSError where it cannot be written)."""
        path = _file_path(path)
        with open(path, "wb"):  # a missing directory or no permission: the OSError Python gives
            pass
        self._table.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrigramPatterns:
        """The table saved at ``path``; ValueError if the file is not a complete, valid table."""
        path = _file_path(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"path: no such file: {path!r}")
        return cls._wrap(_C.PatternTable.load(path))


def _file_path(path) -> str:
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if "\0" in path:  # the C library would stop at it and use another file
        raise ValueError(f"path: expected no NUL character, got {path!r}")
    return path


def _utf8(word: str) -> bytes:
    if not isinstance(word, str):
        raise TypeError(f"word: expected a str, got {type(word).__name__}")
    if not word:
        raise ValueError("word: expected a non-empty word")
    try:
        return word.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"word: not encodable as UTF-8 ({error.reason})") from None


__all__ = ["TrigramPatterns", "TRIGRAM_IDS"]
