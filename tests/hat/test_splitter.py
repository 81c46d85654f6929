"""The HAT word splitter (lmkernels.hat, native) against the official ``hat-splitter`` package:
the official tests' inputs, the spec's vectors, real multilingual text, every code point in
revealing contexts (the generated Unicode 16.0 tables), generated Unicode text, causality, the
batched form, the models' special-token wrapper, and bad input."""

import inspect
import unicodedata
from pathlib import Path

import pytest
import torch
from hat_splitter import HATSplitter as OfficialSplitter  # the oracle, pinned in the test extra
from hypothesis import given, settings, strategies as st

import lmkernels
from lmkernels import data
from lmkernels.hat import HATRuleSplitter, split, split_batch, split_with_limit

ORACLE = OfficialSplitter()
ROOT = Path(__file__).resolve().parents[2]

# The official Rust tests' mixed-script string (spec 6.3).
STRANGE_STUFF = ("𓀀✨𝒜𝓁𝑔𝑜𝓇𝒾𝓉𝒽𝓂 شْء 你好吗 こんにちは 안녕하세요 𞤢𞤭𞤤 𝔽(λx.𝑥²) 🤖🍕⟨𝛴, 𝜋⟩ 🜚 𝔽↦𝑒ⁿω₀📡;𝑧𝑎<𝔱𝓇𝑢∃>🛠️ҀЋހ±(Δ𝓧) "
                 "乁( •_• )ㄏ   ⿰木日👾")


def assert_matches_oracle(text: str, limits=(1, 2, 3, 4, 7, 64, 100)) -> None:
    assert split(text) == ORACLE.split(text)
    for limit in limits:
        assert split_with_limit(text, limit) == ORACLE.split_with_limit(text, limit), limit


# --- the official tests --------------------------------------------------------------------------

def test_official_rust_tests():
    assert split("Hello, world!") == ["Hello,", " world!"]
    assert split("") == []
    assert split("howAreYou") == ["how", "Are", "You"]
    assert split("how_are_you") == ["how_", "are_", "you"]
    assert split_with_limit("verylongword", 10) == [b"verylongwo", b"rd"]
    assert len(split_with_limit("🌝", 2)) == 2
    assert split_with_limit("für", 2) == [b"f", "ü".encode(), b"r"]
    assert split_with_limit("Hello, world!", 4) == [b"Hell", b"o,", b" wor", b"ld!"]  # the package's docs
    with pytest.raises(ValueError, match="max_bytes"):
        split_with_limit("abc", 0)  # the Rust code panics
    assert_matches_oracle(STRANGE_STUFF)


# The inputs of the Python binding's tests (ids as there), the long ones re-expressed: own paragraphs
# of the same kinds (Latin filler, a German recipe, Python source, Chinese prose).
OFFICIAL_PYTHON_INPUTS = {
    "simple": "hello world",
    "multiple_spaces": "hello   world",
    "tab": "hello\tworld",
    "newline": "hello\nworld",
    "multiple_newlines": "hello \n\nworld",
    "camel_case": "thisIsCamelCase and this is not",
    "snake_case": "this_is_a_long_snake_case_word",
    "long_word": "a" * 120,
    "punctuation": "Hello, world!",
    "numbers": "0123456789",
    "lorem": "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Nam ac tempus ligula; sed cursus arcu "
             "quam, nec tempor orci. Mauris a ultricies dui. Duis vel tempor nunc, eu vulputate arcu.",
    "german_text": "Für den Eintopf erhitzen Sie 1 Esslöffel Öl in einem großen Topf. Fügen Sie 225 g Gemüse "
                   "hinzu, rühren Sie 3-4 Minuten und lassen Sie alles 20 Minuten köcheln (bei mittlerer Hitze).",
    "punctuation_with_symbols": "here! is some, more punctuation. I h0p3 thi$ isn't too 'much'.{{}}()<>$%^&*",
    "python_snippet": f"```python\n{inspect.getsource(assert_matches_oracle)}\n```",
    "chinese_text": "分词器在语言模型处理文本之前，先把文本切成更小的单位。「词表」很大时，它会怎样？见一内听，秋快都同现正！",
}


@pytest.mark.parametrize("text", OFFICIAL_PYTHON_INPUTS.values(), ids=OFFICIAL_PYTHON_INPUTS.keys())
def test_official_python_inputs(text):
    assert_matches_oracle(text)


# --- the spec's vectors (6.4, derived with the official wheel) ---------------------------------

SPEC_SPLITS = [
    ("hello world", ["hello", " world"]),
    ("hello   world", ["hello", "   ", "world"]),
    ("hello\tworld", ["hello", "\t", "world"]),
    ("hello\nworld", ["hello", "\n", "world"]),
    ("hello \n\nworld", ["hello", " ", "\n", "\n", "world"]),
    ("thisIsCamelCase and this is not", ["this", "Is", "Camel", "Case", " and", " this", " is", " not"]),
    ("0123456789", ["0123456789"]),
    ("1234.56 and 3,999.99", ["1234.", "56", " and", " 3,", "999.", "99"]),
    ("here! is some, more punctuation. I h0p3 thi$ isn't too 'much'.{{}}()<>$%^&*",
     ["here!", " is", " some,", " more", " punctuation.", " I", " h0p3", " thi", "$", " isn'", "t", " too", " '",
      "much'.{{}}()", "<", ">", "$%", "^&*"]),
    ("Um Kimchi-Jjigae zuzubereiten, erhitzen Sie 1 Esslöffel",
     ["Um", " Kimchi-", "Jjigae", " zuzubereiten,", " erhitzen", " Sie", " 1", " Esslöffel"]),
    ("你好吗 こんにちは", ["你", "好", "吗", " こ", "ん", "に", "ち", "は"]),
    ("  leading spaces", ["  ", "leading", " spaces"]),
    ("trailing space ", ["trailing", " space", " "]),
    ("a.b.c", ["a.", "b.", "c"]),
    ("e-mail: foo@bar.com", ["e-", "mail:", " foo@", "bar.", "com"]),
    ("I'm here.\n\nNew para", ["I'", "m", " here.", "\n", "\n", "New", " para"]),
    ('The quick ("brown")  fox can\'t jump 32.3 feet, right?',
     ["The", " quick", ' ("', 'brown")', "  ", "fox", " can'", "t", " jump", " 32.", "3", " feet,", " right?"]),
    (STRANGE_STUFF,
     ["𓀀", "✨", "𝒜𝓁𝑔𝑜𝓇𝒾𝓉𝒽𝓂", " شْء", " 你", "好", "吗", " こ", "ん", "に", "ち", "は", " 안녕하세요", " 𞤢𞤭𞤤", " 𝔽(", "λx.", "𝑥",
      "²)", " 🤖", "🍕⟨", "𝛴,", " 𝜋⟩", " 🜚", " 𝔽", "↦", "𝑒ⁿω", "₀", "📡;", "𝑧𝑎", "<", "𝔱𝓇𝑢", "∃", ">", "🛠️", "ҀЋހ", "±(",
      "Δ𝓧)", " 乁(", " •_•", " )", "ㄏ", "   ", "⿰", "木", "日", "👾"]),
]


@pytest.mark.parametrize("text,words", SPEC_SPLITS)
def test_spec_vectors(text, words):
    assert split(text) == words
    assert ORACLE.split(text) == words
    assert "".join(words) == text


def test_spec_model_wrapper():
    splitter = HATRuleSplitter({"<|eot_id|>": 192}, max_word_size=100)
    assert splitter.encode("Hi there!<|eot_id|>") == [[72, 105], [32, 116, 104, 101, 114, 101, 33], [192]]


# --- real text -------------------------------------------------------------------------------

def test_multilingual_text():
    text = data.multilingual_text()
    assert_matches_oracle(text)
    for paragraph in text.split("\n\n"):
        assert_matches_oracle(paragraph, limits=(1, 5, 16))


def test_large_english_corpus():
    text = data.text("all")  # about 0.8 MB
    assert split(text) == ORACLE.split(text)
    assert split_with_limit(text, 16) == ORACLE.split_with_limit(text, 16)


# --- the Unicode tables: every code point in contexts that reveal its properties -----------------

# Each context isolates the properties of {c}: Word_Break against letters, digits, Katakana and
# itself (WB5-WB13c), WB4 after a ZWJ or a space, Extended_Pictographic after a ZWJ (WB3c),
# P* (a cut after it), Ll / Lu (camelCase cuts), White_Space (a Whitespace piece does not take
# the punctuation after it; a space does not join it).
CONTEXTS = ["a{c}b", "{c}A", "1{c}2", "{c}{c}", "\u200d{c}", "ア{c}ア", "{c}\u0301", " {c}.", "x{c}x"]
# Assigned code points are below U+323B0 except the tags and variation selectors of plane 14.
CODE_POINTS = [c for c in list(range(0x323B0)) + list(range(0xE0000, 0xE01F0)) if not 0xD800 <= c <= 0xDFFF]


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_code_point(context):
    # A line feed is a segment and a word of its own whatever surrounds it, so one text holds
    # every case; on a mismatch, the first differing case is reported.
    cases = [context.format(c=chr(c)) for c in CODE_POINTS]
    text = "\n".join(cases)
    ours = split(text)
    if ours != ORACLE.split(text):
        for c, case in zip(CODE_POINTS, cases):
            assert split(case) == ORACLE.split(case), f"U+{c:04X} in {context!r}"


def test_tables_are_generated_for_unicode_16():
    header = (ROOT / "csrc" / "text" / "hat_unicode.h").read_text()
    assert header.startswith("// Generated by scripts/gen_hat_unicode.py from the Unicode 16.0.0")
    assert 'kUnicodeVersion[] = "16.0.0"' in header


# --- generated text ------------------------------------------------------------------------------

# Pieces of realistic text in many scripts: accented letters (precomposed and combining), emoji ZWJ
# sequences, flags, skin tones and keycaps, CJK, kana, Hangul, Thai, Arabic and Hebrew with
# marks, Devanagari, digits with separators, camelCase and snake_case, mixed whitespace.
FRAGMENTS = [
    "word", "Word", "WORD", "camelCase", "XMLHttpRequest", "snake_case_name", "can't", "l'homme", "e\u0301te\u0301",
    "naïve", "Straße", "İstanbul", "Ωμέγα", "привет", "Привет", "3,999.99", "1.5", "42", "٣٤٥", "१२३", "12:30",
    "2024-05-01", "1/2", "$5", "50%", "a+b", "x<y>z", "#tag", "@user", "foo@bar.com", "http://x.y/z?q=1",
    "👍", "👍🏽", "👨\u200d👩\u200d👧", "🏳️\u200d🌈", "🇩🇪", "🇩🇪🇫🇷", "1\ufe0f\u20e3", "❤️", "你好", "中文字", "こんにちは",
    "カタカナ", "ｶﾀｶﾅ", "한국어", "ภาษาไทย", "ไม่", "مرحبا", "العَرَبِيَّة", "שלום", "עִבְרִית", "צה\"ל", "हिन्दी", "ক্ষ",
    ".", ",", "!", "?", "...", "—", "–", "(", ")", "[", "]", "«", "»", "“", "”", "„", "‘", "’", "'", "\"", "¿", "¡",
    "…", "·", "、", "。", "「", "」", "_", "-", "/", "\\", "*", "&",
    " ", " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2009", " \t ",
]
realistic_text = st.lists(st.sampled_from(FRAGMENTS), max_size=24).map("".join)
any_unicode = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
mixed = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.characters(blacklist_categories=("Cs",))),
                 max_size=24).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(realistic_text, any_unicode, mixed), st.integers(1, 12))
def test_generated_text_matches_oracle(text, limit):
    assert split(text) == ORACLE.split(text)
    assert split_with_limit(text, limit) == ORACLE.split_with_limit(text, limit)
    assert "".join(split(text)) == text
    assert b"".join(split_with_limit(text, limit)) == text.encode()
    assert all(1 <= len(w) <= limit for w in split_with_limit(text, limit))


# --- causality ----------------------------------------------------------------------------------

def assert_causal(text: str, limit: int) -> None:
    """Each word of the split of every character prefix is a byte-prefix of the word at the same
    index in the split of the whole text (the official ``it_is_causal``)."""
    full = split_with_limit(text, limit)
    for end in range(len(text)):
        for i, (whole, partial) in enumerate(zip(full, split_with_limit(text[:end], limit))):
            assert whole.startswith(partial), (text[:end], i, partial, whole)


def test_causal_official():
    assert_causal(STRANGE_STUFF, 1024)


def test_causal_multilingual():
    for paragraph in data.multilingual_text().split("\n\n"):
        assert_causal(paragraph[:120], 1024)


# Realistic text only: the rule itself is not causal everywhere, in the official package as here,
# e.g. where a combining mark follows a tab ("a \t" -> ["a", " ", "\t"] but "a \t\u0301" ->
# ["a", " \t\u0301"]) or a fraction slash follows a digit ("1⁄" -> ["1", "⁄"], "1⁄2" -> ["1⁄2"]).
@settings(max_examples=150, deadline=None)
@given(realistic_text)
def test_causal_generated(text):
    assert_causal(text, 1024)


def test_known_non_causal_cases_match_oracle():
    for text in ["a \t", "a \t\u0301", "1\u2044", "1\u2044" "2 x", "1 \u00a0", "1 \u00a0\u200d\uac00"]:
        assert_matches_oracle(text)
    assert split("a \t") == ["a", " ", "\t"] and split("a \t\u0301") == ["a", " \t\u0301"]


# --- batched form ------------------------------------------------------------------------------

def batch_words(batch):
    return [batch.words(t) for t in range(len(batch))]


def test_batch_matches_single_texts():
    texts = data.multilingual_text().split("\n\n") + ["", " ", STRANGE_STUFF, "a" * 300]
    for limit in (None, 1, 3, 100):
        batch = split_batch(texts, limit)
        expected = [[w.encode() for w in split(t)] if limit is None else split_with_limit(t, limit) for t in texts]
        assert batch_words(batch) == expected
        assert batch.bytes.dtype == torch.uint8 and batch.word_offsets.dtype == torch.int64
        assert bytes(batch.bytes.tolist()) == "".join(texts).encode()
        assert batch.num_words == sum(len(e) for e in expected)
        assert batch.word_lengths().tolist() == [len(w) for e in expected for w in e]
        # No storage sized for a word per byte rides along (torch.save and share_memory_ copy it whole).
        assert batch.word_offsets.untyped_storage().nbytes() == 8 * (batch.num_words + 1)
        assert batch.bytes.untyped_storage().nbytes() == batch.bytes.numel()


def test_batch_same_for_any_thread_count():
    texts = [d.text for d in data.documents("heldout")][:200]
    previous = lmkernels.num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            lmkernels.set_num_threads(threads)
            results.append(split_batch(texts, 64, {"<|eot_id|>": 192}))
    finally:
        lmkernels.set_num_threads(previous)
    for other in results[1:]:
        assert torch.equal(other.bytes, results[0].bytes)
        assert torch.equal(other.word_offsets, results[0].word_offsets)
        assert torch.equal(other.text_word_offsets, results[0].text_word_offsets)


def test_batch_from_several_python_threads():
    from concurrent.futures import ThreadPoolExecutor

    texts = [d.text for d in data.documents("heldout")][:100]
    expected = [split_with_limit(t, 32) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: split_batch(texts, 32), range(8)))
    for batch in batches:
        assert batch_words(batch) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(mixed, st.sampled_from(["<|eot_id|>", "a<|eot_id|>b", "<|eot_id|><|eot_id|>"])),
                max_size=6), st.integers(1, 9))
def test_generated_batches_match_official_wrapper(texts, limit):
    specials = {"<|eot_id|>": 192}
    batch = split_batch(texts, limit, specials)
    assert [[list(w) for w in batch.words(t)] for t in range(len(texts))] == \
        [official_wrapper_encode(t, specials, limit) for t in texts]


def test_batch_empty():
    batch = split_batch([])
    assert len(batch) == 0 and batch.num_words == 0 and batch.bytes.numel() == 0
    assert batch.text_word_offsets.tolist() == [0]


# --- the models' special-token wrapper ---------------------------------------------------------

def official_wrapper_encode(text, special_tokens, max_word_size):
    """The official wrappers' encode: re.split on the tokens, then split_with_limit per piece."""
    import re

    pattern = re.compile("(" + "|".join(map(re.escape, special_tokens)) + ")")
    words = []
    for piece in pattern.split(text):
        if piece in special_tokens:
            words.append([special_tokens[piece]])
        elif piece:
            words.extend(list(w) for w in ORACLE.split_with_limit(piece, max_word_size))
    return words


@pytest.mark.parametrize("text", [
    "Hi there!<|eot_id|>", "<|eot_id|>", "<|eot_id|><|eot_id|>", "a<|eot_id|>b", " <|eot_id|> x", "<|eot_id",
    "<|begin_of_text|>Hello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "x<|eot_id|" + "y" * 150, STRANGE_STUFF + "<|eot_id|>" + STRANGE_STUFF,
])
def test_wrapper_matches_official_wrapper(text):
    specials = {"<|eot_id|>": 192, "<|begin_of_text|>": 1, "<|start_header_id|>": 193, "<|end_header_id|>": 194}
    for max_word_size in (100, 4):
        splitter = HATRuleSplitter(specials, max_word_size)
        assert splitter.encode(text) == official_wrapper_encode(text, specials, max_word_size)
    assert HATRuleSplitter().encode(text) == official_wrapper_encode(text, {"<|eot_id|>": 192}, 100)


def test_wrapper_first_listed_token_wins_at_a_position():
    # As with re alternation: at one position the first key that matches is taken, not the longest.
    specials = {"<|a|>": 200, "<|a|>b": 201}
    assert HATRuleSplitter(specials).encode("x<|a|>b") == official_wrapper_encode("x<|a|>b", specials, 100)


def test_wrapper_decode():
    splitter = HATRuleSplitter()
    ids = [b for w in splitter.encode("Grüße<|eot_id|>") for b in w]
    assert splitter.decode(ids) == "Grüße<|eot_id|>"
    assert splitter.decode(ids, skip_special_tokens=True) == "Grüße"
    assert splitter.decode([0xC3]) == "\ufffd"


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input():
    with pytest.raises(TypeError, match="text"):
        split(b"bytes")
    with pytest.raises(TypeError, match="text"):
        split_with_limit(None, 4)
    with pytest.raises(TypeError, match="max_bytes"):
        split_with_limit("abc", 2.0)
    with pytest.raises(TypeError, match="max_bytes"):
        split_with_limit("abc", True)
    for bad_limit in (0, -1):
        with pytest.raises(ValueError, match="max_bytes"):
            split_with_limit("abc", bad_limit)
        with pytest.raises(ValueError, match="max_bytes"):
            split_batch(["abc"], bad_limit)
    with pytest.raises(ValueError, match="surrogate"):
        split("a\ud800b")
    with pytest.raises(ValueError, match="surrogate"):
        split_with_limit("\udfff", 4)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        split_batch(["ok", "a\ud800"])
    with pytest.raises(TypeError, match="texts"):
        split_batch("not a list")
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        split_batch([b"bytes"])
    with pytest.raises(ValueError, match="special_tokens"):
        split_batch(["a"], special_tokens={"": 1})
    with pytest.raises(ValueError, match="special_tokens"):
        HATRuleSplitter({"<|x|>": 256})
    with pytest.raises(ValueError, match="max_word_size"):
        HATRuleSplitter(max_word_size=0)
    with pytest.raises(IndexError):
        split_batch(["a"]).words(1)


def test_huge_limits_mean_no_cut():
    assert split_with_limit("Hello, world!", 2**80) == [b"Hello,", b" world!"]
    assert split_batch(["Hello, world!"], 2**80).words(0) == [b"Hello,", b" world!"]


def test_native_rejects_invalid_arguments():
    from lmkernels import _C

    with pytest.raises(ValueError, match="max_bytes"):
        _C.hat_split_with_limit("abc", 0)
    too_small = torch.empty(1, dtype=torch.uint8)
    with pytest.raises(ValueError, match="bytes"):
        _C.hat_split_batch(["abc"], None, [], too_small, torch.empty(4, dtype=torch.int64),
                           torch.empty(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="word_offsets"):
        _C.hat_split_batch(["abc"], None, [], torch.empty(3, dtype=torch.uint8), torch.empty(4, dtype=torch.int32),
                           torch.empty(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="text_word_offsets"):
        _C.hat_split_batch(["abc"], None, [], torch.empty(3, dtype=torch.uint8), torch.empty(4, dtype=torch.int64),
                           torch.empty(5, dtype=torch.int64))
    outputs = torch.empty(9, dtype=torch.uint8), torch.empty(10, dtype=torch.int64), torch.empty(3, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"^texts\[1\]: expected str, got int"):
        _C.hat_split_batch(["abc", 3], None, [], *outputs)
    with pytest.raises(ValueError, match=r"^texts\[1\]: not encodable as UTF-8"):
        _C.hat_split_batch(["abc", "a\ud800"], None, [], *outputs)
    with pytest.raises(ValueError, match=r"^special_tokens\[1\]: not encodable as UTF-8"):
        _C.hat_split_batch(["abc"], None, [("<|a|>", 1), ("\udfff", 2)], *outputs)


def test_no_normalisation():
    # Both forms of "é" split as they are: the splitter never normalises.
    composed, decomposed = "café au lait", unicodedata.normalize("NFD", "café au lait")
    assert split(composed) == ["café", " au", " lait"]
    assert split(decomposed) == ORACLE.split(decomposed)
    assert "".join(split(decomposed)) == decomposed


def test_tour_stop(capsys):
    from lmkernels.hat import tour

    tour.run(lambda title: print(f"== {title}"))
    out = capsys.readouterr().out
    assert "== HAT: bytes grouped into words" in out and "MB/s" in out
    assert "[[72, 105], [32, 116, 104, 101, 114, 101, 33], [192]]" in out
