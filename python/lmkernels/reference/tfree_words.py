"""Reference T-FREE word splitter and inverse: the official algorithm (``text_to_words`` /
``words_to_text`` of Aleph Alpha's ``trigram_tokenizer``) in plain Python with :mod:`re`.

It is the test oracle of :mod:`lmkernels.tfree.words` and the baseline of its benchmark, so it
follows the official steps one list at a time and is deliberately not optimised.

``split_words(text)``:

1. Split ``text`` by the regex ``(<\\|.*?\\|>)`` (``.`` does not match a newline). A piece that
   starts with ``<|`` and ends with ``|>`` is one word; every other piece goes through 2-5 on
   its own.
2. Split the piece by ``(\\d|\\W|_)``, dropping empty strings: runs of word characters that are
   neither digits nor ``_`` stay together, every other character is a segment of its own.
3. Whitespace compression (only ``" "`` is whitespace): between two non-space segments ``a, b``
   where a space would be expected (``a[-1]`` not in NO_SPACE_AFTER and ``b[0]`` not in
   NO_SPACE_BEFORE) insert ``<|no_ws|>``. Then a space is dropped where it is expected (both of
   its neighbours expect one) and otherwise kept as ``<|ws|>``; a first or last space is always
   kept.
4. Every ``"\\n"`` segment becomes ``<|\\n|>``.
5. A run of ``c`` equal ``<|ws|>`` or ``<|\\n|>`` tokens becomes run-length tokens: with
   ``p, r = divmod(c, 2)``, ``<|4F|>`` while ``p > 2`` (``p -= 2``), then ``<|2pF|>`` if
   ``p > 0``, then the base token if ``r == 1``; ``F`` is ``<-ws->`` or ``<-\\n->``.

``join_words(words)`` undoes 5, then puts a space between two neighbours that expect one (neither
is a ``<|...|>`` token, ``a[-1]`` not in NO_SPACE_AFTER, ``b[0]`` not in NO_SPACE_BEFORE), and
maps ``<|ws|>`` to ``" "``, ``<|no_ws|>`` to nothing and ``<|\\n|>`` to ``"\\n"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

WHITESPACE = " "
LINEBREAK = "\n"
DIGITS = "1234567890"
NO_SPACE_AFTER = "#$=-+*/'\"\\(<[]~^&@%_\n "
NO_SPACE_BEFORE = ".,:;?!=-+*/'\"\\)>]~^&@%_\n " + DIGITS

NO_WHITESPACE_TOKEN = "<|no_ws|>"
WHITESPACE_TOKEN = "<|ws|>"
LINEBREAK_TOKEN = "<|\n|>"
RUN_MARKERS = {WHITESPACE_TOKEN: "<-ws->", LINEBREAK_TOKEN: "<-\n->"}

_SPECIAL = re.compile(r"(<\|.*?\|>)")
_SEGMENT = re.compile(r"(\d|\W|\_)")


def _is_special(word: str) -> bool:
    return word.startswith("<|") and word.endswith("|>")


def split_words(text: str) -> list[str]:
    """The T-FREE words of ``text`` (steps 1-5 of the module docstring)."""
    words: list[str] = []
    for piece in _SPECIAL.split(text):
        if _is_special(piece):
            words.append(piece)
            continue
        segments = [s for s in _SEGMENT.split(piece) if s != ""]
        segments = _compress_whitespace(segments)
        segments = [LINEBREAK_TOKEN if s == LINEBREAK else s for s in segments]
        words.extend(s for s in _merge_runs(segments) if s != "")
    return words


def join_words(words: Sequence[str]) -> str:
    """The text whose split is ``words``: the inverse of :func:`split_words`."""
    segments = _expand_runs(list(words))
    segments = _restore_whitespace(segments)
    return "".join(LINEBREAK if s == LINEBREAK_TOKEN else s for s in segments)


def _compress_whitespace(segments: list[str]) -> list[str]:
    if not segments:
        return segments
    marked = []
    for last, following in zip(segments[:-1], segments[1:]):
        marked.append(last)
        if last != WHITESPACE and following != WHITESPACE:
            if not (last[-1] in NO_SPACE_AFTER or following[0] in NO_SPACE_BEFORE):
                marked.append(NO_WHITESPACE_TOKEN)
    marked.append(segments[-1])

    result = [WHITESPACE_TOKEN if marked[0] == WHITESPACE else marked[0]]
    for last, middle, following in zip(marked[:-2], marked[1:-1], marked[2:]):
        if middle != WHITESPACE:
            result.append(middle)
        elif ((last[-1] in NO_SPACE_AFTER and last != WHITESPACE_TOKEN)
              or (following[0] in NO_SPACE_BEFORE and following != WHITESPACE_TOKEN)
              or _is_special(last) or _is_special(following)):
            result.append(WHITESPACE_TOKEN)  # a space where none is expected is kept
    if len(marked) > 1:
        result.append(WHITESPACE_TOKEN if marked[-1] == WHITESPACE else marked[-1])
    return result


def _merge_runs(segments: list[str]) -> list[str]:
    result = []
    i = 0
    while i < len(segments):
        token = segments[i]
        i += 1
        if token not in RUN_MARKERS:
            result.append(token)
            continue
        count = 1
        while i < len(segments) and segments[i] == token:
            count += 1
            i += 1
        marker = RUN_MARKERS[token]
        pairs, odd = divmod(count, 2)
        while pairs > 2:
            result.append(f"<|4{marker}|>")
            pairs -= 2
        if pairs > 0:
            result.append(f"<|{pairs * 2}{marker}|>")
        if odd:
            result.append(token)
    return result


def _expand_runs(words: list[str]) -> list[str]:
    result = []
    for word in words:
        markers = [token for token, marker in RUN_MARKERS.items() if marker in word]
        if _is_special(word) and word[2] in DIGITS and markers:
            end = 3
            while word[end] in DIGITS:
                end += 1
            result.extend([markers[0]] * int(word[2:end]))
        else:
            result.append(word)
    return result


def _restore_whitespace(segments: list[str]) -> list[str]:
    if not segments:
        return segments
    spaced = []
    for previous, following in zip(segments[:-1], segments[1:]):
        spaced.append(previous)
        if (previous != NO_WHITESPACE_TOKEN and following != NO_WHITESPACE_TOKEN
                and previous[-1] not in NO_SPACE_AFTER and following[0] not in NO_SPACE_BEFORE
                and previous != WHITESPACE_TOKEN and following != WHITESPACE_TOKEN
                and not _is_special(previous) and not _is_special(following)):
            spaced.append(WHITESPACE_TOKEN)
    spaced.append(segments[-1])
    return [WHITESPACE if s == WHITESPACE_TOKEN else s for s in spaced if s != NO_WHITESPACE_TOKEN]
