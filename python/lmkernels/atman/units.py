"""Perturbation units: the sets of prompt positions AtMan suppresses together, one pass per unit.

Granularities (the API's ``prompt_granularity``):

    "token"      one unit per prompt token (tokens the tokenizer added, e.g. BOS, excluded when text is known)
    "word"       maximal runs of non-whitespace characters
    "sentence"   text up to and including a run of . ! ? followed by whitespace, or up to a line break
    "paragraph"  text between blank lines
    "auto"       of the four, the one whose unit count is nearest to about 30 (in ratio); without
                 text, contiguous chunks of tokens, about 30 of them
    [(start, end), ...]  custom half-open token ranges: within the prompt, non-empty, non-overlapping

A token joins the text unit that holds its first non-whitespace character; a token of whitespace
only joins the unit before it (the one after, at the start of the prompt).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lmkernels.atman.tokens import Tokens

GRANULARITIES = ("token", "word", "sentence", "paragraph", "auto")
AUTO_TARGET = 30

_SEGMENTS = {
    "word": re.compile(r"\S+"),
    "sentence": re.compile(r"[^\n]*?(?:[.!?]+(?=\s|$)|(?=\n)|$)", re.S),
    "paragraph": re.compile(r"\S(?:.*?\S)??(?=\s*\n\s*\n|\s*$)", re.S),
}


@dataclass(frozen=True)
class Unit:
    """Prompt token ``positions`` suppressed together; ``label`` is their text (or token ids)."""

    positions: tuple[int, ...]
    label: str


def build_units(prompt: Tokens, units="token") -> list[Unit]:
    """The units of ``prompt`` for a granularity name or a list of custom (start, end) token spans."""
    if isinstance(units, str):
        if units not in GRANULARITIES:
            raise ValueError(f"units: expected one of {', '.join(GRANULARITIES)} or a list of (start, end) "
                             f"spans, got {units!r}")
        if units == "auto":
            return _auto(prompt)
        if units == "token":
            groups = [[i] for i in range(len(prompt)) if prompt.text is None or not prompt.special[i]]
        else:
            groups = _text_groups(prompt, units)
    else:
        groups = _custom_groups(units, len(prompt))
    if not groups:
        raise ValueError(f"units: the prompt has no {units if isinstance(units, str) else 'custom'} unit to explain")
    return [Unit(tuple(group), _label(prompt, group)) for group in groups]


def _auto(prompt: Tokens) -> list[Unit]:
    if prompt.text is None:
        size = max(1, math.ceil(len(prompt) / AUTO_TARGET))
        return build_units(prompt, [(start, min(start + size, len(prompt))) for start in range(0, len(prompt), size)])
    candidates = []
    for granularity in ("token", "word", "sentence", "paragraph"):
        try:
            candidates.append(build_units(prompt, granularity))
        except ValueError:  # no unit of this kind, e.g. a prompt of special tokens only
            continue
    if not candidates:
        raise ValueError("units: the prompt has no text unit to explain")
    return min(candidates, key=lambda found: abs(math.log(len(found) / AUTO_TARGET)))


def _text_groups(prompt: Tokens, granularity: str) -> list[list[int]]:
    if prompt.text is None:
        raise ValueError(f"units: {granularity!r} needs the prompt as text; token ids support 'token', 'auto' "
                         "and custom spans")
    segment_of = [-1] * len(prompt.text)
    segments = [(m.start() + len(m[0]) - len(m[0].lstrip()), m.start() + len(m[0].rstrip()))
                for m in _SEGMENTS[granularity].finditer(prompt.text)]
    for index, (start, end) in enumerate((start, end) for start, end in segments if end > start):
        segment_of[start:end] = [index] * (end - start)
    groups: dict[int, list[int]] = {}
    pending: list[int] = []  # whitespace tokens before the first unit
    last = None
    for position in range(len(prompt)):
        if prompt.special[position]:
            continue
        start, end = prompt.spans[position]
        segment = next((segment_of[c] for c in range(start, end) if segment_of[c] >= 0), None)
        if segment is None:
            segment = last
        if segment is None:
            pending.append(position)
            continue
        groups.setdefault(segment, []).extend(pending + [position])
        pending, last = [], segment
    return [sorted(group) for _, group in sorted(groups.items())]


def _custom_groups(spans, length: int) -> list[list[int]]:
    try:
        pairs = [(int(start), int(end)) for start, end in spans]
    except (TypeError, ValueError):
        raise TypeError("units: expected a granularity name or a list of (start, end) token spans") from None
    for start, end in pairs:
        if not 0 <= start < end <= length:
            raise IndexError(f"units: span ({start}, {end}) is empty or outside the prompt's {length} tokens")
    ordered = sorted(pairs)
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        if start < end:
            raise ValueError(f"units: spans overlap at token {start}")
    return [list(range(start, end)) for start, end in pairs]


def _label(prompt: Tokens, group: list[int]) -> str:
    if prompt.text is None:
        return " ".join(prompt.piece(i) for i in group)
    pieces = [i for i in group if not prompt.special[i]]
    if not pieces:
        return " ".join(prompt.piece(i) for i in group)
    start = min(prompt.spans[i][0] for i in pieces)
    end = max(prompt.spans[i][1] for i in pieces)
    return prompt.text[start:end]
