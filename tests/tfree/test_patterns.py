"""T-FREE trigram patterns (lmkernels.tfree.patterns) against the official outputs and the reference."""

import copy
import json
import pathlib
import pickle
import threading

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lmkernels import _C
from lmkernels.reference import tfree_patterns as ref
from lmkernels.tfree.patterns import TRIGRAM_IDS, TrigramPatterns

CONFORMANCE = pathlib.Path(__file__).parents[1] / "conformance" / "tfree_word_patterns.jsonl"
RECORDS = [json.loads(line) for line in CONFORMANCE.read_text().splitlines()]
CONFIGS = sorted({(r["v"], r["m"], r["k"]) for r in RECORDS})
HEADER_BYTES, BITMAP_BYTES = 40, TRIGRAM_IDS // 8

_tables: dict = {}


def table(v, m, k) -> TrigramPatterns:
    """One shared table per config (rows computed by one test are reused by the next)."""
    if (v, m, k) not in _tables:
        _tables[v, m, k] = TrigramPatterns(v, m, k)
    return _tables[v, m, k]


def trigram_id(text: str) -> int:
    return int.from_bytes(text.encode(), "little")


# ---- the official outputs ------------------------------------------------------------------------

def test_conformance_file_covers_four_configs():
    assert len(RECORDS) == 1600 and len(CONFIGS) == 4
    assert sum(r["hashed"] for r in RECORDS) > 0


@pytest.mark.parametrize("config", CONFIGS)
def test_native_matches_official(config):
    patterns = table(*config)
    records = [r for r in RECORDS if (r["v"], r["m"], r["k"]) == config]
    for r in records:
        assert patterns.word_pattern(r["word"]) == r["rows"], r["word"]
        if not r["hashed"]:
            assert patterns.trigram_ids(r["word"]) == r["trigram_ids"], r["word"]


@pytest.mark.parametrize("config", CONFIGS)
def test_reference_matches_official(config):
    for r in (r for r in RECORDS if (r["v"], r["m"], r["k"]) == config):
        assert ref.word_pattern(r["word"], *config) == r["rows"], r["word"]
        if not r["hashed"]:
            assert ref.trigram_ids(r["word"]) == r["trigram_ids"], r["word"]


# ---- the spec's derived vectors (tfree_hat.md 6.2) -----------------------------------------------

def test_trigram_ids_of_the_spec():
    patterns = table(32000, 10, 0)
    assert patterns.trigram_ids("Hello") == sorted([6637600, 7103816, 7105637, 7302252, 2125676])
    assert patterns.trigram_ids("a") == [2122016]
    assert patterns.trigram_ids("für") == sorted([12805664, 12370790, 7519427, 2126524])
    assert trigram_id(" He") == 6637600 and trigram_id(" a ") == 2122016


ROWS_BEFORE_SURGERY = {  # id: (m = 10 row, m = 4 row), v = 32000
    6637600: ([3605, 6000, 6940, 8764, 13910, 15616, 17701, 22257, 26238, 29911], [6000, 6940, 22257, 26238]),
    7103816: ([2267, 4207, 4961, 6240, 7732, 13719, 16612, 20027, 24454, 25406], [4207, 6240, 13719, 24454]),
    7105637: ([642, 3891, 6198, 7469, 11129, 13302, 14907, 21031, 22072, 31915], [642, 3891, 6198, 22072]),
    7302252: ([48, 1385, 7079, 9355, 10760, 12034, 13136, 14410, 17414, 29938], [1385, 12034, 14410, 29938]),
    2125676: ([1952, 3025, 5663, 7790, 9275, 12846, 24089, 24752, 29839, 31114], [3025, 7790, 9275, 24752]),
    6645792: ([711, 741, 2328, 3032, 3420, 8249, 9441, 21499, 22896, 29430], [2328, 3032, 8249, 22896]),
    2122016: ([1252, 1501, 4407, 11932, 13247, 15103, 16451, 23610, 26670, 30626], [1252, 1501, 4407, 26670]),
}


@pytest.mark.parametrize("tid", sorted(ROWS_BEFORE_SURGERY))
def test_rows_of_the_spec(tid):
    row10, row4 = ROWS_BEFORE_SURGERY[tid]
    assert table(32000, 10, 0).row(tid) == row10 == ref.trigram_row(tid, 32000, 10, 0)
    assert table(32000, 4, 0).row(tid) == row4 == ref.trigram_row(tid, 32000, 4, 0)
    assert set(row4) <= set(row10)  # the first draws of a longer row are the shorter row


def test_lowercase_surgery_of_the_spec():
    patterns = table(32000, 10, 2)
    assert patterns.row(trigram_id(" He")) == [3605, 6000, 6940, 8764, 13910, 15616, 17701, 22257, 22896, 29430]
    assert patterns.row(trigram_id("Hel")) == [2267, 4207, 4961, 6240, 7732, 13719, 16612, 20027, 21577, 26609]
    assert patterns.row(trigram_id("ELL")) == [4954, 7067, 11860, 14924, 17826, 19813, 28101, 28779, 22072, 31915]
    # lowercase rows and rows outside [A-Za-z ] keep their drawn rows
    assert patterns.row(trigram_id(" he")) == ROWS_BEFORE_SURGERY[6645792][0]
    assert patterns.row(trigram_id("ell")) == ROWS_BEFORE_SURGERY[7105637][0]
    assert patterns.row(trigram_id("H1l")) == table(32000, 10, 0).row(trigram_id("H1l"))


def test_hashed_words_of_the_spec():
    patterns = table(32000, 10, 2)
    assert patterns.hashed_word("<|endoftext|>") == [3660, 30793, 14822, 5862, 541, 29684, 15568, 23924, 5552, 26926]
    assert patterns.word_pattern("<|ws|>") == [[4616, 28554, 9617, 28722, 23728, 27755, 26516, 19858, 27164, 19790]]
    assert patterns.word_pattern("<|no_ws|>") == [
        [28151, 13147, 13380, 10315, 11053, 31742, 31119, 15276, 25555, 16737]]


# ---- native against the reference ----------------------------------------------------------------

@st.composite
def configs(draw):
    m = draw(st.integers(1, 64))
    k = draw(st.integers(0, m))
    v = draw(st.one_of(st.integers(m, m + 5), st.integers(m, 65536), st.just(65536), st.just(65537),
                       st.integers(65537, 2**31), st.just(2**31)))
    return v, m, k


MIXED_CASE_IDS = st.tuples(*[st.sampled_from(b"aAzZ gGqQ")] * 3).map(lambda t: bytes(t)).map(
    lambda b: int.from_bytes(b, "little"))
IDS = st.one_of(st.integers(0, TRIGRAM_IDS - 1), MIXED_CASE_IDS, st.just(0), st.just(TRIGRAM_IDS - 1))


@settings(max_examples=60, deadline=None)
@given(configs(), st.lists(IDS, min_size=1, max_size=4))
def test_rows_match_reference(config, ids):
    patterns = TrigramPatterns(*config)
    expected = [ref.trigram_row(i, *config) for i in ids]
    assert [patterns.row(i) for i in ids] == expected
    assert patterns.rows(torch.tensor(ids)).tolist() == expected
    assert patterns.rows(torch.tensor(ids, dtype=torch.int32)).tolist() == expected


# Words that stress Python's str.lower(): final sigma in and out of context, dotted capital I,
# case-ignorable marks, titlecase letters, scripts with and without case.
LOWERCASE_WORDS = [
    "<|ΑΣ|>", "<|Σ|>", "<|ΣΑ|>", "<|ΑΣΑ|>", "<|Α'Σ|>", "<|Α\u0308Σ\u0308|>", "<|ΑΣ\u0308Α|>", "<|İSTANBUL|>",
    "<|ǅ|>", "<|ΌΣΟΣ ΛΌΓΟΣ|>", "<|ẞ|>", "<|Ⅻ|>", "<|ꟼꟻ|>", "<|𐐀𐐨|>", "<|ÅNGSTRÖM|>", "<|日本|>", "<|😀Σ|>",
    "<|:Σ|>", "<|A.Σ.b|>", "<|a\u00adΣ|>", "<|Σ\u00ad|>",
]


@pytest.mark.parametrize("word", LOWERCASE_WORDS)
def test_hashed_word_lowercases_as_python(word):
    for config in [(32000, 10, 2), (2**31, 6, 6)]:
        assert table(*config).word_pattern(word) == ref.word_pattern(word, *config), word


def test_hashed_word_lowercases_every_cased_code_point():
    """Each code point that str.lower() changes, and its effect on a following capital sigma."""
    patterns = table(2**31, 1, 1)  # the one index hashes the lowercase word
    changed = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and chr(c).lower() != chr(c)]
    words = [f"<|{c}Σ|>" for c in changed] + [f"<|A{c}Σ|>" for c in changed[::7]]
    assert [patterns.hashed_word(w) for w in words] == [ref.hashed_word(w, 2**31, 1, 1) for w in words]


WORDS = st.one_of(
    st.text(min_size=1, max_size=12),
    st.text(alphabet="aAbBzZ ΣσΑİ", min_size=1, max_size=8),
    st.tuples(st.text(max_size=6), st.text(max_size=6)).map(lambda t: f"{t[0]}<|{t[1]}"),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=6).map(lambda s: f"<|{s}|>"),
)  # hypothesis text leaves out surrogates (no UTF-8 form)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([(32000, 10, 2), (16384, 8, 3), (8000, 10, 0), (2**31, 12, 5), (97, 9, 9)]), WORDS)
def test_words_match_reference(config, word):
    patterns = table(*config)
    assert patterns.word_pattern(word) == ref.word_pattern(word, *config)
    if "<|" not in word:
        assert patterns.trigram_ids(word) == ref.trigram_ids(word)
    assert patterns.hashed_word(word) == ref.hashed_word(word, *config)


@pytest.mark.parametrize("vocab_size", [1, 2, 3, 7, 255, 256, 257, 32000, 65535, 65536, 65537, 1_000_003,
                                        2**31 - 1, 2**31])
def test_modulo_of_the_digest(vocab_size):
    patterns = TrigramPatterns(vocab_size, 1, 1 if vocab_size % 2 else 0)
    config = (patterns.vocab_size, patterns.m, patterns.k_lowercase)
    for word in ["<|endoftext|>", "<|ws|>", "<|Ünïcödé|>", "<|x|>"]:
        assert patterns.hashed_word(word) == ref.hashed_word(word, *config)
    ids = [0, 1, 6637600, trigram_id("Hel"), TRIGRAM_IDS - 1]
    assert [patterns.row(i) for i in ids] == [ref.trigram_row(i, *config) for i in ids]


@pytest.mark.parametrize("length", range(40, 140))
def test_long_hashed_words(length):
    """Messages of one, two and three MD5 blocks, across every padding boundary."""
    word = "<|" + "Ab" * (length // 2) + "c" * (length % 2) + "|>"
    assert table(32000, 10, 2).hashed_word(word) == ref.hashed_word(word, 32000, 10, 2)


def test_native_rows_accepts_strided_ids():
    patterns = table(32000, 10, 2)
    assert patterns.rows(torch.empty(0, dtype=torch.int64)).shape == (0, 10)
    ids = torch.arange(0, 40, dtype=torch.int64)[::3]
    out = torch.empty(ids.numel(), 10, dtype=torch.int32)
    patterns._table.rows(ids, out)
    assert out.tolist() == [ref.trigram_row(int(i), 32000, 10, 2) for i in ids]


def test_benchmark_case_runs():
    from lmkernels.bench import harness, tfree_patterns

    (case,) = tfree_patterns.cases(quick=True, device="cpu", tiny=True)
    assert tfree_patterns.cases(quick=True, device="cuda", tiny=True) == []
    record = harness.measure(case, harness.TINY)
    assert record["kernel"] == "tfree_patterns" and record["ours_ms"] > 0
    assert case.peer_scale == 16 and "x16" in case.peer


def test_rows_are_lazy_and_kept():
    patterns = TrigramPatterns(32000, 10, 2)
    assert patterns.rows_computed == 0
    first = patterns.row(trigram_id("Hel"))
    assert patterns.rows_computed == 1
    assert patterns.row(trigram_id("Hel")) == first and patterns.rows_computed == 1
    patterns.word_pattern("Hello")
    assert patterns.rows_computed == 5


@pytest.mark.parametrize("duplicate", [lambda p: pickle.loads(pickle.dumps(p)), copy.deepcopy])
def test_a_pickled_or_copied_table_keeps_its_config_and_recomputes_its_rows(duplicate):
    patterns = TrigramPatterns(32000, 10, 2)
    patterns.word_pattern("Hello")
    twin = duplicate(patterns)
    assert isinstance(twin, TrigramPatterns) and twin.native is not patterns.native
    assert (twin.vocab_size, twin.m, twin.k_lowercase, twin.rows_computed) == (32000, 10, 2, 0)
    assert twin.word_pattern("Hello") == patterns.word_pattern("Hello")
    assert twin.hashed_word("<|ws|>") == patterns.hashed_word("<|ws|>")


def test_rows_from_several_threads_equal_serial_rows():
    config = (32000, 10, 2)
    ids = torch.cat([torch.arange(trigram_id("aaa"), trigram_id("aaa") + 3000),  # mixed-case and lowercase rows
                     torch.randint(0, TRIGRAM_IDS, (3000,))])
    serial = TrigramPatterns(*config)
    expected = torch.tensor([serial.row(int(i)) for i in ids], dtype=torch.int32)
    shared = TrigramPatterns(*config)
    results = [None] * 4

    def work(t):  # every thread asks for all rows, in its own order, so rows race
        order = torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(t))
        out = shared.rows(ids[order])
        results[t] = torch.empty_like(out)
        results[t][order] = out

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        assert torch.equal(result, expected)
    assert shared.rows_computed == torch.unique(ids).numel()
    assert torch.equal(shared.rows(ids), expected)  # now read back from the table


# ---- the whole table -----------------------------------------------------------------------------

WHOLE_CONFIG = (32000, 2, 1)  # m = 2: the smallest table whose rows are part drawn, part lowercase surgery
SAMPLE_IDS = ([0, 1, 6637600, trigram_id("Hel"), trigram_id("hel"), trigram_id("ELL"), trigram_id(" a "),
               trigram_id("H1l"), 1 << 16, 12345678, TRIGRAM_IDS - 1]
              + torch.randint(0, TRIGRAM_IDS, (200,), generator=torch.Generator().manual_seed(0)).tolist())


@pytest.fixture(scope="module")
def precomputed():
    patterns = TrigramPatterns(*WHOLE_CONFIG)
    patterns.precompute()
    return patterns


def test_precomputed_table_equals_lazy_rows_and_reference(precomputed):
    assert precomputed.rows_computed == TRIGRAM_IDS
    lazy = TrigramPatterns(*WHOLE_CONFIG)
    expected = [ref.trigram_row(i, *WHOLE_CONFIG) for i in SAMPLE_IDS]
    assert precomputed.rows(torch.tensor(SAMPLE_IDS)).tolist() == [lazy.row(i) for i in SAMPLE_IDS] == expected
    assert precomputed.word_pattern("Hello") == ref.word_pattern("Hello", *WHOLE_CONFIG)
    precomputed.precompute()  # nothing left to compute
    assert precomputed.rows_computed == TRIGRAM_IDS
    assert precomputed.rows(torch.tensor(SAMPLE_IDS)).tolist() == expected


# ---- save and load -------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [(32000, 10, 2), (2**31, 5, 1)])
def test_save_load_round_trip(tmp_path, config):
    patterns = TrigramPatterns(*config)
    ids = torch.tensor([0, 5, trigram_id("Hel"), trigram_id("hel"), TRIGRAM_IDS - 1])
    expected = patterns.rows(ids)
    path = tmp_path / "table.bin"
    patterns.save(path)
    index_bytes = 2 if config[0] <= 65536 else 4
    assert path.stat().st_size == HEADER_BYTES + BITMAP_BYTES + ids.numel() * config[1] * index_bytes
    loaded = TrigramPatterns.load(path)
    assert (loaded.vocab_size, loaded.m, loaded.k_lowercase) == loaded._table.config == config
    assert loaded.rows_computed == ids.numel()
    assert torch.equal(loaded.rows(ids), expected)
    assert loaded.rows_computed == ids.numel()  # read from the file, not recomputed
    assert loaded.word_pattern("Hello") == ref.word_pattern("Hello", *config)


def test_save_load_round_trip_of_the_precomputed_table(tmp_path, precomputed):
    path = tmp_path / "table.bin"
    precomputed.save(path)
    assert path.stat().st_size == HEADER_BYTES + BITMAP_BYTES + TRIGRAM_IDS * WHOLE_CONFIG[1] * 2
    loaded = TrigramPatterns.load(path)
    assert (loaded.vocab_size, loaded.m, loaded.k_lowercase) == WHOLE_CONFIG
    assert loaded.rows_computed == TRIGRAM_IDS
    assert loaded.rows(torch.tensor(SAMPLE_IDS)).tolist() == [ref.trigram_row(i, *WHOLE_CONFIG) for i in SAMPLE_IDS]
    again = tmp_path / "again.bin"
    loaded.save(again)
    assert again.read_bytes() == path.read_bytes()  # the same config, bitmap and every row


def saved_bytes(tmp_path) -> bytes:
    patterns = TrigramPatterns(32000, 4, 1)
    patterns.rows(torch.tensor([1, 2, 3]))
    path = tmp_path / "good.bin"
    patterns.save(path)
    return path.read_bytes()


def corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:20], "too short"),
    (lambda d: d[:HEADER_BYTES + 100], "truncated"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"\0", "after the last row"),
    (lambda d: corrupt(d, 0, b"XMKTFPT\0"), "bad magic"),
    (lambda d: corrupt(d, 8, (2).to_bytes(4, "little")), "version"),
    (lambda d: corrupt(d, 12, (0).to_bytes(4, "little")), "bad config .m:"),
    (lambda d: corrupt(d, 12, (65).to_bytes(4, "little")), "bad config .m:"),
    (lambda d: corrupt(d, 16, (2).to_bytes(8, "little")), "bad config .vocab_size:"),
    (lambda d: corrupt(d, 24, (9).to_bytes(4, "little")), "bad config .k_lowercase:"),
    (lambda d: corrupt(d, 28, (4).to_bytes(4, "little")), "corrupt header"),
    (lambda d: corrupt(d, 32, (4).to_bytes(8, "little")), "bitmap marks"),
    (lambda d: corrupt(d, HEADER_BYTES + 10, b"\1"), "bitmap marks"),
    (lambda d: corrupt(d, HEADER_BYTES + BITMAP_BYTES, (32000).to_bytes(2, "little")), "outside"),
])
def test_load_rejects_corrupt_files(tmp_path, damage, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(damage(saved_bytes(tmp_path)))
    with pytest.raises(ValueError, match=message):
        TrigramPatterns.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        TrigramPatterns.load(tmp_path / "absent.bin")
    with pytest.raises(RuntimeError, match="path: cannot open"):
        _C.PatternTable.load(str(tmp_path / "absent.bin"))


# ---- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("config, field", [
    ((9, 10, 0), "vocab_size"), ((0, 1, 0), "vocab_size"), ((2**31 + 1, 10, 0), "vocab_size"),
    ((32000, 0, 0), "m"), ((32000, 65, 0), "m"), ((32000, 10, 11), "k_lowercase"), ((32000, 10, -1), "k_lowercase"),
])
def test_bad_configs(config, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        TrigramPatterns(*config)
    with pytest.raises(ValueError, match=f"^{field}:"):
        _C.PatternTable(*config)  # the native check, without the Python one in front


def test_bad_config_types():
    with pytest.raises(TypeError, match="vocab_size"):
        TrigramPatterns(32000.0, 10, 0)
    with pytest.raises(TypeError, match="m"):
        TrigramPatterns(32000, True, 0)


def test_bad_ids():
    patterns = table(32000, 10, 2)
    for bad in (TRIGRAM_IDS, -1, 2**40):
        with pytest.raises(IndexError, match="trigram_id"):
            patterns.row(bad)
        with pytest.raises(IndexError, match="^ids:"):
            patterns.rows(torch.tensor([1, bad]))
    with pytest.raises(IndexError, match="^id:"):
        patterns._table.row(TRIGRAM_IDS)
    with pytest.raises(TypeError, match="trigram_id"):
        patterns.row(1.0)
    with pytest.raises(TypeError, match="trigram_ids"):
        patterns.rows(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="trigram_ids"):
        patterns.rows(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="trigram_ids"):
        patterns.rows([1, 2])


def test_native_rows_checks_its_output():
    native = table(32000, 10, 2)._table
    ids = torch.tensor([1, 2])
    with pytest.raises(TypeError, match="^out:"):
        native.rows(ids, torch.empty(2, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="^out:"):
        native.rows(ids, torch.empty(2, 9, dtype=torch.int32))
    with pytest.raises(ValueError, match="^out:"):
        native.rows(ids, torch.empty(10, 2, dtype=torch.int32).t())


def test_bad_words():
    patterns = table(32000, 10, 2)
    for method in (patterns.word_pattern, patterns.trigram_ids, patterns.hashed_word):
        with pytest.raises(TypeError, match="word"):
            method(b"bytes")
        with pytest.raises(TypeError, match="word"):
            method(None)
        with pytest.raises(ValueError, match="word"):
            method("")
        with pytest.raises(ValueError, match="word"):
            method("<|\ud800|>")  # a lone surrogate has no UTF-8 form
    with pytest.raises(ValueError, match="^word: invalid UTF-8"):
        patterns._table.hashed_word(b"<|\xff|>")
    with pytest.raises(ValueError, match="^word: truncated UTF-8"):
        patterns._table.word_pattern(b"<|\xc3")


def test_save_and_load_refuse_paths_the_c_library_would_cut(tmp_path):
    patterns = TrigramPatterns(1000, 4, 0)
    with pytest.raises(ValueError, match="NUL"):
        patterns.save(str(tmp_path / "a\0b"))
    with pytest.raises(ValueError, match="NUL"):
        TrigramPatterns.load(str(tmp_path / "a\0b"))
    assert not (tmp_path / "a").exists()
    with pytest.raises(FileNotFoundError):
        patterns.save(tmp_path / "missing" / "table.bin")
