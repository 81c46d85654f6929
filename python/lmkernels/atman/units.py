"""Perturbation units: the sets of input positions AtMan suppresses together, one pass per unit.

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

Target units: given the target's input tokens too (target[:-1], the last target token is never an
input), units also cover them, at positions P .. P+T-2 of x = prompt ⊕ target[:-1]. A unit lies in
the prompt or in the target, never in both (``Unit.in_target`` says which): a granularity splits the
prompt and the target separately, each with its own text and character offsets, so a word or sentence
that runs on from the prompt into the target becomes two units, and the target's leading whitespace
joins its first unit; "auto" picks one granularity for both, by their total count; custom spans index
x and must not cross the boundary at P (``ValueError``).
"""

from __future__ import annotations

import math
import operator
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
    """Token ``positions`` of x = prompt ⊕ target[:-1] suppressed together; ``label`` is their text (or
    token ids); ``in_target``: the positions lie in the target (P .. P+T-2), not in the prompt."""

    positions: tuple[int, ...]
    label: str
    in_target: bool = False


def build_units(prompt: Tokens, units="token", target: Tokens | None = None, name: str = "prompt") -> list[Unit]:
    """The units of ``prompt`` (called ``name`` in errors) for a granularity name or a list of custom
    (start, end) token spans; with ``target`` (the target's input tokens), of the prompt and then of
    the target (module docstring)."""
    parts = [(name, prompt, 0)] + ([("target", target, len(prompt))] if target is not None else [])
    what = name if target is None else f"{name} and target"
    if isinstance(units, str):
        if units not in GRANULARITIES:
            raise ValueError(f"units: expected one of {', '.join(GRANULARITIES)} or a list of (start, end) "
                             f"spans, got {units!r}")
        if units == "auto":
            return _auto(prompt, target, what, parts)
        found = [Unit(tuple(offset + i for i in group), _label(tokens, group), name == "target")
                 for name, tokens, offset in parts for group in _groups(name, tokens, units)]
    else:
        found = _custom_units(units, parts)
    if not found:
        raise ValueError(f"units: the {what} has no {units if isinstance(units, str) else 'custom'} unit to explain")
    return found


def _groups(name: str, tokens: Tokens, granularity: str) -> list[list[int]]:
    if len(tokens) == 0:  # a one-token target has no input tokens
        return []
    if granularity == "token":
        return [[i] for i in range(len(tokens)) if tokens.text is None or not tokens.special[i]]
    return _text_groups(name, tokens, granularity)


def _auto(prompt: Tokens, target: Tokens | None, what: str, parts) -> list[Unit]:
    if prompt.text is None:
        length = len(prompt) + (len(target) if target is not None else 0)
        size = max(1, math.ceil(length / AUTO_TARGET))
        bounds = [(0, len(prompt))] + ([(len(prompt), length)] if target is not None else [])
        return build_units(prompt, [(start, min(start + size, end)) for first, end in bounds
                                    for start in range(first, end, size)], target, parts[0][0])
    candidates = []
    for granularity in ("token", "word", "sentence", "paragraph"):
        try:
            candidates.append(build_units(prompt, granularity, target, parts[0][0]))
        except ValueError:  # no unit of this kind, e.g. a prompt of special tokens only, or a target without text
            continue
    if not candidates:
        raise ValueError(f"units: the {what} has no text unit to explain")
    return min(candidates, key=lambda found: abs(math.log(len(found) / AUTO_TARGET)))


def _text_groups(name: str, tokens: Tokens, granularity: str) -> list[list[int]]:
    if tokens.text is None:
        raise ValueError(f"units: {granularity!r} needs the {name} as text; token ids support 'token', 'auto' "
                         "and custom spans")
    segment_of = [-1] * len(tokens.text)
    segments = [(m.start() + len(m[0]) - len(m[0].lstrip()), m.start() + len(m[0].rstrip()))
                for m in _SEGMENTS[granularity].finditer(tokens.text)]
    for index, (start, end) in enumerate((start, end) for start, end in segments if end > start):
        segment_of[start:end] = [index] * (end - start)
    groups: dict[int, list[int]] = {}
    pending: list[int] = []  # whitespace tokens before the first unit
    last = None
    for position in range(len(tokens)):
        if tokens.special[position]:
            continue
        start, end = tokens.spans[position]
        segment = next((segment_of[c] for c in range(start, end) if segment_of[c] >= 0), None)
        if segment is None:
            segment = last
        if segment is None:
            pending.append(position)
            continue
        groups.setdefault(segment, []).extend(pending + [position])
        pending, last = [], segment
    return [sorted(group) for _, group in sorted(groups.items())]


def _custom_units(spans, parts: list[tuple[str, Tokens, int]]) -> list[Unit]:
    try:
        pairs = [(operator.index(start), operator.index(end)) for start, end in spans]
    except (TypeError, ValueError):
        raise TypeError("units: expected a granularity name or a list of (start, end) token spans") from None
    length = sum(len(tokens) for _, tokens, _ in parts)
    where = f"the {parts[0][0]}'s" if len(parts) == 1 else "prompt ⊕ target[:-1]'s"
    for start, end in pairs:
        if not 0 <= start < end <= length:
            raise IndexError(f"units: span ({start}, {end}) is empty or outside {where} {length} tokens")
    ordered = sorted(pairs)
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        if start < end:
            raise ValueError(f"units: spans overlap at token {start}")
    boundary = len(parts[0][1])
    found = []
    for start, end in pairs:
        if start < boundary < end:
            raise ValueError(f"units: span ({start}, {end}) crosses the prompt/target boundary at token {boundary}; "
                             "a unit lies in one of them")
        name, tokens, offset = parts[start >= boundary]
        found.append(Unit(tuple(range(start, end)), _label(tokens, list(range(start - offset, end - offset))),
                          name == "target"))
    return found


def _label(tokens: Tokens, group: list[int]) -> str:
    if tokens.text is None:
        return " ".join(tokens.piece(i) for i in group)
    pieces = [i for i in group if not tokens.special[i]]
    if not pieces:
        return " ".join(tokens.piece(i) for i in group)
    start = min(tokens.spans[i][0] for i in pieces)
    end = max(tokens.spans[i][1] for i in pieces)
    return tokens.text[start:end]
