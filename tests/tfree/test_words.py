"""The T-FREE word splitter (lmkernels.tfree.words, native) against the official outputs and the
pure-Python reference: conformance data, the official tests, properties over random Unicode text,
the generated Unicode tables, and bad input."""

import importlib.util
import json
import unicodedata
from pathlib import Path

import pytest
from hypothesis import assume, given, settings, strategies as st

from lmkernels import _C
from lmkernels.reference import tfree_words as reference
from lmkernels.tfree import join_words, split_words

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE = [json.loads(line) for line in (ROOT / "tests" / "conformance" / "tfree_wordsplit.jsonl").open()]
WS, NO_WS, LB = "<|ws|>", "<|no_ws|>", "<|\n|>"


@pytest.mark.parametrize("record", CONFORMANCE, ids=[f"line{i + 1}" for i in range(len(CONFORMANCE))])
def test_official_outputs(record):
    assert split_words(record["text"]) == record["words"]
    assert reference.split_words(record["text"]) == record["words"]
    assert join_words(record["words"]) == reference.join_words(record["words"])


# Spec 6.1: test_word_split.py::test_split of the official repository.
OFFICIAL_SPLITS = [
    ("", []),
    ("Hello World!", ["Hello", "World", "!"]),
    ("Hello World!<|endoftext|>abc", ["Hello", "World", "!", "<|endoftext|>", "abc"]),
    ("Hello<|startoftext|> World!", ["Hello", "<|startoftext|>", WS, "World", "!"]),
    ("Hello\nWorld!", ["Hello", LB, "World", "!"]),
    ("This is a <|test with some numbers 1234.",
     ["This", "is", "a", "<", "|", NO_WS, "test", "with", "some", "numbers", WS, "1", "2", "3", "4", "."]),
]


@pytest.mark.parametrize("split", [split_words, reference.split_words], ids=["native", "reference"])
@pytest.mark.parametrize("text,words", OFFICIAL_SPLITS)
def test_official_split(split, text, words):
    assert split(text) == words
    assert join_words(words) == text
    assert reference.join_words(words) == text


def test_official_random_ascii_round_trip():
    import random
    import string

    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + string.punctuation + "\n" + " "
    for _ in range(20):
        text = "".join(rng.choice(alphabet) for _ in range(1000))
        words = split_words(text)
        assert words == reference.split_words(text)
        assert join_words(words) == text


def test_official_compress_whitespaces():
    segments = [" ", "Hello", "1", " ", "world", " ", "1", "2", "3", "!", "!", " ", " ", "(", " ", "a", ")", ".", " "]
    expected = [WS, "Hello", "1", "world", WS, "1", "2", "3", "!", "!", WS, WS, "(", WS, "a", ")", ".", WS]
    assert reference._compress_whitespace(segments) == expected
    assert reference._restore_whitespace(expected) == segments
    # The segments are those of their concatenation, so the native split shows the same
    # compression (with the two adjacent <|ws|> merged into a run token).
    text = "".join(segments)
    merged = expected[:10] + ["<|2<-ws->|>"] + expected[12:]
    assert split_words(text) == merged
    assert join_words(merged) == text


def _ws(n):
    return [WS] * n


def _lb(n):
    return [LB] * n


OFFICIAL_RUNS = [
    ([" Hello "] + _ws(7) + [" Test "], [" Hello ", "<|4<-ws->|>", "<|2<-ws->|>", WS, " Test "]),
    (_ws(2) + _lb(2) + _ws(3) + _lb(3) + _ws(4) + _lb(4) + ["abc", " Hello "] + _ws(12) + [" Test "],
     ["<|2<-ws->|>", "<|2<-\n->|>", "<|2<-ws->|>", WS, "<|2<-\n->|>", LB, "<|4<-ws->|>", "<|4<-\n->|>", "abc",
      " Hello ", "<|4<-ws->|>", "<|4<-ws->|>", "<|4<-ws->|>", " Test "]),
    ([" Test ", " Hello "] + _ws(17) + [" Test "],
     [" Test ", " Hello ", "<|4<-ws->|>", "<|4<-ws->|>", "<|4<-ws->|>", "<|4<-ws->|>", WS, " Test "]),
]


@pytest.mark.parametrize("tokens,expected", OFFICIAL_RUNS)
def test_official_factorial_tokens(tokens, expected):
    assert reference._merge_runs(tokens) == expected
    assert reference._expand_runs(expected) == tokens
    assert join_words(expected) == reference.join_words(tokens) == join_words(tokens)


@pytest.mark.parametrize("count", range(1, 20))
@pytest.mark.parametrize("char", [" ", "\n"])
def test_runs_of_every_length(char, count):
    text = "x" + char * count + "y"
    words = split_words(text)
    assert words == reference.split_words(text)
    assert join_words(words) == text
    token = WS if char == " " else LB
    expected_middle = [] if text == "x y" else reference._merge_runs([token] * count)
    assert words == ["x"] + expected_middle + ["y"]


def test_empty():
    assert split_words("") == [] and join_words([]) == ""


def test_megabyte_word():
    word = "ab" * 2**19
    assert split_words(word) == [word]
    text = f" {word}\u00e9{word} 1"
    words = split_words(text)
    assert words == [WS, word + "\u00e9" + word, WS, "1"]
    assert join_words(words) == text
    assert join_words([word, word]) == f"{word} {word}"


def test_non_ascii_digits_and_marks():
    # Arabic-Indic digits are \d (one word each) but, unlike ASCII digits, expect spaces around
    # them; superscript two and one half are \w but not \d; the combining acute accent is
    # neither; NBSP and the tab are ordinary one-character words.
    text = "\u0663\u0664 x\u00b2\u00bd e\u0301t\u00a0a\tb_c"
    expected = ["\u0663", NO_WS, "\u0664", "x\u00b2\u00bd", "e", NO_WS, "\u0301", NO_WS, "t", NO_WS, "\u00a0",
                NO_WS, "a", NO_WS, "\t", NO_WS, "b", "_", "c"]
    assert split_words(text) == expected == reference.split_words(text)
    assert join_words(expected) == text


@pytest.mark.parametrize("text,words", [
    ("<|>", ["<|>"]),                                 # "<|" and "|>" overlap: no match, yet one word
    ("<||>", ["<||>"]),
    ("a<|b\nc|>", ["a", NO_WS, "<", "|", NO_WS, "b", LB, "c", NO_WS, "|", ">"]),
    ("<|b\nc|>", ["<|b\nc|>"]),                       # left whole by the regex, still shaped like a token
    ("<|a|><|b\nc|>", ["<|a|>", "<|b\nc|>"]),
    ("<|<|a|>|>", ["<|<|a|>", "|", ">"]),
    ("x<|\n<|y|> z", ["x", NO_WS, "<", "|", LB, "<|y|>", WS, "z"]),
])
def test_special_token_pass(text, words):
    assert split_words(text) == words == reference.split_words(text)


@pytest.mark.parametrize("text,joined", [
    ("<|ws|>", " "), ("a<|no_ws|>b", "ab"), ("<|\n|>", "\n"), ("<|3<-ws->|>", "   "), ("<|2<-\n->|>", "\n\n"),
    ("a<|0<-ws->|>b", "a b"),  # a run of zero expands to nothing, and "a", "b" expect a space
])
def test_text_that_reads_as_a_marker_does_not_round_trip(text, joined):
    # The official inverse turns literal markers in the text into whitespace; so do we.
    words = split_words(text)
    assert words == reference.split_words(text)
    assert join_words(words) == reference.join_words(words) == joined


@pytest.mark.parametrize("words,text", [
    (["a", "<|0<-ws->|>", "b"], "a b"),                # a run of zero: its neighbours meet
    (["<|007<-ws->|>"], " " * 7),
    (["<|2x<-ws-><-\n->|>"], "  "),                    # spaces win when both markers appear
    (["<|2<-\n->|>", "a"], "\n\na"),
    (["<|12|>", "a", "<|no_ws|>", "b", "<|ws|>"], "<|12|>ab "),
])
def test_join_run_tokens(words, text):
    assert join_words(words) == reference.join_words(words) == text


def test_concurrent_calls():
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"text {i}:  " + "word\u00e9 " * 2000 + "\n" * i for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        splits = list(pool.map(split_words, texts))
        joined = list(pool.map(join_words, splits))
    assert splits == [reference.split_words(t) for t in texts]
    assert joined == texts


# ---- properties over random text ----------------------------------------------------------------

FRAGMENTS = ["<|", "|>", "<|endoftext|>", "<|x y|>", "<|a\nb|>", "<", "|", ">", "_", "\t", "\u00a0", "\u0301",
             "\u0663", "\u00b2", "\u00bd", "\u00df", "\u4e2d\u6587", "\U0001F600", "ǅ", "'", "-", ".", "(", ")",
             "[", "]", "{", "}", "#", "@", "\r", "\x00"]
MARKERS = ["<|ws|>", "<|no_ws|>", LB, "<|2<-ws->|>", "<|4<-\n->|>", "<|3<-ws->|>", "<|0<-\n->|>"]
CHARACTERS = st.characters(blacklist_categories=("Cs",))


def texts(fragments):
    piece = st.one_of(
        st.text(CHARACTERS, max_size=6),
        st.text(st.sampled_from("ab1 \n"), max_size=8),
        st.sampled_from(fragments),
        st.builds(lambda char, n: char * n, st.sampled_from(" \n"), st.integers(1, 12)),
    )
    return st.lists(piece, max_size=25).map("".join)


@settings(max_examples=250, deadline=None)
@given(texts(FRAGMENTS + MARKERS))
def test_native_equals_reference(text):
    words = split_words(text)
    assert words == reference.split_words(text)
    assert all(words)
    assert join_words(words) == reference.join_words(words)


@settings(max_examples=250, deadline=None)
@given(texts(FRAGMENTS))
def test_join_inverts_split(text):
    assume(not any(marker in text for marker in (WS, NO_WS, LB, "<-ws->", "<-\n->")))
    assert join_words(split_words(text)) == text


WORDS = st.one_of(st.text(CHARACTERS, min_size=1, max_size=5), st.sampled_from(FRAGMENTS + MARKERS + [" ", "\n"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, max_size=20))
def test_join_of_any_words_equals_reference(words):
    assert join_words(words) == reference.join_words(words)
    assert join_words(tuple(words)) == join_words(words)


BYTE_PIECES = [b"a", b" ", b"<|", b"|>", b"\n", b"\xc3\xa9", b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
               b"\xe2\x82", b"\xf0\x9f\x98\x80"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40) | st.lists(st.sampled_from(BYTE_PIECES), max_size=12).map(b"".join))
def test_native_utf8_validation(data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        with pytest.raises(ValueError, match=f"^text: invalid UTF-8 at byte {error.start}$"):
            _C.tfree_split(data)
    else:
        assert _C.tfree_split(data) == reference.split_words(text)


# ---- Unicode tables --------------------------------------------------------------------------------

def _generator():
    spec = importlib.util.spec_from_file_location("gen_tfree_unicode", ROOT / "scripts" / "gen_tfree_unicode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(unicodedata.unidata_version != "14.0.0",
                    reason=f"the generator reads this interpreter's unicodedata, and the committed tables are "
                           f"those of Unicode 14.0.0 (Python 3.11, which the official T-FREE code ran on): "
                           f"Unicode {unicodedata.unidata_version} here would regenerate different, not wrong, "
                           f"tables; CI runs Python 3.11, where this test runs")
def test_generated_tables_are_committed(tmp_path):
    output = tmp_path / "tfree_unicode.h"
    assert _generator().main([str(output)]) == 0
    assert output.read_text() == (ROOT / "csrc" / "text" / "tfree_unicode.h").read_text()


@pytest.mark.skipif(unicodedata.unidata_version != "14.0.0",
                    reason=f"the oracle is this interpreter's re module, whose character classes follow its "
                           f"Unicode {unicodedata.unidata_version}, while the kernel is pinned to 14.0.0 (the "
                           f"official code's Python 3.11); CI runs Python 3.11, where this test runs")
def test_character_classes_at_every_table_edge():
    gen = _generator()
    edges = {c for table in (gen.code_point_ranges(gen.is_decimal), gen.code_point_ranges(gen.is_word))
             for first, last in table for c in (first - 1, first, last, last + 1)}
    chars = [chr(c) for c in sorted(edges) if 0 <= c <= 0x10FFFF and not 0xD800 <= c <= 0xDFFF]
    text = "".join(f"a{c}1{c}b " for c in chars)
    assert split_words(text) == reference.split_words(text)


# ---- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [b"text", None, 3, ["a"]])
def test_split_rejects_non_str(bad):
    with pytest.raises(TypeError, match="^text: expected str"):
        split_words(bad)


def test_split_rejects_lone_surrogates():
    with pytest.raises(ValueError, match=r"^text: lone surrogate U\+D800 at index 1"):
        split_words("a\ud800b")
    with pytest.raises(ValueError, match=r"^text: lone surrogate U\+DFFF at index 0"):
        split_words("\udfff")


@pytest.mark.parametrize("data,position", [
    (b"ab\xff", 2), (b"\xc0\x80", 0), (b"x\xed\xa0\x80", 1), (b"\xf4\x90\x80\x80", 0), (b"\xe2\x82", 0),
    (b"\xe2<|x|>", 0), (b"ok <|\xff|>", 5), (b"<|\xff\n|>", 2), (b"abc\xc3", 3), (b"a\xe2\x82\xac\x80", 4),
])
def test_native_split_rejects_invalid_utf8(data, position):
    with pytest.raises(ValueError, match=f"^text: invalid UTF-8 at byte {position}$"):
        _C.tfree_split(data)


@pytest.mark.parametrize("bad,message", [
    ("abc", "^words: expected a sequence of str, got str"),
    (None, "^words: expected a sequence of str, got NoneType"),
    (["a", 1], r"^words\[1\]: expected str, got int"),
    ([b"a"], r"^words\[0\]: expected str, got bytes"),
])
def test_join_rejects_non_str(bad, message):
    with pytest.raises(TypeError, match=message):
        join_words(bad)


@pytest.mark.parametrize("bad,message", [
    (["a", "\udc80"], r"^words\[1\]: not encodable as UTF-8"),
    (["a", ""], r"^words\[1\]: empty word"),
    ([""], r"^words\[0\]: empty word"),
    (["<|1073741825<-ws->|>"], r"^words\[0\]: run-length token counts more than 1073741824"),
    (["a", "<|99999999999999999999999999<-\n->|>"], r"^words\[1\]: run-length token counts more than"),
])
def test_join_rejects_bad_words(bad, message):
    with pytest.raises(ValueError, match=message):
        join_words(bad)
