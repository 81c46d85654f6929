"""lmkernels.tfree.Tokenizer: batched native encoding against word_pattern, and the official
training/inference encoding tests (spec 6.1)."""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmkernels
from lmkernels.tfree import Tokenizer

SMALL = dict(vocab_size=32000, m=4, k_lowercase=0)  # the official test fixture's config


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(**SMALL)


def _expected_rows(tokenizer, texts):
    return [[row for word in tokenizer.split(text) for row in tokenizer.word_pattern(word)] for text in texts]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("ab Ab,.\n\t_1é€<|>ш")), max_size=40), max_size=5))
def test_encode_matches_split_and_word_pattern(texts):
    tokenizer = Tokenizer(vocab_size=1000, m=3, k_lowercase=1)
    encoding = tokenizer.encode(texts)
    assert encoding.num_texts == len(texts)
    for b, text in enumerate(texts):
        words = tokenizer.split(text)
        first, stop = int(encoding.word_offsets[b]), int(encoding.word_offsets[b + 1])
        assert stop - first == len(words)
        for w, word in enumerate(words, start=first):
            rows = encoding.rows[encoding.row_offsets[w]:encoding.row_offsets[w + 1]].tolist()
            assert rows == tokenizer.word_pattern(word)
            assert bool(encoding.is_endoftext[w]) == (word == "<|endoftext|>")


# Over 256 texts and over 16 KiB of text: the native encoder cuts such a batch into several blocks,
# which it encodes in parallel.
BATCH = [f"Text {i}: The Cat  sat\non the mat.<|endoftext|>Überall {i * 7919 % 1000} Ärger\t{'x' * (i % 9)}"
         for i in range(1100)] + ["word Word WORD " * 1500, "", "naïve café " * 2000]
LOWERCASE = dict(vocab_size=32000, m=4, k_lowercase=1)  # mixed-case rows read their lowercase rows


def _assert_same_encoding(actual, expected):
    for field in ("word_offsets", "row_offsets", "rows", "trigram_ids", "is_endoftext"):
        assert torch.equal(getattr(actual, field), getattr(expected, field)), field


def test_batch_encoding_is_the_same_on_one_and_two_threads():
    threads = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(1)
        single = Tokenizer(**LOWERCASE).encode(BATCH)
        lmkernels.set_num_threads(2)
        several = Tokenizer(**LOWERCASE).encode(BATCH)
    finally:
        lmkernels.set_num_threads(threads)
    _assert_same_encoding(several, single)
    assert single.word_offsets.diff().tolist() == [len(Tokenizer(**LOWERCASE).split(t)) for t in BATCH]
    flat = [row for rows in _expected_rows(Tokenizer(**LOWERCASE), BATCH) for row in rows]
    assert single.rows.tolist() == flat


def test_batch_encoding_from_two_python_threads_equals_serial():
    serial = Tokenizer(**LOWERCASE).encode(BATCH)
    shared = Tokenizer(**LOWERCASE)  # both calls compute the table's rows at once
    threads = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(2)
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda _: shared.encode(BATCH), range(2)))
    finally:
        lmkernels.set_num_threads(threads)
    for result in results:
        _assert_same_encoding(result, serial)


def test_encoding_layout_feeds_the_embedding_bag(tokenizer):
    encoding = tokenizer.encode(["Hello world!", "", "<|endoftext|>x"])
    assert encoding.word_offsets.tolist() == [0, 3, 3, 5]
    assert encoding.rows.dtype == torch.int32 and encoding.rows.shape[1] == 4
    indices, offsets = encoding.bags()
    assert offsets[-1] == indices.numel() == encoding.rows.numel()
    # The hashed word has a single row marked with trigram id -1.
    eot = int(encoding.row_offsets[3])
    assert encoding.trigram_ids[eot] == -1 and encoding.row_offsets[4] - encoding.row_offsets[3] == 1
    hello = torch.tensor(tokenizer.word_pattern("Hello"), dtype=torch.int32)
    torch.testing.assert_close(encoding.rows[: hello.shape[0]], hello)


def test_official_encode_and_training_counts(tokenizer):
    assert tokenizer.encode("Hello world!").num_words == 3
    batch = tokenizer.encode_training("Hello world!")
    assert batch.shape == (1, 2)
    assert batch.input_offsets.numel() == 3 and batch.target_offsets.numel() == 3


def test_official_training_encoding_with_document_reset(tokenizer):
    batch = tokenizer.encode_training("Hello World!" + "<|endoftext|>" + "42" + "<|endoftext|>")
    assert batch.shape == (1, 6)
    assert batch.target_is_endoftext[0].tolist() == [False, False, True, False, False, True]
    masked = ~batch.attention_allowed()[0]
    expected = [[False, True, True, True, True, True],
                [False, False, True, True, True, True],
                [False, False, False, True, True, True],
                [True, True, True, False, True, True],
                [True, True, True, False, False, True],
                [True, True, True, False, False, False]]
    assert masked.tolist() == expected
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1, 2]


def test_official_training_lengths(tokenizer):
    texts = ["Hello World!", "This is a test!", "12345"]
    assert sum(tokenizer.encode_training(t).shape[1] for t in texts) == 10
    assert tokenizer.encode_training(texts[1], seq_len=4).shape == (1, 4)
    padded = tokenizer.encode_training(texts, seq_len=2048)
    assert padded.shape == (3, 2048)
    assert padded.loss_weights[:, 4:].abs().sum() == 0
    with pytest.raises(ValueError, match="seq_len"):
        tokenizer.encode_training(texts)  # unequal lengths need seq_len


def test_official_instruction_chunks(tokenizer):
    chunks = [("<|begin_of_text|><|start_header_id|>user<|end_header_id|>Provide a poem<|endoftext|>"
               "<|start_header_id|>assistant<|end_header_id|>", 0.0), ("The sun is shining.<|endoftext|>", 1.0)]
    batch = tokenizer.encode_training(chunks, reset_at_endoftext=False)
    assert batch.loss_weights[0].tolist() == [0.0] * 10 + [1.0] * 6
    assert batch.target_is_endoftext[0, 15]
    targets = ["<|start_header_id|>", "user", "<|end_header_id|>", "Provide", "a", "poem", "<|endoftext|>",
               "<|start_header_id|>", "assistant", "<|end_header_id|>", "The", "sun", "is", "shining", ".",
               "<|endoftext|>"]
    expected = torch.tensor([row for word in targets for row in tokenizer.word_pattern(word)], dtype=torch.int32)
    torch.testing.assert_close(batch.target_rows, expected)
    padded = tokenizer.encode_training(chunks, seq_len=32, reset_at_endoftext=False)
    assert padded.loss_weights[0, 16:].abs().sum() == 0 and padded.shape == (1, 32)


def test_official_inference_encoding(tokenizer):
    encoding = tokenizer.encode(["Hello World!", "This is a test!", "12345"])
    assert encoding.num_words == 13


def test_encode_words_and_lowercase_option():
    tokenizer = Tokenizer(vocab_size=500, m=2, k_lowercase=0, lowercase=True)
    assert tokenizer.split("Hello World") == ["hello", "world"]
    single = tokenizer.encode_words(["hello"])
    assert single.num_words == 1
    # encode_words lowercases as encode does: "Hello" alone gets the rows of "hello".
    assert torch.equal(tokenizer.encode_words(["Hello"]).rows, single.rows)
    assert torch.equal(tokenizer.encode("Hello").rows, single.rows)
    with pytest.raises(ValueError):
        tokenizer.encode_words([""])


def test_bad_input(tokenizer):
    with pytest.raises(TypeError, match="texts"):
        tokenizer.encode(["ok", 3])
    with pytest.raises(ValueError):
        tokenizer.encode(["bad \ud800 surrogate"])
    with pytest.raises(TypeError, match="words"):
        tokenizer.encode_words([b"bytes"])
    with pytest.raises(ValueError, match="seq_len"):
        tokenizer.encode_training("Hello", seq_len=0)
    with pytest.raises(TypeError, match="sequences\\[0\\]"):
        tokenizer.encode_training([b"\xff"], seq_len=3)
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer(vocab_size=3, m=4, k_lowercase=0)  # v < m
    with pytest.raises(ValueError, match="m"):
        Tokenizer(vocab_size=100, m=0, k_lowercase=0)
    with pytest.raises(TypeError, match="text"):
        tokenizer.split(b"bytes")
    assert tokenizer.encode("").num_words == 0
    huge = "a" * (1 << 20)  # a megabyte-long word with three distinct trigrams: " aa", "aaa", "aa "
    assert tokenizer.encode(huge).rows.shape == (3, 4)


def test_bytes_or_a_str_where_a_list_is_expected_are_rejected(tokenizer):
    with pytest.raises(TypeError, match="^texts: expected a str or a sequence of str, got bytes"):
        tokenizer.encode(b"abc")
    for words in ("abc", b"abc"):
        with pytest.raises(TypeError, match="^words: expected a sequence of str"):
            tokenizer.encode_words(words)
    with pytest.raises(TypeError, match="^sequences: expected a str, a list of"):
        tokenizer.encode_training(b"a b c")


@pytest.mark.parametrize("sequences, error, message", [
    ([("a b c",)], TypeError, "^sequences\\[0\\]: expected a \\(text, loss_weight\\) pair, got \\('a b c',\\)"),
    ([("a b", 1.0, 2.0)], TypeError, "^sequences\\[0\\]: expected a \\(text, loss_weight\\) pair"),
    ([("a b", 1.0), "c d"], TypeError, "^sequences\\[1\\]: expected a \\(text, loss_weight\\) pair"),
    ([("a b", "x")], TypeError, "^sequences\\[0\\]: expected a real number as loss_weight, got str"),
    ([("a b", "0.5")], TypeError, "^sequences\\[0\\]: expected a real number"),
    ([("a b", None)], TypeError, "^sequences\\[0\\]: expected a real number"),
    ([(3, 1.0)], TypeError, "^sequences\\[0\\]: expected str, got int"),
    ([("a b", math.nan)], ValueError, "^sequences\\[0\\]: expected a finite loss_weight, got nan"),
    ([("a b", math.inf)], ValueError, "^sequences\\[0\\]: expected a finite loss_weight"),
    (["a b", [("c d", 1.0), ("e",)]], TypeError, "^sequences\\[1\\]\\[1\\]: expected a \\(text, loss_weight\\) pair"),
    (["a b", [("c d", 1.0), ("e f", "1")]], TypeError, "^sequences\\[1\\]\\[1\\]: expected a real number"),
    (["a b", [["c d"]]], TypeError, "^sequences\\[1\\]\\[0\\]: expected a \\(text, loss_weight\\) pair"),
    (3, TypeError, "^sequences: expected a str, a list of"),
])
def test_malformed_chunks_are_named(tokenizer, sequences, error, message):
    with pytest.raises(error, match=message):
        tokenizer.encode_training(sequences, seq_len=4)


def test_chunk_weights_may_be_any_real_number(tokenizer):
    batch = tokenizer.encode_training([[("a b", 0), ("c d", numpy.float32(0.5)), ("e", True)]])
    assert batch.loss_weights.tolist() == [[0.0, 0.5, 0.5, 1.0]]
