"""lmk::token_divergence against the reference: values, ties, special values, masks, determinism,
compile, opcheck, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import lmkernels
from lmkernels import reference
from lmkernels.ops import TokenDivergence, token_divergence

INF, NAN = math.inf, math.nan
TOLERANCE = dict(rtol=2e-5, atol=2e-5)
FIELDS = TokenDivergence._fields


def assert_matches_reference(logits, tokens, mask=None, reference_logits=None):
    ours = token_divergence(logits, tokens, mask, reference_logits)
    expected = reference.token_divergence(logits, tokens, mask, reference_logits)
    batch, length = logits.shape[:2]
    for name, a, b in zip(FIELDS, ours, expected):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == (batch, length) and a.dtype == b.dtype, name
        if a.dtype in (torch.int64, torch.bool):
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, equal_nan=True, **TOLERANCE, msg=name)
    return ours


@st.composite
def problems(draw):
    batch = draw(st.integers(0, 3))
    length = draw(st.integers(0, 4))
    vocab = draw(st.one_of(st.integers(1, 40), st.integers(250, 600)))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    token_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    with_mask = draw(st.booleans())
    with_reference = draw(st.booleans())
    strided = draw(st.booleans())
    # Coarse values (integers / 4) make ties likely, fine ones make them rare.
    coarse = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return batch, length, vocab, dtype, token_dtype, with_mask, with_reference, strided, coarse, seed


def build(problem):
    batch, length, vocab, dtype, token_dtype, with_mask, with_reference, strided, coarse, seed = problem
    gen = torch.Generator().manual_seed(seed)

    def logits_like():
        values = (torch.randint(-8, 8, (length, batch, vocab + 3), generator=gen) / 4 if coarse
                  else 4 * torch.randn(length, batch, vocab + 3, generator=gen))
        values = values.to(dtype)
        # Strided: [B, T] dims transposed and the vocabulary a slice of a wider row.
        return values.transpose(0, 1)[..., :vocab] if strided else values.transpose(0, 1).contiguous()[..., :vocab]

    logits = logits_like()
    reference_logits = None
    if with_reference:
        reference_logits = (logits.float() + 0.5 * torch.randn(batch, length, vocab, generator=gen)).to(dtype)
    tokens = torch.randint(vocab, (batch, length), generator=gen, dtype=torch.int64).to(token_dtype)
    mask = torch.rand(batch, length, generator=gen) > 0.3 if with_mask else None
    if mask is not None:
        tokens[~mask] = vocab + 7  # masked positions are not checked
    return logits, tokens, mask, reference_logits


@settings(max_examples=80, deadline=None)
@given(problems())
def test_matches_reference(problem):
    assert_matches_reference(*build(problem))


# (batch, length, vocab, dtype, token dtype, mask, reference, strided, coarse, seed): the CUDA
# paths with and without 16-byte packs (odd vocabularies, strided rows), warp- and block-sized rows.
FIXED_PROBLEMS = [
    (3, 4, 1, torch.float32, torch.int64, True, True, False, True, 1),
    (2, 5, 37, torch.bfloat16, torch.int32, False, True, True, True, 2),
    (2, 3, 512, torch.float16, torch.int64, True, False, False, False, 3),
    (1, 7, 4099, torch.bfloat16, torch.int64, True, True, True, False, 4),
    (2, 2, 32000, torch.float32, torch.int32, False, True, False, True, 5),
]


@pytest.mark.parametrize("problem", FIXED_PROBLEMS)
def test_fixed_problems_on_every_device(device, problem):
    assert_matches_reference(*(None if t is None else t.to(device) for t in build(problem)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [1, 15, 16, 17, 255, 256, 257, 1000, 32000])
def test_vocabulary_sizes_around_the_block_lengths(device, dtype, vocab):
    logits = (3 * torch.randn(2, 3, vocab)).to(device, dtype)
    reference_logits = (logits.float() + torch.randn(2, 3, vocab, device=device)).to(dtype)
    tokens = torch.randint(vocab, (2, 3), device=device)
    assert_matches_reference(logits, tokens, None, reference_logits)


def test_handwritten_example(device):
    logits = torch.tensor([[[1.0, 3.0, 2.0], [0.0, 0.0, -1.0]]], device=device)
    reference_logits = torch.tensor([[[1.0, 3.0, 2.0], [0.0, -INF, 0.0]]], device=device)
    out = token_divergence(logits, torch.tensor([[1, 2]], device=device), None, reference_logits)
    assert out.argmax.tolist() == [[1, 0]]
    assert out.match.tolist() == [[True, False]]
    lse = [math.log(math.e + math.e**3 + math.e**2), math.log(2 + math.e**-1)]
    assert out.nll[0, 0].item() == pytest.approx(lse[0] - 3.0, rel=1e-6)
    assert out.nll[0, 1].item() == pytest.approx(lse[1] + 1.0, rel=1e-6)
    assert out.margin.tolist() == [[1.0, 0.0]]
    # p = (1/2, 0, 1/2), q = (1, 1, e^-1) / (2 + e^-1): the p = 0 term drops out.
    expected_kl = 0.5 * (math.log(0.5) - (0 - lse[1])) + 0.5 * (math.log(0.5) - (-1 - lse[1]))
    assert out.kl[0, 0].item() == 0.0
    assert out.kl[0, 1].item() == pytest.approx(expected_kl, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ties_give_the_lowest_index(device, dtype):
    vocab = 700
    logits = torch.zeros(1, 6, vocab, dtype=dtype, device=device)
    for position, places in enumerate([[0, 1], [5, 3], [699, 698], [17, 16, 600], [300, 301], [256, 255]]):
        logits[0, position, places] = 2.0
    out = assert_matches_reference(logits, torch.zeros(1, 6, dtype=torch.int64, device=device))
    assert out.argmax.tolist() == [[0, 3, 698, 16, 300, 255]]
    assert (out.margin == 0).all()
    # Every value equal: index 0.
    same = torch.ones(1, 1, 333, device=device)
    assert token_divergence(same, torch.zeros(1, 1, dtype=torch.int64, device=device)).argmax.item() == 0


def test_identical_logits_give_exactly_zero_kl(device):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        logits = (5 * torch.randn(3, 4, 1001)).to(device, dtype)
        logits[0, 0, :500] = -INF
        out = token_divergence(logits, torch.randint(500, 1001, (3, 4), device=device), None, logits.clone())
        assert torch.equal(out.kl, torch.zeros(3, 4, device=device))


def test_vocabulary_of_one(device):
    logits = torch.tensor([[[2.5], [-INF]]], device=device)
    out = assert_matches_reference(logits, torch.zeros(1, 2, dtype=torch.int64, device=device), None, logits)
    assert out.argmax.tolist() == [[0, 0]] and out.match.tolist() == [[True, True]]
    assert out.margin[0, 0].item() == INF and out.margin[0, 1].item() == 0.0
    assert out.nll[0, 0].item() == 0.0 and math.isnan(out.nll[0, 1].item())


@pytest.mark.parametrize("vocab", [5, 40, 300])
def test_negative_infinity_logits(device, vocab):
    logits = torch.randn(1, 5, vocab, device=device)
    reference_logits = torch.randn(1, 5, vocab, device=device)
    logits[0, 0, 1:] = -INF                 # one finite candidate logit
    logits[0, 1, :] = -INF                  # a row of -inf: argmax 0, margin 0, NaN nll and kl
    logits[0, 2, 3] = -INF                  # the token's logit: nll = +inf; p_3 > 0: kl = +inf
    reference_logits[0, 3, ::2] = -INF      # p = 0 terms contribute 0
    logits[0, 3, ::2] = -INF                # ... even where log q is -inf too
    reference_logits[0, 4, :] = -INF        # a reference row of -inf: kl NaN
    tokens = torch.tensor([[0, 2, 3, 1, 4]], device=device)
    out = assert_matches_reference(logits, tokens, None, reference_logits)
    assert out.argmax[0, :2].tolist() == [0, 0] and out.margin[0, 0].item() == INF
    assert out.margin[0, 1].item() == 0 and math.isnan(out.nll[0, 1].item()) and math.isnan(out.kl[0, 1].item())
    assert out.nll[0, 2].item() == INF and out.kl[0, 2].item() == INF
    assert math.isfinite(out.kl[0, 3].item()) and out.kl[0, 3].item() >= -1e-6
    assert math.isnan(out.kl[0, 4].item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nan_logits_give_nan_and_the_first_nan_index(device, dtype):
    vocab = 300
    logits = torch.randn(1, 3, vocab).to(device, dtype)
    reference_logits = torch.randn(1, 3, vocab).to(device, dtype)
    logits[0, 0, [270, 40]] = NAN
    logits[0, 1, 0] = NAN
    reference_logits[0, 2, 7] = NAN  # only the reference: kl NaN, the rest finite
    out = assert_matches_reference(logits, torch.zeros(1, 3, dtype=torch.int64, device=device), None,
                                   reference_logits)
    assert out.argmax[0, :2].tolist() == [40, 0]
    assert all(math.isnan(x) for x in (*out.nll[0, :2].tolist(), *out.margin[0, :2].tolist(),
                                       *out.kl[0].tolist()))
    assert math.isfinite(out.nll[0, 2].item()) and math.isfinite(out.margin[0, 2].item())


def test_masked_positions_are_skipped(device):
    logits = torch.randn(2, 3, 50, device=device)
    reference_logits = torch.randn(2, 3, 50, device=device)
    mask = torch.tensor([[True, False, True], [False, False, True]], device=device)
    tokens = torch.tensor([[1, -5, 2], [10**9, 3, 49]], device=device)
    out = assert_matches_reference(logits, tokens, mask, reference_logits)
    assert out.argmax[~mask].eq(-1).all() and not out.match[~mask].any()
    for field in (out.nll, out.margin, out.kl):
        assert field[~mask].eq(0).all() and field[mask].ne(0).all()


def test_match_is_argmax_agreement():
    logits = torch.randn(4, 64, 100)
    tokens = logits.argmax(-1)
    tokens[:, ::3] = (tokens[:, ::3] + 1) % 100
    out = token_divergence(logits, tokens)
    assert torch.equal(out.match, torch.ones(4, 64, dtype=torch.bool).index_fill_(1, torch.arange(0, 64, 3), False))
    assert out.kl is None


def test_bfloat16_matches_float32_of_the_same_values():
    logits = (4 * torch.randn(2, 5, 3000)).bfloat16()
    reference_logits = (logits.float() + torch.randn(2, 5, 3000)).bfloat16()
    tokens = torch.randint(3000, (2, 5))
    half = token_divergence(logits, tokens, None, reference_logits)
    full = token_divergence(logits.float(), tokens, None, reference_logits.float())
    assert torch.equal(half.argmax, full.argmax) and torch.equal(half.match, full.match)
    for a, b in zip(half[2:], full[2:]):
        torch.testing.assert_close(a, b, **TOLERANCE)


def large_problem(device="cpu"):
    logits = (3 * torch.randn(4, 33, 2053)).bfloat16()
    reference_logits = (logits.float() + torch.randn_like(logits.float())).bfloat16()
    args = logits, torch.randint(2053, (4, 33)), torch.rand(4, 33) > 0.2, reference_logits
    return tuple(t.to(device) for t in args)


def test_bitwise_deterministic(device):
    args = large_problem(device)
    first = token_divergence(*args)
    for _ in range(3):
        again = token_divergence(*args)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_same_result_for_any_thread_count():
    args = large_problem()
    threads = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(1)
        single = token_divergence(*args)
        lmkernels.set_num_threads(3)
        several = token_divergence(*args)
    finally:
        lmkernels.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(single, several))


def test_compiles_fullgraph():
    logits, tokens, mask, reference_logits = large_problem()

    def share_of_divergent_tokens(logits, reference_logits):
        out = token_divergence(logits * 2, tokens, mask, reference_logits)
        return 1 - out.match.sum() / mask.sum(), out.kl.sum(), out.nll

    compiled = torch.compile(share_of_divergent_tokens, fullgraph=True)
    for a, b in zip(compiled(logits, reference_logits), share_of_divergent_tokens(logits, reference_logits)):
        torch.testing.assert_close(a, b)


def test_backward_raises():
    logits = torch.randn(1, 2, 10, requires_grad=True)
    out = token_divergence(logits, torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="evaluation-only"):
        out.nll.sum().backward()


@pytest.mark.parametrize("with_optional", [False, True])
def test_opcheck(with_optional):
    logits, tokens, mask, reference_logits = large_problem()
    args = (logits, tokens, mask, reference_logits) if with_optional else (logits, tokens, None, None)
    torch.library.opcheck(torch.ops.lmk.token_divergence.default, args)


# ---- bad input --------------------------------------------------------------------------------

def valid():
    return [torch.randn(2, 3, 10), torch.randint(10, (2, 3)), torch.ones(2, 3, dtype=torch.bool),
            torch.randn(2, 3, 10)]


@pytest.mark.parametrize("bad_token", [10, 1000, -1])
@pytest.mark.parametrize("token_dtype", [torch.int64, torch.int32])
def test_token_out_of_range_raises_index_error(device, bad_token, token_dtype):
    args = [t.to(device) for t in valid()]
    args[1] = args[1].to(token_dtype)
    args[1][1, 2] = bad_token
    with pytest.raises(IndexError, match="reference_tokens.*\\[0, 10\\)"):
        token_divergence(*args)


@pytest.mark.parametrize("position, value, error, message", [
    (0, torch.randn(2, 3), ValueError, "logits: expected 3 dimensions"),
    (0, torch.randn(2, 3, 0), ValueError, "logits: expected a vocabulary of at least 1"),
    (0, torch.randint(5, (2, 3, 10)), TypeError, "logits: expected dtype"),
    (0, [[1.0]], TypeError, "logits: expected a torch.Tensor"),
    (1, torch.randint(10, (2, 4)), ValueError, "reference_tokens: expected size 3"),
    (1, torch.randint(10, (2, 3, 1)), ValueError, "reference_tokens: expected 2 dimensions"),
    (1, torch.randn(2, 3), TypeError, "reference_tokens: expected dtype int32 or int64"),
    (1, torch.zeros(2, 3, dtype=torch.int16), TypeError, "reference_tokens: "),
    (2, torch.ones(2, 3, dtype=torch.int64), TypeError, "mask: expected dtype bool"),
    (2, torch.ones(3, 3, dtype=torch.bool), ValueError, "mask: expected size 2"),
    (3, torch.randn(2, 3, 11), ValueError, "reference_logits: expected the vocabulary size of logits \\(10\\)"),
    (3, torch.randn(2, 2, 10), ValueError, "reference_logits: expected the batch and sequence sizes"),
    (3, torch.randn(2, 3, 10).bfloat16(), TypeError, "reference_logits: expected the dtype of logits"),
    (3, torch.randn(6, 10), ValueError, "reference_logits: expected 3 dimensions"),
    (3, "logits", TypeError, "reference_logits: expected a torch.Tensor"),
])
def test_bad_arguments_raise(position, value, error, message):
    args = valid()
    args[position] = value
    with pytest.raises(error, match=message):
        token_divergence(*args)


@pytest.mark.parametrize("position, name", [(1, "reference_tokens"), (2, "mask"), (3, "reference_logits")])
def test_arguments_on_another_device_raise(position, name):
    args = valid()
    args[position] = args[position].to("meta")
    with pytest.raises(ValueError, match=f"{name}: expected the device of logits"):
        token_divergence(*args)


def test_strided_last_dimension_is_made_contiguous():
    wide = torch.randn(2, 3, 20)
    logits = wide[..., ::2]
    tokens = torch.randint(10, (2, 3))
    assert_matches_reference(logits, tokens, None, wide[..., 1::2])


def test_no_positions():
    out = token_divergence(torch.randn(0, 4, 10), torch.zeros(0, 4, dtype=torch.int64), None, torch.randn(0, 4, 10))
    assert out.argmax.shape == (0, 4) and out.kl.shape == (0, 4)


def test_an_empty_input_with_many_rows_returns_at_once():
    # [2^40, 0] logits: no token to check or score (the check used to walk every row).
    logits = torch.empty(2**40, 0, 5).as_strided((2**40, 0, 5), (0, 5, 1))
    result = token_divergence(logits, torch.empty(2**40, 0, dtype=torch.int64).as_strided((2**40, 0), (0, 1)))
    assert result.argmax.shape == (2**40, 0)
