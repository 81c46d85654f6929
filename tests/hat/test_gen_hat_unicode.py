"""scripts/gen_hat_unicode.py: it reads the UCD files it is given (checking their version) into a
two-stage table whose lookups give each code point's properties; and the committed header's
lookups agree with Unicode 16.0 on characters whose properties are known."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gen_hat_unicode", ROOT / "scripts" / "gen_hat_unicode.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def lookup(header: str):
    """The header's properties(c), evaluated from its arrays."""
    arrays = {name: [int(v) for v in re.findall(r"\d+", body)]
              for name, body in re.findall(r"inline constexpr uint\d+_t (\w+)\[\d+\] = \{(.*?)\};", header, re.S)}
    bits = int(re.search(r"kBlockOf\[c >> (\d+)\]", header).group(1))

    def properties(c: int) -> int:
        block = arrays["kBlockOf"][c >> bits]
        return arrays["kClassProperties"][arrays["kBlockClasses"][(block << bits) | (c & ((1 << bits) - 1))]]

    return properties


def flags(*names):
    return sum(gen.FLAGS[name] for name in names)


def word_break(name):
    return gen.WORD_BREAK_VALUES.index(name)


def write_ucd(directory: Path, version: str = gen.UNICODE_VERSION) -> None:
    emoji_version = version.rsplit(".", 1)[0]
    (directory / "WordBreakProperty.txt").write_text(
        f"# WordBreakProperty-{version}.txt\n0041..005A    ; ALetter # Lu\n0027          ; Single_Quote\n"
        "0020          ; WSegSpace\n200D          ; ZWJ\n")
    (directory / "emoji-data.txt").write_text(
        f"# emoji-data.txt\n# Used with Emoji Version {emoji_version} and subsequent minor revisions (if any)\n"
        "1F44D         ; Extended_Pictographic# E0.6\n1F44D         ; Emoji\n")
    (directory / "DerivedGeneralCategory.txt").write_text(
        f"# DerivedGeneralCategory-{version}.txt\n0041..005A    ; Lu\n0061..007A    ; Ll\n0027          ; Po\n"
        "0024          ; Sc\n")
    (directory / "PropList.txt").write_text(
        f"# PropList-{version}.txt\n0009..000D    ; White_Space\n0020          ; White_Space\n0041 ; Hex_Digit\n")


def test_generator_reads_the_files_it_is_given(tmp_path):
    write_ucd(tmp_path)
    out = tmp_path / "hat_unicode.h"
    assert gen.main(["--ucd", str(tmp_path), str(out)]) == 0
    properties = lookup(out.read_text())
    assert properties(ord("A")) == word_break("ALetter") | flags("kUppercaseLetter")
    assert properties(ord("a")) == flags("kLowercaseLetter")  # not ALetter in this small file
    assert properties(ord("'")) == word_break("Single_Quote") | flags("kPunctuation")
    assert properties(ord(" ")) == word_break("WSegSpace") | flags("kWhiteSpace")
    assert properties(ord("\t")) == flags("kWhiteSpace")
    assert properties(0x1F44D) == flags("kExtendedPictographic")
    assert properties(0x200D) == word_break("ZWJ")
    assert properties(ord("$")) == 0 and properties(0x10FFFF) == 0


def test_generator_refuses_another_unicode_version(tmp_path):
    write_ucd(tmp_path, version="15.1.0")
    with pytest.raises(SystemExit, match="not the Unicode 16.0.0 file"):
        gen.main(["--ucd", str(tmp_path), str(tmp_path / "out.h")])


def test_committed_tables():
    properties = lookup((ROOT / "csrc" / "text" / "hat_unicode.h").read_text())
    assert properties(ord("a")) == word_break("ALetter") | flags("kLowercaseLetter")
    assert properties(ord("A")) == word_break("ALetter") | flags("kUppercaseLetter")
    assert properties(ord(",")) == word_break("MidNum") | flags("kPunctuation")
    assert properties(ord("_")) == word_break("ExtendNumLet") | flags("kPunctuation")
    assert properties(ord("$")) == 0
    assert properties(ord(" ")) == word_break("WSegSpace") | flags("kWhiteSpace")
    assert properties(0x00A0) == flags("kWhiteSpace")  # no-break space: not WSegSpace
    assert properties(ord("\n")) == word_break("LF") | flags("kWhiteSpace")
    assert properties(0x05D0) == word_break("Hebrew_Letter")
    assert properties(0x30A2) == word_break("Katakana")
    assert properties(0x1F44D) == flags("kExtendedPictographic")
    assert properties(0x1F1E9) == word_break("Regional_Indicator")
    assert properties(0x0301) == word_break("Extend")
    assert properties(0x4E2D) == 0  # Han: Other, no dictionary segmentation
    # New in Unicode 16.0: the Garay and Kirat Rai digits.
    assert properties(0x10D40) == word_break("Numeric")
    assert properties(0x16D70) == word_break("Numeric")
