#!/usr/bin/env python3
"""Generate ``csrc/text/hat_unicode.h``: the Unicode properties the HAT word splitter needs, as a
two-stage lookup table, from the Unicode Character Database files of the pinned version.

``hat-splitter`` 0.1.10 (its ``Cargo.lock``) builds on ``unicode-segmentation`` 1.12.0 and
``regex-syntax`` 0.8.5, and both generated their tables from Unicode 16.0.0:

- UAX #29 word boundaries: the Word_Break property (``auxiliary/WordBreakProperty.txt``) and
  Extended_Pictographic (``emoji/emoji-data.txt``), which ``unicode-segmentation`` keeps apart
  because some pictographs are also ALetter;
- the regex classes of the splitter: ``\\p{P}`` (general categories Pc Pd Ps Pe Pi Pf Po),
  ``\\p{Ll}``, ``\\p{Lu}`` (``extracted/DerivedGeneralCategory.txt``) and ``\\s`` (White_Space,
  ``PropList.txt``).

The files are not downloaded here (nothing outside PyPI and GitHub is reachable when this was
written); pass their paths. Where they were taken from: the ``unicode-org/unicodetools``
repository, ``unicodetools/data/ucd/16.0.0/`` (commit ``2c1309ab2ac1de5c62f09089c8ed6bf6f1d37920``).

Usage::

    python3 scripts/gen_hat_unicode.py --ucd DIR [OUTPUT]

with ``DIR`` holding ``WordBreakProperty.txt``, ``emoji-data.txt``, ``DerivedGeneralCategory.txt``
and ``PropList.txt`` (flat, or in the UCD's own ``auxiliary/``, ``emoji/``, ``extracted/``
layout), or each file given on its own (``--word-break``, ``--emoji-data``,
``--general-category``, ``--prop-list``). The script refuses files of another Unicode version.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

UNICODE_VERSION = "16.0.0"
MAX_CODE_POINT = 0x10FFFF
BLOCK_BITS = 7  # code points per second-stage block: 128
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "csrc" / "text" / "hat_unicode.h"

# Word_Break values in the order of the C++ enum (Other = 0: the value of unlisted code points).
WORD_BREAK_VALUES = ("Other", "CR", "LF", "Newline", "Extend", "ZWJ", "Regional_Indicator", "Format", "Katakana",
                     "Hebrew_Letter", "ALetter", "Single_Quote", "Double_Quote", "MidNumLet", "MidLetter", "MidNum",
                     "Numeric", "ExtendNumLet", "WSegSpace")
WORD_BREAK_BITS = 5
FLAGS = {  # bit of each flag above the Word_Break value
    "kExtendedPictographic": 1 << 5,
    "kPunctuation": 1 << 6,
    "kLowercaseLetter": 1 << 7,
    "kUppercaseLetter": 1 << 8,
    "kWhiteSpace": 1 << 9,
}
PUNCTUATION_CATEGORIES = {"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"}

# UCD file name -> (its place in the UCD tree, the version line the file must start with).
FILES = {
    "word_break": ("auxiliary/WordBreakProperty.txt", f"# WordBreakProperty-{UNICODE_VERSION}.txt"),
    "emoji_data": ("emoji/emoji-data.txt", f"# Used with Emoji Version {UNICODE_VERSION.rsplit('.', 1)[0]} "),
    "general_category": ("extracted/DerivedGeneralCategory.txt", f"# DerivedGeneralCategory-{UNICODE_VERSION}.txt"),
    "prop_list": ("PropList.txt", f"# PropList-{UNICODE_VERSION}.txt"),
}

_LINE = re.compile(r"^([0-9A-F]{4,6})(?:\.\.([0-9A-F]{4,6}))?\s*;\s*([A-Za-z_]+)")


def read_property_file(path: Path, version_line: str) -> list[tuple[int, int, str]]:
    """The ``(first, last, value)`` lines of a UCD property file, after checking its version."""
    text = path.read_text(encoding="utf-8")
    if not any(line.startswith(version_line) for line in text.splitlines()[:12]):
        raise SystemExit(f"{path}: not the Unicode {UNICODE_VERSION} file (no line starting {version_line!r})")
    entries = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            first = int(match.group(1), 16)
            last = int(match.group(2), 16) if match.group(2) else first
            entries.append((first, last, match.group(3)))
    return entries


def properties(paths: dict[str, Path]) -> list[int]:
    """The packed property value of every code point (Word_Break value | flags)."""
    value = [0] * (MAX_CODE_POINT + 1)

    def apply(entries, wanted, bits):
        for first, last, name in entries:
            if wanted(name):
                for c in range(first, last + 1):
                    value[c] |= bits(name)

    apply(read_property_file(paths["word_break"], FILES["word_break"][1]), lambda name: True,
          WORD_BREAK_VALUES.index)
    apply(read_property_file(paths["emoji_data"], FILES["emoji_data"][1]),
          lambda name: name == "Extended_Pictographic", lambda name: FLAGS["kExtendedPictographic"])
    category_flag = {**{cat: FLAGS["kPunctuation"] for cat in PUNCTUATION_CATEGORIES},
                     "Ll": FLAGS["kLowercaseLetter"], "Lu": FLAGS["kUppercaseLetter"]}
    apply(read_property_file(paths["general_category"], FILES["general_category"][1]),
          lambda name: name in category_flag, category_flag.__getitem__)
    apply(read_property_file(paths["prop_list"], FILES["prop_list"][1]), lambda name: name == "White_Space",
          lambda name: FLAGS["kWhiteSpace"])
    return value


def two_stage(value: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(block index per block of code points, deduplicated blocks of class ids, class -> value)."""
    classes: dict[int, int] = {}
    class_of = [classes.setdefault(v, len(classes)) for v in value]
    if len(classes) > 256:
        raise SystemExit(f"{len(classes)} distinct property values do not fit a uint8 class id")
    size = 1 << BLOCK_BITS
    blocks: dict[tuple[int, ...], int] = {}
    stage1 = []
    for start in range(0, MAX_CODE_POINT + 1, size):
        block = tuple(class_of[start:start + size])
        stage1.append(blocks.setdefault(block, len(blocks)))
    if len(blocks) > 65536:
        raise SystemExit("too many distinct blocks for a uint16 block index")
    stage2 = [c for block in blocks for c in block]
    by_class = [0] * len(classes)
    for v, c in classes.items():
        by_class[c] = v
    return stage1, stage2, by_class


def _array(ctype: str, name: str, values: list[int], per_line: int, width: int) -> str:
    rows = []
    for start in range(0, len(values), per_line):
        rows.append("    " + " ".join(f"{v:>{width}}," for v in values[start:start + per_line]))
    return f"inline constexpr {ctype} {name}[{len(values)}] = {{\n" + "\n".join(rows) + "\n};\n"


def render(value: list[int]) -> str:
    stage1, stage2, by_class = two_stage(value)
    enum = "\n".join(f"  k{name.replace('_', '')}," for name in WORD_BREAK_VALUES)
    flags = "\n".join(f"inline constexpr uint16_t {name} = {bit};" for name, bit in FLAGS.items())
    return f"""\
// Generated by scripts/gen_hat_unicode.py from the Unicode {UNICODE_VERSION} Character Database; do not edit.
//
// Sources (unicode-org/unicodetools, unicodetools/data/ucd/{UNICODE_VERSION}/, commit 2c1309ab2ac1de5c):
// auxiliary/WordBreakProperty.txt, emoji/emoji-data.txt (Extended_Pictographic),
// extracted/DerivedGeneralCategory.txt (P*, Ll, Lu), PropList.txt (White_Space). Unicode {UNICODE_VERSION} is
// the version of unicode-segmentation 1.12.0 and regex-syntax 0.8.5, which hat-splitter 0.1.10 uses.
//
// Lookup: kBlockOf[c >> {BLOCK_BITS}] picks a block of {1 << BLOCK_BITS} class ids ({len(stage1)} blocks of code points share
// {len(stage2) >> BLOCK_BITS} distinct ones), and kClassProperties maps the class id ({len(by_class)} classes) to the packed
// value: the Word_Break value in the low {WORD_BREAK_BITS} bits, flags above.
#pragma once
#include <cstdint>

namespace lmk::text::hat_unicode {{

inline constexpr char kUnicodeVersion[] = "{UNICODE_VERSION}";

enum WordBreak : uint8_t {{
{enum}
}};

inline constexpr uint16_t kWordBreakMask = {(1 << WORD_BREAK_BITS) - 1};
{flags}

{_array("uint16_t", "kClassProperties", by_class, 12, 4)}
{_array("uint16_t", "kBlockOf", stage1, 16, 3)}
{_array("uint8_t", "kBlockClasses", stage2, 32, 3)}
// The packed properties of code point c (c <= U+10FFFF).
constexpr uint16_t properties(uint32_t c) {{
  return kClassProperties[kBlockClasses[(uint32_t{{kBlockOf[c >> {BLOCK_BITS}]}} << {BLOCK_BITS}) | (c & {(1 << BLOCK_BITS) - 1})]];
}}

}}  // namespace lmk::text::hat_unicode
"""


def resolve_paths(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Path]:
    paths = {}
    for key, (tree_path, _) in FILES.items():
        given = getattr(args, key)
        if given is None and args.ucd is not None:
            for candidate in (args.ucd / tree_path, args.ucd / Path(tree_path).name):
                if candidate.is_file():
                    given = candidate
                    break
        if given is None:
            parser.error(f"{Path(tree_path).name} not found: give --ucd DIR or --{key.replace('_', '-')} PATH")
        paths[key] = given
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--ucd", type=Path, help="directory with the four UCD files")
    for key, (tree_path, _) in FILES.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=Path, help=f"path of {tree_path}")
    args = parser.parse_args(argv)
    args.output.write_text(render(properties(resolve_paths(args, parser))))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
