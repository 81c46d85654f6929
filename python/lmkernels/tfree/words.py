"""The T-FREE word splitter and its inverse, native (``lmkernels._C``): exactly the official
``text_to_words`` / ``words_to_text`` of Aleph Alpha's ``trigram_tokenizer``.

``split_words`` cuts text into words and whitespace markers:

- ``<|...|>`` spans without a newline (non-greedy) are special tokens, kept whole; the text between
  them is split on its own, unless that text as a whole starts with ``<|`` and ends with ``|>``
  (such as ``<|\n|>`` alone): then it is kept whole too, as the official code does.
- Runs of letters (Python ``\\w`` minus ``\\d`` and ``_``, Unicode 14.0 as in Python 3.11) are
  words; every other character (a digit, ``_``, punctuation, a combining mark, a tab, ...) is a
  word of its own.
- A single space between two words that expect one disappears; ``<|no_ws|>`` marks a missing
  expected space, ``<|ws|>`` an unexpected one (the expectations are fixed ASCII character sets,
  see :mod:`lmkernels.reference.tfree_words`). A newline is ``<|\\n|>``.
- ``c`` repeated ``<|ws|>`` (or ``<|\\n|>``) tokens become run-length tokens: ``c div 2`` pairs as
  ``<|4<-ws->|>`` while more than two pairs are left, then ``<|2<-ws->|>`` or ``<|4<-ws->|>``,
  then ``<|ws|>`` if ``c`` is odd.

``join_words`` inverts this: ``join_words(split_words(t)) == t`` unless ``t`` itself contains text
that reads as a marker (``<|ws|>``, ``<|no_ws|>``, ``<|\\n|>`` or a run-length token).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmkernels import _C

__all__ = ["split_words", "join_words"]


def split_words(text: str) -> list[str]:
    """The T-FREE words of ``text``, e.g. ``"Hello  world!"`` -> ``["Hello", "<|2<-ws->|>", "world", "!"]``.

    Raises TypeError if ``text`` is not a str and ValueError if it holds a lone surrogate.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text: lone surrogate U+{ord(text[error.start]):04X} at index {error.start} "
                         "(not encodable as UTF-8)") from None
    return _C.tfree_split(encoded)


def join_words(words: Sequence[str]) -> str:
    """The text whose T-FREE split is ``words`` (the inverse of :func:`split_words`).

    Raises TypeError if ``words`` is a str or not a sequence of str, and ValueError for an empty
    word, a word with a lone surrogate, or a run-length token counting more than 2**30.
    """
    if isinstance(words, (str, bytes)) or not isinstance(words, Sequence):
        raise TypeError(f"words: expected a sequence of str, got {type(words).__name__}")
    return _C.tfree_join(words if isinstance(words, list) else list(words))
