"""T-FREE dictionary decoding: index sets and the row table, scores, ties, growth, device copies, pickling, the
dictionary builder."""

import copy
import pickle

import pytest
import torch

from lmkernels import data
from lmkernels.ops import dictionary_scores
from lmkernels.tfree import SPECIAL_WORDS, Decoder, Tokenizer, build_dictionary
from lmkernels.tfree.generate import _best_word


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(vocab_size=2000, m=4, k_lowercase=1)


@pytest.fixture(scope="module")
def colliding():
    """A hash space so small that nearly any two rows of a word share an index, and rows repeat indices."""
    return Tokenizer(vocab_size=50, m=10, k_lowercase=2)


@pytest.fixture(scope="module")
def english(tokenizer):
    """A realistic dictionary: the special words, then the 3000 most frequent words of English prose
    (capitalised words, digits and punctuation among them)."""
    words = build_dictionary(tokenizer, [data.text()[:200_000]], size=3000)
    assert any(w[0].isupper() for w in words) and any(w.isdigit() for w in words)
    return words


def _is_edge(trigram: int) -> bool:
    return trigram >= 0 and (trigram & 0xFF == 0x20 or trigram >> 16 == 0x20)


def _patterns(tokenizer, words):
    """Per word, its (non-edge, edge) rows, each row a list of indices."""
    encoding = tokenizer.encode_words(list(words))
    rows, trigrams, offsets = encoding.rows.tolist(), encoding.trigram_ids.tolist(), encoding.row_offsets.tolist()
    return [([rows[r] for r in range(a, b) if not _is_edge(trigrams[r])],
             [rows[r] for r in range(a, b) if _is_edge(trigrams[r])]) for a, b in zip(offsets[:-1], offsets[1:])]


def _index_sets(tokenizer, words, device="cpu"):
    """The arguments of dictionary_scores for the words' NE and E index sets (the union of their rows'
    indices taken with Python sets) and their trigram counts."""
    sets = {"ne": [], "edge": []}
    for pattern in _patterns(tokenizer, words):
        for name, rows in zip(sets, pattern):
            sets[name].append(sorted({i for row in rows for i in row}))
    tensors = []
    for lists in sets.values():
        tensors.append(torch.tensor([i for indices in lists for i in indices], dtype=torch.int32))
        tensors.append(torch.tensor([0] + [len(indices) for indices in lists]).cumsum(0).int())
    tensors.append(tokenizer.encode_words(list(words)).row_offsets.diff().int())
    return [t.to(device) for t in tensors]


def _table_rows(decoder):
    """The index lists of the rows in the decoder's row table, by row id."""
    offsets = decoder._tensors["row_offsets"].tolist()
    return [decoder._tensors["row_indices"][a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def _rows_of_each_word(decoder, ids_name, offsets_name):
    """Per word, the index lists of the rows that ``ids_name`` gives it in the decoder's row table."""
    table = _table_rows(decoder)
    ids, offsets = decoder._tensors[ids_name].tolist(), decoder._tensors[offsets_name].tolist()
    return [[table[r] for r in ids[a:b]] for a, b in zip(offsets[:-1], offsets[1:])]


@pytest.mark.parametrize("shape", [(2000, 4, 1), (32000, 10, 2), (50, 10, 2)])
def test_row_table_scores_equal_the_index_sets(english, device, shape):
    tokenizer = Tokenizer(*shape)
    decoder = Decoder(tokenizer, english)
    assert decoder.uses_row_table
    sets = _index_sets(tokenizer, english, device)
    logits = torch.randn(3, tokenizer.vocab_size, device=device) * 3
    for variant in ("contrast", "mean"):
        for edge_weight in (1.0, 0.5, 0.0, 2.5):
            torch.testing.assert_close(
                decoder.scores(logits, edge_weight=edge_weight, variant=variant),
                dictionary_scores(logits, *sets, m=tokenizer.m, edge_weight=edge_weight, variant=variant),
                rtol=1e-5, atol=1e-5)


def test_rows_that_repeat_an_index_give_way_to_derived_rows(colliding, english, device):
    (decoding, _), (_, an), (ws, _) = _patterns(colliding, ["decoding", "An", "<|ws|>"])
    assert set(decoding[0]) & set(decoding[1])  # two rows of a word share an index
    assert any(len(set(row)) < len(row) for row in an)  # partial lowercase: " An" and "An " repeat one
    assert len(set(ws[0])) < len(ws[0])  # a hashed word's row repeats an index
    words = list(dict.fromkeys([*english, "decoding", "An", "<|ws|>"]))  # the dictionary holds some already
    decoder = Decoder(colliding, words)
    assert decoder.uses_row_table
    tensors = decoder._tensors
    lengths = tensors["row_offsets"].diff()
    assert (lengths < colliding.m).any() and (lengths > 0).all()  # derived rows, none empty
    used = torch.cat([tensors["ne_indices"], tensors["edge_indices"]]).unique()
    assert used.tolist() == list(range(lengths.numel()))  # and no row that no word keeps
    sets = _index_sets(colliding, words)
    for (indices, offsets), rows_of_words in ((sets[0:2], _rows_of_each_word(decoder, "ne_indices", "ne_offsets")),
                                              (sets[2:4], _rows_of_each_word(decoder, "edge_indices", "edge_offsets"))):
        for w, rows in enumerate(rows_of_words):
            # The word's rows are disjoint, and together hold its index set.
            assert sorted(i for row in rows for i in row) == indices[offsets[w]:offsets[w + 1]].tolist(), words[w]
    logits = torch.randn(2, colliding.vocab_size, device=device)
    sets = [t.to(device) for t in sets]
    for variant in ("contrast", "mean"):
        torch.testing.assert_close(decoder.scores(logits, edge_weight=0.7, variant=variant),
                                   dictionary_scores(logits, *sets, m=colliding.m, edge_weight=0.7, variant=variant),
                                   rtol=1e-5, atol=1e-5)


def test_adding_in_batches_equals_one_construction(tokenizer, english, device):
    whole = Decoder(tokenizer, english)
    grown = Decoder(tokenizer, english[:5])
    for start, stop in ((3, 40), (40, 41), (41, 1500), (1000, len(english))):  # with words already present
        grown.add(english[start:stop])
    assert grown.words == whole.words and grown.uses_row_table and whole.uses_row_table
    rows = [tuple(row) for row in _table_rows(grown)]
    assert len(set(rows)) == len(rows)  # a row that batches share has one id
    assert set(rows) == {tuple(row) for row in _table_rows(whole)}
    logits = torch.randn(4, tokenizer.vocab_size, device=device)
    torch.testing.assert_close(grown.scores(logits, edge_weight=0.6), whole.scores(logits, edge_weight=0.6),
                               rtol=1e-5, atol=1e-5)


def test_the_cheaper_form_is_chosen_for_the_whole_dictionary(tokenizer, english, device):
    unrelated = ["a", "dog", "<|endoftext|>", "zebra"]
    decoder = Decoder(tokenizer, unrelated)
    assert not decoder.uses_row_table and set(decoder._tensors) == {"ne_indices", "ne_offsets", "edge_indices",
                                                                    "edge_offsets", "trigram_counts"}
    logits = torch.randn(2, tokenizer.vocab_size, device=device)
    for words in (unrelated, english):
        decoder.add(words)  # a realistic dictionary after the unrelated words: the row table is cheaper
        assert decoder.uses_row_table == (words is english)
        sets = _index_sets(tokenizer, decoder.words, device)
        torch.testing.assert_close(decoder.scores(logits), dictionary_scores(logits, *sets, m=tokenizer.m),
                                   rtol=1e-5, atol=1e-5)
    assert not Decoder(tokenizer).uses_row_table


def test_dictionary_sets_and_scores(tokenizer):
    decoder = Decoder(tokenizer, ["<|endoftext|>", "Hello", "a", "world"])
    logits = torch.randn(3, tokenizer.vocab_size)
    scores = decoder.scores(logits, edge_weight=0.5)
    a = torch.sigmoid(logits)
    v, m = tokenizer.vocab_size, tokenizer.m
    for w, word in enumerate(decoder.words):
        rows = tokenizer.word_pattern(word)
        ids = [-1] if word.startswith("<|") else tokenizer.patterns.trigram_ids(word)
        edge = {i for row, t in zip(rows, ids) if _is_edge(t) for i in row}
        inner = {i for row, t in zip(rows, ids) if not _is_edge(t) for i in row}
        s = a[:, sorted(inner)].sum(1) + 0.5 * a[:, sorted(edge)].sum(1)
        n = len(rows)
        expected = s / (m * n) + (s - a.sum(1)) / (v - m * n)
        torch.testing.assert_close(scores[:, w], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("row_table", [False, True])
def test_dictionary_copies_its_tensors_to_another_device_once(tokenizer, english, row_table):
    decoder = Decoder(tokenizer, english if row_table else ["a", "b"])
    assert decoder.uses_row_table == row_table
    meta = torch.device("meta")
    copies = decoder._tensors_on(meta)
    assert copies.keys() == decoder._tensors.keys() and ("row_indices" in copies) == row_table
    assert all(t.device == meta for t in copies.values()) and decoder._tensors_on(meta) is copies
    assert decoder._tensors_on(torch.device("cpu")) is decoder._tensors
    decoder.add(["zebra"])
    refreshed = decoder._tensors_on(meta)
    assert refreshed is not copies and refreshed["trigram_counts"].shape == (len(decoder),)


def test_a_copy_grows_on_its_own(tokenizer, english):
    original = Decoder(tokenizer, english[:1000])
    meta = torch.device("meta")
    original._tensors_on(meta)
    copied = copy.copy(original)  # as lmkernels.atman's T-FREE adapter does
    copied.add(english[1000:])
    assert len(original) == 1000 and "zebra" not in copied
    assert original._tensors_on(meta)["trigram_counts"].shape == (1000,)
    original.add(["zebra", *english[2000:2500]])  # rows the copy added get their own ids here
    logits = torch.randn(2, tokenizer.vocab_size)
    torch.testing.assert_close(original.scores(logits), Decoder(tokenizer, original.words).scores(logits),
                               rtol=1e-5, atol=1e-5)
    assert copied.words == english


def test_an_add_is_all_or_nothing_wherever_it_is_interrupted(tokenizer, english):
    import sys

    base, extra = english[:300], english[300:306]
    logits = torch.randn(2, tokenizer.vocab_size)
    before = Decoder(tokenizer, base).scores(logits)
    after = Decoder(tokenizer, base + extra).scores(logits)
    stop_at = 1
    while True:  # a KeyboardInterrupt at the first line of add, then at the second, ... until add finishes
        decoder, lines = Decoder(tokenizer, base), 0

        def interrupt(frame, event, arg):
            nonlocal lines
            if event == "line":
                lines += 1
                if lines == stop_at:
                    raise KeyboardInterrupt
            return interrupt

        def trace(frame, event, arg):
            return interrupt if frame.f_code is Decoder.add.__code__ else None

        sys.settrace(trace)
        try:
            decoder.add(extra)
            finished = True
        except KeyboardInterrupt:
            finished = False
        finally:
            sys.settrace(None)
        if finished:
            break
        if len(decoder) == len(base):  # nothing happened; else it was interrupted after it grew
            assert torch.equal(decoder.scores(logits), before), stop_at
            decoder.add(extra)
        assert len(decoder) == len(base) + len(extra), stop_at
        torch.testing.assert_close(decoder.scores(logits), after, rtol=1e-5, atol=1e-5)
        stop_at += 1
    assert stop_at > 20  # every line of add was interrupted once
    torch.testing.assert_close(decoder.scores(logits), after, rtol=1e-5, atol=1e-5)


def test_dictionary_rejects_entries_that_are_not_one_word(tokenizer):
    decoder = Decoder(tokenizer)
    assert len(decoder) == 0
    with pytest.raises(ValueError, match="not a single word"):
        decoder.add(["two words"])
    with pytest.raises(TypeError):
        decoder.add([3])
    assert decoder.add(["x", "x", "y"]) == 2 and decoder.add(["x"]) == 0


def test_dictionary_rejects_a_str_for_its_words(tokenizer):
    decoder = Decoder(tokenizer)
    for words in ("hello", b"hello"):
        with pytest.raises(TypeError, match="^words: expected an iterable of str"):
            Decoder(tokenizer, words)
        with pytest.raises(TypeError, match="^words: expected an iterable of str"):
            decoder.add(words)
    assert len(decoder) == 0


def test_a_lowercasing_tokenizer_gives_a_lowercase_dictionary():
    lowercasing = Tokenizer(vocab_size=2000, m=4, k_lowercase=1, lowercase=True)
    decoder = Decoder(lowercasing, ["Hello", "hello", "WORLD"])
    assert decoder.words == ["hello", "world"] and "Hello" in decoder and "hello" in decoder
    assert decoder.add(["World", "cat"]) == 1
    logits = torch.randn(2, lowercasing.vocab_size)
    assert torch.equal(decoder.scores(logits), Decoder(lowercasing, ["hello", "world", "cat"]).scores(logits))
    # A dotted capital I lowercases to an i and a combining dot, which the splitter parts.
    with pytest.raises(ValueError, match="^words: 'İ' \\(lowercased by the tokenizer to 'i̇'\\) is not a single"):
        decoder.add(["İ"])
    assert "Hello" not in Decoder(Tokenizer(vocab_size=2000, m=4, k_lowercase=1), ["hello"])


def test_the_word_index_looks_words_up_as_the_dictionary_holds_them():
    decoder = Decoder(Tokenizer(vocab_size=2000, m=4, k_lowercase=1, lowercase=True), ["Hello", "WORLD"])
    assert decoder.index["Hello"] == decoder.index["hello"] == 0 and decoder.index["World"] == 1
    assert "HELLO" in decoder.index and list(decoder.index) == ["hello", "world"] and len(decoder.index) == 2
    with pytest.raises(KeyError):
        decoder.index["cat"]
    exact = Decoder(Tokenizer(vocab_size=2000, m=4, k_lowercase=1), ["hello"])
    assert exact.index["hello"] == 0 and "Hello" not in exact.index
    with pytest.raises(TypeError):
        exact.index["hello"] = 1  # read-only: the kernel's tensors follow add(), not the map


def test_scores_reject_logits_of_another_vocabulary_size(tokenizer):
    decoder = Decoder(tokenizer, ["hello", "world"])
    logits = torch.randn(2, tokenizer.vocab_size)
    for bad in (torch.cat([logits, torch.full((2, 24), 5.0)], 1), logits[:, :900], logits[0]):
        with pytest.raises(ValueError, match=f"^logits: expected shape \\[Q, {tokenizer.vocab_size}\\]"):
            decoder.scores(bad)
        with pytest.raises(ValueError, match="^logits:"):
            decoder.top(bad)
    with pytest.raises(TypeError, match="^logits:"):
        decoder.scores(logits.numpy())


def test_equal_scores_go_to_the_word_added_first(tokenizer):
    # Words of as many trigrams score the same against zero logits; topk would pick any of them.
    words = ["ab", "cd", "ef", "gh", "ij"]
    decoder = Decoder(tokenizer, words)
    logits = torch.zeros(2, tokenizer.vocab_size)
    assert decoder.scores(logits).unique().numel() == 1
    assert [[word for word, _ in row] for row in decoder.top(logits, 3)] == [words[:3]] * 2
    assert _best_word(decoder, Decoder(tokenizer), logits[:1]) == "ab"
    assert _best_word(Decoder(tokenizer, ["ef"]), decoder, logits[:1]) == "ef"  # the first decoder's first


@pytest.mark.parametrize("duplicate", [lambda d: pickle.loads(pickle.dumps(d)), copy.deepcopy])
def test_a_pickled_or_copied_decoder_scores_the_same(tokenizer, english, duplicate):
    decoder = Decoder(tokenizer, english[:500], edge_weight=0.7, variant="mean")
    twin = duplicate(decoder)
    assert twin.words == decoder.words and twin.tokenizer is not decoder.tokenizer
    logits = torch.randn(3, tokenizer.vocab_size)
    assert torch.equal(twin.scores(logits), decoder.scores(logits))
    assert twin.top(logits, 4) == decoder.top(logits, 4)
    assert twin.add(["zebra"]) == 1 and "zebra" not in decoder
    copied_tokenizer = duplicate(tokenizer)
    assert repr(copied_tokenizer) == repr(tokenizer)
    assert torch.equal(copied_tokenizer.encode("Hello world").rows, tokenizer.encode("Hello world").rows)


def test_empty_dictionary_and_nan_logits(tokenizer):
    empty = Decoder(tokenizer)
    logits = torch.randn(2, tokenizer.vocab_size)
    assert empty.scores(logits).shape == (2, 0)
    with pytest.raises(ValueError, match="k"):
        empty.top(logits)
    decoder = Decoder(tokenizer, ["a", "b"])
    logits[0, 0] = float("nan")
    scores = decoder.scores(logits)
    assert scores[0].isnan().all() and not scores[1].isnan().any()  # documented: NaN spreads through the total


def test_dictionary_builder_orders_specials_counts_and_first_appearance(tokenizer):
    texts = ["zeta alpha zeta", "beta alpha gamma beta<|endoftext|>", "beta"]
    specials = ("<|ws|>", "<|endoftext|>")
    everything = ["<|ws|>", "<|endoftext|>", "beta", "zeta", "alpha", "gamma"]
    assert build_dictionary(tokenizer, texts, specials=specials) == everything
    assert build_dictionary(tokenizer, texts, size=4, specials=specials) == everything[:4]
    assert build_dictionary(tokenizer, texts, size=1, specials=specials) == ["<|ws|>"]
    assert build_dictionary(tokenizer, texts, size=2, specials=specials) == ["<|ws|>", "<|endoftext|>"]
    assert build_dictionary(tokenizer, texts) == [*SPECIAL_WORDS, "beta", "zeta", "alpha", "gamma"]
    assert build_dictionary(tokenizer, ["b a", "a b"], specials=()) == ["b", "a"]


def test_dictionary_builder_rejects_a_str_for_its_texts_or_specials(tokenizer):
    with pytest.raises(TypeError, match="^texts: expected a sequence of str, got str"):
        build_dictionary(tokenizer, "hello world")
    with pytest.raises(TypeError, match="^texts: expected a sequence of str, got bytes"):
        build_dictionary(tokenizer, b"hello world")
    with pytest.raises(TypeError, match="^specials: expected a sequence of str, got str"):
        build_dictionary(tokenizer, ["hello world"], specials="<|ws|>")


@pytest.mark.parametrize("size", [0, -1])
def test_dictionary_builder_rejects_sizes_below_one(tokenizer, size):
    with pytest.raises(ValueError, match="^size:"):
        build_dictionary(tokenizer, ["a b"], size=size)
