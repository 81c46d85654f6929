"""Reference T-FREE trigram patterns in plain Python with ``hashlib.md5``: the test oracle of
``lmkernels.tfree.patterns`` (the rules are in that module's docstring)."""

from __future__ import annotations

import hashlib

_LETTERS_AND_SPACE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ")


def md5_mod(text: str, vocab_size: int) -> int:
    """The MD5 digest of ``text``'s UTF-8 bytes as a big-endian integer, mod ``vocab_size``."""
    return int(hashlib.md5(text.encode()).hexdigest(), 16) % vocab_size


def trigram_ids(word: str) -> list[int]:
    """Distinct byte trigrams of ``b" " + utf8(word) + b" "`` as ``b0 + 256 b1 + 65536 b2``, ascending."""
    padded = f" {word} ".encode()
    return sorted({padded[i] + 256 * padded[i + 1] + 65536 * padded[i + 2] for i in range(len(padded) - 2)})


def drawn_row(trigram_id: int, vocab_size: int, m: int) -> list[int]:
    """The sorted row of a trigram before the lowercase surgery."""
    row: list[int] = []
    for k in range(m):
        j = 0
        while (x := md5_mod(f"{trigram_id}_{k}_{j}", vocab_size)) in row:
            j += 1
        row.append(x)
    return sorted(row)


def trigram_row(trigram_id: int, vocab_size: int, m: int, k_lowercase: int) -> list[int]:
    """The row of a trigram: drawn, sorted, then the partial-lowercase surgery."""
    row = drawn_row(trigram_id, vocab_size, m)
    trigram = bytes([trigram_id & 0xFF, (trigram_id >> 8) & 0xFF, trigram_id >> 16])
    if k_lowercase > 0 and set(trigram) <= _LETTERS_AND_SPACE and trigram.lower() != trigram:
        lower_id = int.from_bytes(trigram.lower(), "little")
        row[m - k_lowercase:] = drawn_row(lower_id, vocab_size, m)[m - k_lowercase:]
    return row


def hashed_word(word: str, vocab_size: int, m: int, k_lowercase: int) -> list[int]:
    """The row of a word hashed whole: ``m - k`` hashes of the word, ``k`` of its ``str.lower()``."""
    return ([md5_mod(f"{word}_{i}", vocab_size) for i in range(m - k_lowercase)]
            + [md5_mod(f"{word.lower()}_lower_{i}", vocab_size) for i in range(k_lowercase)])


def word_pattern(word: str, vocab_size: int, m: int, k_lowercase: int) -> list[list[int]]:
    """One row per distinct trigram in ascending id order, or the hashed row of a word with ``"<|"``."""
    if "<|" in word:
        return [hashed_word(word, vocab_size, m, k_lowercase)]
    return [trigram_row(t, vocab_size, m, k_lowercase) for t in trigram_ids(word)]
