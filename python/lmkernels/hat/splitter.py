"""The HAT word splitter, native (``lmkernels._C``): exactly the official ``hat-splitter`` 0.1.10
package (Aleph Alpha's Rust implementation of the HAT splitting rule), Unicode 16.0.0.

``split(text)`` cuts text into words in five steps:

1. UAX #29 word boundaries as the Rust crate ``unicode-segmentation`` 1.12.0 finds them
   (``split_word_bounds``: every segment, spaces and punctuation included; no dictionary
   segmentation, so each Han ideograph and each Hiragana character is a segment of its own,
   while Katakana runs, Hangul syllables and numbers such as ``3,999.99`` stay together);
2. a cut after every punctuation character (general category P*: ``_`` and ``'`` are, ``$+<>^|~``
   are not) and between a lowercase letter (Ll) and an uppercase one (Lu);
3. runs of single-space pieces merged into one;
4. each piece classified: exactly ``" "`` is a Space, all White_Space is Whitespace, one P*
   character is Punctuation, anything else a Word;
5. pieces grouped left to right: a Word joins a group that ends in a Space, a Punctuation joins
   one that ends in a Space, Word or Punctuation; anything else starts a new group (a word).

So ``"Hello, world!"`` -> ``["Hello,", " world!"]``: one leading space belongs to the word after
it, punctuation to the word before it, and longer runs of spaces, tabs and newlines stand alone.
The words always concatenate back to the text.

``split_with_limit(text, max_bytes)`` then cuts every word longer than ``max_bytes`` UTF-8 bytes
into chunks of at most ``max_bytes`` bytes, each cut moved back to the last character boundary
inside the chunk, or left inside a character when the chunk holds none (so chunks may be invalid
UTF-8: ``split_with_limit("🌝", 2) == [b"\\xf0\\x9f", b"\\x8c\\x9d"]``).

The split is causal: for every prefix of a text, each word of the prefix's split is a byte-prefix
of the word at the same index in the split of the whole text, which is what lets a HAT model decide
word boundaries while it generates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lmkernels import _C

__all__ = ["DEFAULT_SPECIAL_TOKENS", "HATRuleSplitter", "SplitBatch", "split", "split_batch", "split_with_limit"]

# The special tokens of the released HAT models: each becomes a one-byte word whose byte never
# starts valid UTF-8 (0xC0).
DEFAULT_SPECIAL_TOKENS: Mapping[str, int] = {"<|eot_id|>": 192}


def split(text: str) -> list[str]:
    """The HAT words of ``text``, e.g. ``"howAreYou, ok"`` -> ``["how", "Are", "You,", " ok"]``.

    Raises TypeError if ``text`` is not a str and ValueError if it holds a lone surrogate.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    return _C.hat_split(text)


def split_with_limit(text: str, max_bytes: int) -> list[bytes]:
    """The HAT words of ``text`` as UTF-8 bytes, each cut into chunks of at most ``max_bytes``.

    Raises TypeError for a non-str ``text`` or a non-int ``max_bytes``, and ValueError for
    ``max_bytes < 1`` or a lone surrogate in ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    return _C.hat_split_with_limit(text, _check_max_bytes(max_bytes, "max_bytes"))


@dataclass(frozen=True)
class SplitBatch:
    """Words of a batch of texts, flat: word ``w`` is ``bytes[word_offsets[w]:word_offsets[w + 1]]``
    and the words of text ``t`` are ``text_word_offsets[t]`` up to ``text_word_offsets[t + 1]``.

    ``bytes`` (uint8) is the texts' UTF-8 back to back, with each special token replaced by its
    byte; the offsets are int64. The tensors are views of buffers sized for the worst case (one
    word per byte), of which only the touched pages take memory.
    """

    bytes: torch.Tensor
    word_offsets: torch.Tensor
    text_word_offsets: torch.Tensor

    def __len__(self) -> int:
        return self.text_word_offsets.numel() - 1

    @property
    def num_words(self) -> int:
        return self.word_offsets.numel() - 1

    def word_lengths(self) -> torch.Tensor:
        """Bytes per word, int64 ``[num_words]``."""
        return self.word_offsets.diff()

    def words(self, t: int) -> list[bytes]:
        """The words of text ``t`` as bytes."""
        if not -len(self) <= t < len(self):
            raise IndexError(f"t: text {t} of a batch of {len(self)}")
        t %= len(self)
        first, last = int(self.text_word_offsets[t]), int(self.text_word_offsets[t + 1])
        ends = self.word_offsets[first:last + 1].tolist()
        data = self.bytes[ends[0]:ends[-1]].numpy().tobytes()
        return [data[a - ends[0]:b - ends[0]] for a, b in zip(ends[:-1], ends[1:])]


def split_batch(texts: Sequence[str], max_bytes: int | None = None,
                special_tokens: Mapping[str, int] | None = None) -> SplitBatch:
    """Split many texts at once, on ``lmkernels.num_threads()`` threads with the GIL released.

    Each text's words are those of ``split_with_limit(text, max_bytes)`` (of ``split(text)`` when
    ``max_bytes`` is None), except that where a key of ``special_tokens`` occurs in the text it is
    cut out as a one-byte word holding its value, and the pieces around it are split on their own
    (the HAT models' rule, see :class:`HATRuleSplitter`). At one position the first key that
    matches wins, as with Python's ``re`` alternation.

    Raises TypeError if ``texts`` is not a sequence of str, ValueError for a lone surrogate,
    ``max_bytes < 1``, an empty special token or a byte outside [0, 255].
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts: expected a sequence of str, got {type(texts).__name__}")
    limit = None if max_bytes is None else _check_max_bytes(max_bytes, "max_bytes")
    specials = _check_special_tokens(special_tokens or {})
    total = 0
    for t, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{t}]: expected str, got {type(text).__name__}")
        try:
            total += len(text.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise ValueError(f"texts[{t}]: lone surrogate U+{ord(text[error.start]):04X} at index {error.start} "
                             "(not encodable as UTF-8)") from None
    data = torch.empty(total, dtype=torch.uint8)
    word_offsets = torch.empty(total + 1, dtype=torch.int64)
    text_word_offsets = torch.empty(len(texts) + 1, dtype=torch.int64)
    used, words = _C.hat_split_batch(texts, limit, specials, data, word_offsets, text_word_offsets)
    # The buffers had room for a word per byte: as views they would carry it along (torch.save and
    # share_memory_, as DataLoader workers do, copy a view's whole storage: 5x the offsets of real text).
    data = data if used == total else data[:used].clone()
    return SplitBatch(data, word_offsets[:words + 1].clone(), text_word_offsets)


class HATRuleSplitter:
    """The splitter of the released HAT models (their HF ``splitter.py`` and the vLLM
    ``HATRuleSplitter``): special tokens become one-byte words, the rest is ``split_with_limit``.

        splitter = HATRuleSplitter()                       # {"<|eot_id|>": 192}, max_word_size=100
        splitter.encode("Hi there!<|eot_id|>")            # [[72, 105], [32, 116, 104, 101, 114, 101, 33], [192]]
        splitter.decode([72, 105, 192])                   # "Hi<|eot_id|>"

    ``max_word_size`` is the model's (``config.json``; 100 in the released config class).
    """

    def __init__(self, special_tokens: Mapping[str, int] | None = None, max_word_size: int = 100):
        self.special_tokens = dict(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
        self._specials = _check_special_tokens(self.special_tokens)
        self.max_word_size = _check_max_bytes(max_word_size, "max_word_size")
        self._token_bytes = {byte: text.encode("utf-8") for text, byte in self.special_tokens.items()}

    def encode(self, text: str) -> list[list[int]]:
        """The words of ``text`` as lists of byte values."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        batch = self.encode_batch([text])
        data = batch.bytes.tolist()
        ends = batch.word_offsets.tolist()
        return [data[a:b] for a, b in zip(ends[:-1], ends[1:])]

    def encode_batch(self, texts: Sequence[str]) -> SplitBatch:
        """The words of many texts, flat (see :func:`split_batch`)."""
        return split_batch(texts, self.max_word_size, self.special_tokens)

    def decode(self, byte_values: Sequence[int], errors: str = "replace", skip_special_tokens: bool = False) -> str:
        """Text of byte values: special bytes back to their tokens (or dropped), then UTF-8 with ``errors``."""
        out = bytearray()
        for value in byte_values:
            special = self._token_bytes.get(value)
            if special is None:
                out.append(value)
            elif not skip_special_tokens:
                out += special
        return out.decode("utf-8", errors=errors)


def _check_max_bytes(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected at least 1, got {value}")
    return min(value, 2**63 - 1)  # any limit beyond the text's size means the same: no cut


def _check_special_tokens(special_tokens: Mapping[str, int]) -> list[tuple[str, int]]:
    if not isinstance(special_tokens, Mapping):
        raise TypeError(f"special_tokens: expected a mapping of str to int, got {type(special_tokens).__name__}")
    checked = []
    for token, byte in special_tokens.items():
        if not isinstance(token, str) or not token:
            raise ValueError(f"special_tokens: keys must be non-empty str, got {token!r}")
        if isinstance(byte, bool) or not isinstance(byte, int) or not 0 <= byte <= 255:
            raise ValueError(f"special_tokens[{token!r}]: expected a byte value in [0, 255], got {byte!r}")
        checked.append((token, byte))
    return checked
