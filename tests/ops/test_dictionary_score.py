"""lmk::dictionary_scores against the reference: values, variants, edge cases, compile, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import lmkernels
from lmkernels import reference
from lmkernels.ops import dictionary_scores, top_words

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def index_sets(set_sizes, vocab, device="cpu"):
    """CSR of distinct random indices per word: (indices int32, offsets int32)."""
    indices = [torch.randperm(vocab)[:size] for size in set_sizes]
    offsets = torch.tensor([0] + [len(i) for i in indices], dtype=torch.int64).cumsum(0)
    flat = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
    return flat.to(device=device, dtype=torch.int32), offsets.to(device=device, dtype=torch.int32)


@st.composite
def problems(draw):
    queries = draw(st.integers(0, 5))
    vocab = draw(st.integers(1, 80))
    words = draw(st.integers(0, 8))
    ne_sizes = draw(st.lists(st.integers(0, min(vocab, 20)), min_size=words, max_size=words))
    edge_sizes = draw(st.lists(st.integers(0, min(vocab, 20)), min_size=words, max_size=words))
    counts = draw(st.lists(st.integers(1, 12), min_size=words, max_size=words))
    m = draw(st.integers(1, 12))
    edge_weight = draw(st.sampled_from([1.0, 0.0, 0.7, -0.5, 2.5]))
    variant = draw(st.sampled_from(["contrast", "mean"]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    strided = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return queries, vocab, ne_sizes, edge_sizes, counts, m, edge_weight, variant, dtype, strided, seed


def build(problem, device="cpu"):
    queries, vocab, ne_sizes, edge_sizes, counts, m, edge_weight, variant, dtype, strided, seed = problem
    torch.manual_seed(seed)
    logits = (3 * torch.randn(queries, vocab + 5 if strided else vocab)).to(device=device, dtype=dtype)[:, :vocab]
    dictionary = (*index_sets(ne_sizes, vocab, device), *index_sets(edge_sizes, vocab, device),
                  torch.tensor(counts, dtype=torch.int32, device=device))
    return logits, dictionary, m, edge_weight, variant


def check(problem, device="cpu"):
    logits, dictionary, m, edge_weight, variant = build(problem, device)
    ours = dictionary_scores(logits, *dictionary, m, edge_weight, variant)
    expected = reference.dictionary_scores(logits, *dictionary, m, edge_weight, variant)
    assert ours.dtype == torch.float32 and ours.shape == (logits.shape[0], dictionary[-1].numel())
    torch.testing.assert_close(ours, expected, **TOLERANCE)


@settings(max_examples=200, deadline=None)
@given(problems())
def test_matches_reference(problem):
    check(problem)


# (queries, vocab, NE set sizes, E set sizes, trigram counts, m, e, variant, dtype, strided, seed). Over 32
# queries (several passes on the CPU), every lane count, one query (the scalar path), hashed words
# (n = 1, no edge set), and words with v - m n <= 0.
FIXED_PROBLEMS = [
    (70, 1000, [40, 0, 10, 30] * 30, [20, 20, 0, 10] * 30, [6, 3, 1, 4] * 30, 10, 0.8, "contrast", torch.float32,
     False, 1),
    (13, 517, [7, 3, 0, 9] * 9, [2, 0, 0, 4] * 9, [1, 2, 1, 3] * 9, 4, 1.0, "mean", torch.bfloat16, True, 2),
    (41, 333, [30] * 17, [5] * 17, [3] * 16 + [40], 10, 0.5, "contrast", torch.float16, False, 3),
    (1, 32000, [60] * 50, [20] * 50, [8] * 50, 10, 1.0, "contrast", torch.float32, False, 4),
]


@pytest.mark.parametrize("problem", FIXED_PROBLEMS)
def test_fixed_problems_on_every_device(device, problem):
    check(problem, device)


# Every lane layout of the CUDA kernel: 1 to 32 lanes per activations row, one float4 per lane where
# Q % 4 == 0 below 32 queries and two from 32, lanes without queries (5, 12, 100), lanes with only their
# first float4 (36, 72, 100), several query groups with a partial last one (33, 132, 260); 42 words (a
# partial last task of 8), empty sets and empty words.
@pytest.mark.parametrize("queries", [1, 2, 3, 4, 5, 8, 12, 16, 31, 32, 33, 36, 64, 72, 100, 128, 132, 260])
def test_every_query_count(device, queries):
    problem = (queries, 300, [0, 7, 25, 64, 3, 0] * 7, [2, 0, 9, 20, 1, 0] * 7, [3, 1, 4, 9, 2, 1] * 7, 5, 0.7,
               "mean" if queries % 5 == 0 else "contrast", torch.float32, queries % 3 == 0, queries)
    check(problem, device)
    logits, dictionary, m, e, variant = build(problem, device)
    first = dictionary_scores(logits, *dictionary, m, e, variant)
    assert torch.equal(first, dictionary_scores(logits, *dictionary, m, e, variant))


@pytest.mark.parametrize("variant", ["contrast", "mean"])
def test_handwritten_example(device, variant):
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0, 0.5]], device=device)
    a = torch.sigmoid(logits[0]).tolist()
    ne_indices = torch.tensor([1, 3, 0], dtype=torch.int32, device=device)  # word 0: {1, 3}; word 1: {0}
    ne_offsets = torch.tensor([0, 2, 3], dtype=torch.int32, device=device)
    edge_indices = torch.tensor([3, 4], dtype=torch.int32, device=device)  # word 0: {3, 4}; word 1: {}
    edge_offsets = torch.tensor([0, 2, 2], dtype=torch.int32, device=device)
    counts = torch.tensor([2, 1], dtype=torch.int32, device=device)
    scores = dictionary_scores(logits, ne_indices, ne_offsets, edge_indices, edge_offsets, counts, 1, 0.5, variant)
    s0, s1, total = a[1] + a[3] + 0.5 * (a[3] + a[4]), a[0], sum(a)
    expected = [s0 / 2, s1 / 1]
    if variant == "contrast":
        expected = [expected[0] + (s0 - total) / 3, expected[1] + (s1 - total) / 4]
    assert scores.cpu()[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_words_longer_than_the_vocabulary_get_their_mean_score(device):
    logits = torch.randn(3, 20, device=device)
    ne_indices, ne_offsets = index_sets([5, 5, 5], 20, device)
    edge_indices, edge_offsets = index_sets([2, 2, 2], 20, device)
    counts = torch.tensor([2, 10, 3], dtype=torch.int32, device=device)  # m n = 4, 20 (= v), 6
    args = (ne_indices, ne_offsets, edge_indices, edge_offsets, counts, 2, 1.0)
    contrast, mean = dictionary_scores(logits, *args, "contrast"), dictionary_scores(logits, *args, "mean")
    assert torch.equal(contrast[:, 1], mean[:, 1])
    assert not torch.equal(contrast[:, 0], mean[:, 0])


def test_empty_dictionary_gives_empty_scores(device):
    logits = torch.randn(4, 10, device=device)
    empty = torch.zeros(0, dtype=torch.int32, device=device)
    offsets = torch.zeros(1, dtype=torch.int32, device=device)
    scores = dictionary_scores(logits, empty, offsets, empty, offsets, empty, 3)
    assert scores.shape == (4, 0) and scores.dtype == torch.float32


def test_no_queries(device):
    _, dictionary, m, e, variant = build(FIXED_PROBLEMS[1], device)
    scores = dictionary_scores(torch.zeros(0, 517, device=device), *dictionary, m, e, variant)
    assert scores.shape == (0, 36)


@pytest.mark.parametrize("variant", ["contrast", "mean"])
def test_nan_logits_give_nan_scores(device, variant):
    logits = torch.randn(2, 30, device=device)
    logits[1, 7] = float("nan")
    ne_indices = torch.tensor([7, 1, 2, 3], dtype=torch.int32, device=device)  # word 0 holds column 7, word 1 not
    ne_offsets = torch.tensor([0, 2, 4], dtype=torch.int32, device=device)
    edge_indices, edge_offsets = index_sets([0, 0], 30, device)
    counts = torch.tensor([1, 1], dtype=torch.int32, device=device)
    scores = dictionary_scores(logits, ne_indices, ne_offsets, edge_indices, edge_offsets, counts, 2, 1.0, variant)
    assert not scores[0].isnan().any()
    assert scores[1, 0].isnan()
    assert scores[1, 1].isnan() == (variant == "contrast")


def test_extreme_logits_saturate(device):
    logits = torch.tensor([[float("inf"), float("-inf"), 1e4, -1e4, 0.0]], device=device)
    ne_indices = torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32, device=device)
    ne_offsets = torch.tensor([0, 1, 2, 3, 4, 5], dtype=torch.int32, device=device)
    edge_indices, edge_offsets = index_sets([0] * 5, 5, device)
    counts = torch.ones(5, dtype=torch.int32, device=device)
    scores = dictionary_scores(logits, ne_indices, ne_offsets, edge_indices, edge_offsets, counts, 1, 1.0, "mean")
    torch.testing.assert_close(scores.cpu(), torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.5]]), rtol=0, atol=1e-30)


def large_problem(device="cpu"):
    return build((70, 2000, [30] * 300, [10] * 300, [5] * 300, 10, 0.8, "contrast", torch.float32, False, 9), device)


def test_bitwise_deterministic(device):
    logits, dictionary, m, e, variant = large_problem(device)
    first = dictionary_scores(logits, *dictionary, m, e, variant)
    for _ in range(3):
        assert torch.equal(first, dictionary_scores(logits, *dictionary, m, e, variant))


def test_same_result_for_any_thread_count():
    logits, dictionary, m, e, variant = large_problem()
    threads = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(1)
        single = dictionary_scores(logits, *dictionary, m, e, variant)
        lmkernels.set_num_threads(3)
        several = dictionary_scores(logits, *dictionary, m, e, variant)
    finally:
        lmkernels.set_num_threads(threads)
    assert torch.equal(single, several)


def test_concurrent_calls_from_python_threads():
    from concurrent.futures import ThreadPoolExecutor

    logits, dictionary, m, e, variant = large_problem()
    narrow = logits[:5]  # a different pass width from the other threads
    expected = {n: dictionary_scores(x, *dictionary, m, e, variant) for n, x in ((70, logits), (5, narrow))}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: (i % 2, dictionary_scores(logits if i % 2 else narrow, *dictionary, m, e,
                                                                    variant)), range(12)))
    assert all(torch.equal(r, expected[70 if odd else 5]) for odd, r in results)


def test_compiles_fullgraph(device):
    logits, dictionary, m, e, variant = build(FIXED_PROBLEMS[1], device)

    def decode(logits):
        return top_words(dictionary_scores(logits * 2, *dictionary, m, e, variant), 3)

    compiled = torch.compile(decode, fullgraph=True)
    for a, b in zip(compiled(logits), decode(logits)):
        torch.testing.assert_close(a, b)


def test_backward_raises():
    logits, dictionary, m, e, variant = build(FIXED_PROBLEMS[1])
    scores = dictionary_scores(logits.float().requires_grad_(), *dictionary, m, e, variant)
    with pytest.raises(RuntimeError, match="inference-only"):
        scores.sum().backward()


def test_opcheck():
    logits, dictionary, m, e, variant = build(FIXED_PROBLEMS[1])
    torch.library.opcheck(torch.ops.lmk.dictionary_scores.default, (logits, *dictionary, m, e, variant))


def test_top_words_are_the_best_log_probabilities():
    scores = torch.randn(3, 50)
    values, indices = top_words(scores, 5)
    log_probs = torch.log_softmax(scores, -1)
    assert torch.equal(indices[:, 0], scores.argmax(-1))
    torch.testing.assert_close(values, log_probs.gather(1, indices))
    assert (values[:, :-1] >= values[:, 1:]).all()
    assert math.isclose(float(log_probs.exp().sum(-1)[0]), 1.0, rel_tol=1e-5)
    raw, raw_indices = top_words(scores, 5, softmax=False)
    assert torch.equal(raw_indices, indices) and torch.equal(raw, scores.gather(1, indices))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3), st.integers(1, 30), st.data())
def test_top_indices_are_a_stable_sort_of_the_scores(queries, words, data):
    scores = torch.tensor(data.draw(st.lists(st.lists(st.sampled_from([0.0, 1.0, 2.0, math.nan]), min_size=words,
                                                      max_size=words), min_size=queries, max_size=queries)),
                          dtype=torch.float32).view(queries, words)
    k = data.draw(st.integers(0, words))
    nan_highest = torch.where(scores.isnan(), math.inf, scores)
    expected = nan_highest.sort(dim=1, descending=True, stable=True).indices[:, :k]
    values, indices = top_words(scores, k, softmax=False)
    assert torch.equal(indices, expected)
    torch.testing.assert_close(values, scores.gather(1, expected), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("k, error", [(51, ValueError), (-1, ValueError), (2.0, TypeError)])
def test_top_words_rejects_bad_k(k, error):
    with pytest.raises(error, match="k"):
        top_words(torch.randn(2, 50), k)


# ---- bad input --------------------------------------------------------------------------------

def valid():
    logits = torch.randn(2, 10)
    ne_indices, ne_offsets = index_sets([3, 0, 4], 10)
    edge_indices, edge_offsets = index_sets([2, 2, 0], 10)
    counts = torch.tensor([2, 1, 3], dtype=torch.int32)
    return [logits, ne_indices, ne_offsets, edge_indices, edge_offsets, counts, 3]


def call(args, **kwargs):
    return dictionary_scores(*args, **kwargs)


@pytest.mark.parametrize("position, name", [(1, "ne_indices"), (3, "edge_indices")])
@pytest.mark.parametrize("bad_index", [10, 1000, -1])
def test_index_out_of_range_raises_index_error(position, name, bad_index):
    args = valid()
    args[position][1] = bad_index
    with pytest.raises(IndexError, match=name):
        call(args)


# The fixture's NE sets hold 7 indices over 3 words, its edge sets 4.
@pytest.mark.parametrize("position, name, offsets, message", [
    (2, "ne_offsets", [1, 3, 3, 7], "\\[0\\] == 0"),
    (2, "ne_offsets", [0, 3, 2, 7], "non-decreasing"),
    (2, "ne_offsets", [0, 3, 3, 6], "last offset"),
    (2, "ne_offsets", [0, 3, 3, 9], "last offset"),
    (2, "ne_offsets", [], "at least one"),
    (4, "edge_offsets", [-1, 2, 4, 4], "\\[0\\] == 0"),
    (4, "edge_offsets", [0, 3, 2, 4], "non-decreasing"),
    (4, "edge_offsets", [0, 2, 4, 5], "last offset"),
])
def test_malformed_offsets_raise_value_error(position, name, offsets, message):
    args = valid()
    args[position] = torch.tensor(offsets, dtype=torch.int32)
    with pytest.raises(ValueError, match=f"{name}.*{message}"):
        call(args)


@pytest.mark.parametrize("count", [0, -2])
def test_trigram_counts_below_one_raise_value_error(count):
    args = valid()
    args[5][2] = count
    with pytest.raises(ValueError, match="trigram_counts"):
        call(args)


# On CUDA the values are checked by the kernels and reported through the error flag, with messages
# of their own: the exception type and the argument named are what both devices share.
@pytest.mark.parametrize("position, value, error, name", [
    (1, (1, 10), IndexError, "ne_indices"),
    (3, (0, -1), IndexError, "edge_indices"),
    (2, [1, 3, 3, 7], ValueError, "ne_offsets"),
    (2, [0, 3, 2, 7], ValueError, "ne_offsets"),
    (2, [0, 3, 3, 6], ValueError, "ne_offsets"),
    (4, [0, 2, 4, 5], ValueError, "edge_offsets"),
    (5, (2, 0), ValueError, "trigram_counts"),
])
def test_bad_dictionary_values_raise_on_every_device(device, position, value, error, name):
    args = valid()
    if isinstance(value, tuple):
        args[position][value[0]] = value[1]
    else:
        args[position] = torch.tensor(value, dtype=torch.int32)
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(error, match=name):
        call(args)


def test_a_dictionary_found_valid_is_checked_again_after_a_write(device):
    # On CUDA a dictionary the kernels found valid for a vocabulary is not waited for again (a decoder
    # scores against it at every step), until written or scored against another vocabulary.
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in valid()]
    expected = reference.dictionary_scores(*args)
    for _ in range(2):
        torch.testing.assert_close(call(args), expected, **TOLERANCE)
    args[1][0] = 10
    with pytest.raises(IndexError, match="ne_indices"):
        call(args)
    args[1][0] = 1
    torch.testing.assert_close(call(args), reference.dictionary_scores(*args), **TOLERANCE)
    with pytest.raises(IndexError, match="ne_indices"):
        call([args[0][:, :5], *args[1:]])  # a narrower vocabulary: the same tables checked again
    args[5][1] = 0
    with pytest.raises(ValueError, match="trigram_counts"):
        call(args)


# Each lane layout of the CUDA kernel checks the indices it visits: one query (a lane per index), float4 rows.
@pytest.mark.parametrize("queries", [1, 64])
@pytest.mark.parametrize("position, value, name", [(1, (6, -3), "ne_indices"), (3, (3, 10), "edge_indices")])
def test_bad_index_raises_for_any_query_count(device, queries, position, value, name):
    args = valid()
    args[0] = torch.randn(queries, 10)
    args[position][value[0]] = value[1]
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(IndexError, match=name):
        call(args)


@pytest.mark.parametrize("position, name, make", [
    (0, "logits", lambda t: t.double()),
    (0, "logits", lambda t: t.to(torch.int32)),
    (0, "logits", lambda t: t.numpy()),
    (1, "ne_indices", lambda t: t.long()),
    (2, "ne_offsets", lambda t: t.long()),
    (3, "edge_indices", lambda t: t.float()),
    (4, "edge_offsets", lambda t: t.long()),
    (5, "trigram_counts", lambda t: t.long()),
    (6, "m", lambda m: 3.0),
    (6, "m", lambda m: True),
])
def test_wrong_type_raises_type_error(position, name, make):
    args = valid()
    args[position] = make(args[position])
    with pytest.raises(TypeError, match=name):
        call(args)


@pytest.mark.parametrize("position, name, make", [
    (0, "logits", lambda t: t[0]),
    (1, "ne_indices", lambda t: t.view(-1, 1)),
    (2, "ne_offsets", lambda t: t.view(1, -1)),
    (4, "edge_offsets", lambda t: t[:-1]),
    (4, "edge_offsets", lambda t: torch.cat([t, t[-1:]])),
    (5, "trigram_counts", lambda t: t.view(1, -1)),
    (5, "trigram_counts", lambda t: t[:2]),
    (3, "edge_indices", lambda t: t.to("meta")),
    (6, "m", lambda m: 0),
])
def test_wrong_shape_device_or_value_raises_value_error(position, name, make):
    args = valid()
    args[position] = make(args[position])
    with pytest.raises(ValueError, match=name):
        call(args)


def test_bad_variant_raises_value_error():
    with pytest.raises(ValueError, match="variant"):
        call(valid(), variant="max")


# ---- row tables ---------------------------------------------------------------------------------

def row_table_problem(queries, vocab, num_rows, ne_sizes, edge_sizes, m=10, seed=0, device="cpu",
                      dtype=torch.float32):
    """Logits and a dictionary whose sets hold ids of random pattern rows (1 to m indices each)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, m + 1, (num_rows,), generator=generator).tolist()
    rows = [torch.randperm(vocab, generator=generator)[:n] for n in lengths]
    row_indices = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    row_offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)

    def sets(sizes):
        ids = [torch.randperm(num_rows, generator=generator)[:size] for size in sizes]
        flat = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
        return flat, torch.tensor([0] + [len(i) for i in ids], dtype=torch.int64).cumsum(0)

    counts = torch.randint(1, 9, (len(ne_sizes),), generator=generator)
    tensors = (*sets(ne_sizes), *sets(edge_sizes), counts, row_indices, row_offsets)
    tensors = [t.to(device=device, dtype=torch.int32) for t in tensors]
    logits = (3 * torch.randn(queries, vocab, generator=generator)).to(device=device, dtype=dtype)
    return logits, tensors[:5], tensors[5:], m


def check_row_table(problem, edge_weight=0.7, variant="contrast"):
    logits, dictionary, rows, m = problem
    ours = dictionary_scores(logits, *dictionary, m, edge_weight, variant, *rows)
    expected = reference.dictionary_scores(logits, *dictionary, m, edge_weight, variant, *rows)
    torch.testing.assert_close(ours, expected, **TOLERANCE)
    return ours


# Every lane layout of both CUDA kernels (as test_every_query_count), one query's scalar path on the
# CPU, several passes; rows shared by many words, empty sets, words whose rows overlap (summed twice).
@pytest.mark.parametrize("queries", [1, 3, 4, 8, 33, 36, 64, 70, 72, 132, 260])
@pytest.mark.parametrize("variant", ["contrast", "mean"])
def test_row_table_matches_reference(device, queries, variant):
    problem = row_table_problem(queries, 700, 45, [0, 3, 9, 5, 1, 7] * 9, [2, 0, 1, 2, 0, 2] * 9, seed=queries,
                                device=device)
    check_row_table(problem, variant=variant)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_row_table_half_logits(device, dtype):
    check_row_table(row_table_problem(12, 300, 30, [4, 6, 2] * 7, [1, 2, 0] * 7, device=device, dtype=dtype))


def test_row_table_equals_the_expanded_sets(device):
    # Disjoint rows within each set (as lmkernels.tfree.Decoder builds them): the row form and the sets
    # it stands for give the same scores up to rounding.
    logits = torch.randn(5, 40, device=device)
    row_indices = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=torch.int32, device=device)
    row_offsets = torch.tensor([0, 3, 5, 10], dtype=torch.int32, device=device)  # {0,1,2} {3,4} {5..9}
    ne_rows, ne_row_offsets = torch.tensor([0, 1, 2], dtype=torch.int32, device=device), torch.tensor(
        [0, 2, 3], dtype=torch.int32, device=device)
    edge_rows, edge_row_offsets = torch.tensor([1], dtype=torch.int32, device=device), torch.tensor(
        [0, 1, 1], dtype=torch.int32, device=device)
    counts = torch.tensor([3, 1], dtype=torch.int32, device=device)
    factored = dictionary_scores(logits, ne_rows, ne_row_offsets, edge_rows, edge_row_offsets, counts, 2, 0.5,
                                 "contrast", row_indices, row_offsets)
    ne = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=torch.int32, device=device)
    ne_offsets = torch.tensor([0, 5, 10], dtype=torch.int32, device=device)
    edge = torch.tensor([3, 4], dtype=torch.int32, device=device)
    edge_offsets = torch.tensor([0, 2, 2], dtype=torch.int32, device=device)
    direct = dictionary_scores(logits, ne, ne_offsets, edge, edge_offsets, counts, 2, 0.5, "contrast")
    torch.testing.assert_close(factored, direct, **TOLERANCE)


def test_row_table_is_bitwise_deterministic_for_any_thread_count():
    logits, dictionary, rows, m = row_table_problem(70, 2000, 400, [8] * 300, [2] * 300, seed=5)
    threads = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(1)
        single = dictionary_scores(logits, *dictionary, m, 0.8, "contrast", *rows)
        lmkernels.set_num_threads(3)
        several = dictionary_scores(logits, *dictionary, m, 0.8, "contrast", *rows)
    finally:
        lmkernels.set_num_threads(threads)
    assert torch.equal(single, several)


def test_row_table_empty_cases(device):
    logits, dictionary, rows, m = row_table_problem(4, 50, 0, [0, 0], [0, 0], device=device)
    scores = check_row_table((logits, dictionary, rows, m))  # no rows: every sum is 0
    assert scores.shape == (4, 2)
    logits, dictionary, rows, m = row_table_problem(0, 50, 5, [2, 1], [1, 0], device=device)
    assert dictionary_scores(logits, *dictionary, m, 1.0, "contrast", *rows).shape == (0, 2)


def test_row_table_opcheck_and_compile():
    logits, dictionary, rows, m = row_table_problem(6, 100, 20, [3, 2, 5], [1, 2, 0])
    torch.library.opcheck(torch.ops.lmk.dictionary_scores.default, (logits, *dictionary, m, 0.8, "mean", *rows))
    compiled = torch.compile(lambda x: dictionary_scores(x, *dictionary, m, 0.8, "mean", *rows), fullgraph=True)
    torch.testing.assert_close(compiled(logits), dictionary_scores(logits, *dictionary, m, 0.8, "mean", *rows))


def valid_row_table():
    logits, dictionary, rows, m = row_table_problem(2, 10, 4, [2, 0, 3], [1, 1, 0], m=3)
    return [logits, *dictionary, m, 1.0, "contrast", *rows]


# Positions in valid_row_table(): 1 ne rows, 3 edge rows, 9 row_indices, 10 row_offsets.
@pytest.mark.parametrize("queries", [1, 64])
@pytest.mark.parametrize("position, value, error, name", [
    (1, (0, 4), IndexError, "ne_indices"),
    (3, (0, -1), IndexError, "edge_indices"),
    (9, (2, 10), IndexError, "row_indices"),
    (9, (0, -5), IndexError, "row_indices"),
    (10, [1, 2, 3, 4, 5], ValueError, "row_offsets"),
    (10, [0, 3, 2, 4, 5], ValueError, "row_offsets"),
])
def test_bad_row_table_values_raise_on_every_device(device, queries, position, value, error, name):
    args = valid_row_table()
    args[0] = torch.randn(queries, 10)
    if isinstance(value, tuple):
        args[position][value[0]] = value[1]
    else:
        last = int(args[10][-1])
        args[position] = torch.tensor(value[:-1] + [last], dtype=torch.int32)
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(error, match=name):
        call(args)


# Several faults at once: every device raises for the one the CPU kernel checks first (offsets,
# trigram_counts, row_offsets, row_indices, then the sets' entries).
@pytest.mark.parametrize("faults, error, name", [
    ([(9, 2, 10), (1, 0, 4)], IndexError, "row_indices"),
    ([(10, 1, 7), (1, 0, 4)], ValueError, "row_offsets"),
    ([(10, 1, 7), (9, 2, 10)], ValueError, "row_offsets"),
    ([(5, 0, 0), (1, 0, 4), (9, 2, 10)], ValueError, "trigram_counts"),
    ([(2, 1, 5), (5, 0, 0), (10, 1, 7)], ValueError, "ne_offsets"),
])
def test_several_faults_raise_the_first_checked_on_every_device(device, faults, error, name):
    args = valid_row_table()
    for position, entry, value in faults:
        args[position] = args[position].clone()
        args[position][entry] = value
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(error, match=name):
        call(args)


def test_bad_row_offsets_end_raises():
    args = valid_row_table()
    args[10] = args[10].clone()
    args[10][-1] += 1
    with pytest.raises(ValueError, match="row_offsets"):
        call(args)


@pytest.mark.parametrize("position, name, make, error", [
    (9, "row_indices", lambda t: t.long(), TypeError),
    (10, "row_offsets", lambda t: t.long(), TypeError),
    (9, "row_indices", lambda t: t.view(1, -1), ValueError),
    (10, "row_offsets", lambda t: t[:0], ValueError),
    (10, "row_offsets", lambda t: t[0], ValueError),
    (10, "row_offsets", lambda t: t.to("meta"), ValueError),
    (10, "row_offsets", lambda t: None, ValueError),
])
def test_bad_row_table_arguments_raise(position, name, make, error):
    args = valid_row_table()
    args[position] = make(args[position])
    with pytest.raises(error, match=name):
        call(args)


@pytest.mark.parametrize("position, value, name", [(1, (0, 4), "ne_indices"), (9, (2, 10), "row_indices")])
def test_bad_row_table_values_raise_without_queries_or_words(device, position, value, name):
    # Nothing is gathered then, and the indices are checked all the same.
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in valid_row_table()]
    args[position][value[0]] = value[1]
    with pytest.raises(IndexError, match=name):
        call([args[0][:0], *args[1:]])
    if position == 9:  # a table with no word to use it
        empty, zero = args[1][:0], torch.zeros(1, dtype=torch.int32, device=device)
        with pytest.raises(IndexError, match=name):
            call([args[0], empty, zero, empty, zero, args[5][:0], *args[6:]])


def test_bad_index_raises_without_queries(device):
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in valid()]
    args[1][0] = 10
    with pytest.raises(IndexError, match="ne_indices"):
        call([args[0][:0], *args[1:]])


@pytest.mark.parametrize("queries", [1, 8])
@pytest.mark.parametrize("with_rows", [False, True])
def test_sets_into_nothing_raise_index_error(device, queries, with_rows):
    # Logits of no column, or a table of no row, with a word whose set is not empty: nothing is in
    # range, and the gathers must not read (one query's path read element 0 of an empty buffer).
    empty = torch.zeros(0, dtype=torch.int32, device=device)
    one_set = torch.tensor([0], dtype=torch.int32, device=device), torch.tensor([0, 1], dtype=torch.int32,
                                                                                device=device)
    no_set = torch.zeros(2, dtype=torch.int32, device=device)
    counts = torch.ones(1, dtype=torch.int32, device=device)
    rows = (empty, torch.zeros(1, dtype=torch.int32, device=device)) if with_rows else (None, None)
    logits = torch.randn(queries, 5 if with_rows else 0, device=device)
    with pytest.raises(IndexError, match="ne_indices"):
        dictionary_scores(logits, *one_set, empty, no_set, counts, 1, 1.0, "contrast", *rows)


# One query's short sets (under 16 entries a set on average) go through AVX-512 gathers on Intel
# CPUs; LMK_DICTIONARY_GATHERS=on takes them wherever the CPU has AVX-512, =off the scalar loop.
# Both sum in the same order.
def test_one_query_gives_bitwise_the_same_scores_with_and_without_gathers(monkeypatch):
    lengths = torch.randint(0, 12, (53,), generator=torch.Generator().manual_seed(3)).tolist()  # a partial block
    direct = build((1, 400, lengths, lengths[::-1], [4] * 53, 5, 0.7, "contrast", torch.float32, True, 11))
    table = row_table_problem(1, 500, 37, lengths, [2] * 53, seed=4)

    def both():
        logits, dictionary, m, e, variant = direct
        logits_t, dictionary_t, rows, m_t = table
        return (dictionary_scores(logits, *dictionary, m, e, variant),
                dictionary_scores(logits_t, *dictionary_t, m_t, 0.7, "contrast", *rows))

    default = both()
    monkeypatch.setenv("LMK_DICTIONARY_GATHERS", "on")
    gathered = both()
    monkeypatch.setenv("LMK_DICTIONARY_GATHERS", "off")
    scalar = both()
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(default, gathered, scalar))
    logits, dictionary, m, e, variant = direct
    torch.testing.assert_close(scalar[0], reference.dictionary_scores(logits, *dictionary, m, e, variant), **TOLERANCE)
    logits_t, dictionary_t, rows, m_t = table
    torch.testing.assert_close(scalar[1], reference.dictionary_scores(logits_t, *dictionary_t, m_t, 0.7, "contrast",
                                                                      *rows), **TOLERANCE)


# The error names the first bad entry in a fixed order (row_indices, ne_indices, edge_indices),
# whatever the number of queries, threads or the gather path.
@pytest.mark.parametrize("queries", [0, 1, 70])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("gathers", ["on", "off"])
def test_the_bad_entry_named_does_not_depend_on_the_schedule(monkeypatch, queries, threads, gathers):
    monkeypatch.setenv("LMK_DICTIONARY_GATHERS", gathers)
    logits, dictionary, rows, m = row_table_problem(queries, 300, 40, [3] * 4000, [2] * 4000, seed=6)
    ne, edge = dictionary[0].clone(), dictionary[2].clone()
    edge[0], ne[-5] = 77, 99
    previous = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(threads)
        message = f"ne_indices\\[{ne.numel() - 5}\\] = 99 is out of range for a table of 40 rows"
        with pytest.raises(IndexError, match=message):
            dictionary_scores(logits, ne, dictionary[1], edge, *dictionary[3:], m, 1.0, "contrast", *rows)
        bad_rows = rows[0].clone()
        bad_rows[-1] = 300
        with pytest.raises(IndexError, match=f"row_indices\\[{bad_rows.numel() - 1}\\] = 300"):
            dictionary_scores(logits, ne, dictionary[1], edge, *dictionary[3:], m, 1.0, "contrast", bad_rows, rows[1])
    finally:
        lmkernels.set_num_threads(previous)


# W is given three times (ne_offsets and edge_offsets [W + 1], trigram_counts [W]): a wrong length
# is blamed on the tensor that disagrees with the other two, ne_offsets included, or on all three.
@pytest.mark.parametrize("changes, message", [
    ({2: lambda t: t[:2]}, "^ne_offsets: expected size 4"),
    ({2: lambda t: torch.cat([t, t[-1:]])}, "^ne_offsets: expected size 4"),
    ({4: lambda t: t[:-1]}, "^edge_offsets: expected size 4"),
    ({4: lambda t: t[:0]}, "^edge_offsets: expected at least one entry"),
    ({5: lambda t: torch.cat([t, t[-1:]])}, "^trigram_counts: expected size 3"),
    ({2: lambda t: t[:3], 5: lambda t: t[:1]},  # W = 2, 3 and 1
     "^ne_offsets, edge_offsets, trigram_counts: .* got shapes \\[3\\], \\[4\\] and \\[1\\]$"),
])
def test_a_wrong_number_of_words_is_blamed_on_its_tensor(changes, message):
    args = valid()
    for position, make in changes.items():
        args[position] = make(args[position])
    with pytest.raises(ValueError, match=message):
        call(args)
