"""lmk::word_attention and lmk::guide_broadcast against the reference: values, gradients, word
edge cases (1 byte, max_word_size bytes, empty, multi-byte UTF-8 first characters), GQA, dtypes,
determinism, compile, opcheck, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lmkernels import reference
from lmkernels.ops import guide_broadcast, word_attention

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
             torch.float16: dict(rtol=2e-3, atol=2e-3)}
MAX_WORD_SIZE = 100


def seqlens(lengths, device="cpu", dtype=torch.int64):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=dtype, device=device)


def leaves(*shapes, dtype, device):
    return [torch.randn(s, dtype=dtype, device=device).requires_grad_() for s in shapes]


def check_word_attention(lengths, q_heads, kv_heads, dim, dtype, device, index_dtype=torch.int64, scale=None):
    torch.manual_seed(len(lengths) * 1000 + dim)
    cu = seqlens(lengths, device, index_dtype)
    q, k, v = leaves((len(lengths), q_heads, dim), (int(cu[-1]), kv_heads, dim), (int(cu[-1]), kv_heads, dim),
                     dtype=dtype, device=device)
    ours = word_attention(q, k, v, cu, scale=scale)
    expected = reference.word_attention(q, k, v, cu, scale=scale)
    assert ours.shape == q.shape and ours.dtype == dtype
    torch.testing.assert_close(ours, expected, **TOLERANCE[dtype])
    if not expected.requires_grad:  # no word has a byte: nothing to differentiate
        return
    grad = torch.randn_like(ours)
    grads = [torch.autograd.grad(out, (q, k, v), grad, allow_unused=True, materialize_grads=True)
             for out in (ours, expected)]
    for name, a, b in zip("qkv", *grads):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype], msg=f"grad {name}")


@pytest.mark.parametrize("dtype", FLOATS)
def test_word_attention_matches_reference(device, dtype):
    check_word_attention([1, 3, MAX_WORD_SIZE, 2, 7, 1], 8, 2, 64, dtype, device)


@pytest.mark.parametrize("dim", [1, 16, 80, 128, 256])
def test_head_dimensions(device, dim):
    check_word_attention([2, 5, 1], 4, 4, dim, torch.float32, device)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("dim", [12, 128])
def test_vector_and_scalar_loads(device, dtype, dim, offset):
    """Head dimensions that 16-byte accesses divide or not, on tensors that start on a 16-byte
    boundary or one element past it (where the CUDA forward falls back to scalar accesses)."""
    lengths = [3, 1, 0, MAX_WORD_SIZE, 2]
    cu = seqlens(lengths, device)
    torch.manual_seed(dim + offset)

    def values(*shape):
        return torch.randn(math.prod(shape) + offset, dtype=dtype, device=device)[offset:].view(shape)

    q, k, v = values(len(lengths), 4, dim), values(int(cu[-1]), 2, dim), values(int(cu[-1]), 2, dim)
    torch.testing.assert_close(word_attention(q, k, v, cu), reference.word_attention(q, k, v, cu),
                               **TOLERANCE[dtype])


def test_empty_words_give_zeros_and_no_gradient(device):
    cu = seqlens([0, 3, 0, 2], device)
    q, k, v = leaves((4, 2, 16), (5, 1, 16), (5, 1, 16), dtype=torch.float32, device=device)
    out = word_attention(q, k, v, cu)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[2], torch.zeros_like(out[2]))
    grad_q, = torch.autograd.grad(out.sum(), q)
    assert torch.equal(grad_q[0], torch.zeros_like(grad_q[0]))


def test_bytes_outside_every_word(device):
    cu = torch.tensor([2, 5, 6], device=device)
    q, k, v = leaves((2, 2, 8), (9, 2, 8), (9, 2, 8), dtype=torch.float32, device=device)
    out = word_attention(q, k, v, cu)
    torch.testing.assert_close(out, reference.word_attention(q, k, v, cu))
    grad_k, grad_v = torch.autograd.grad(out.sum(), (k, v))
    for grad in (grad_k, grad_v):
        assert torch.equal(grad[:2], torch.zeros_like(grad[:2])) and torch.equal(grad[6:], torch.zeros_like(grad[6:]))


def test_words_of_real_utf8_text(device):
    """Words from a byte stream with multi-byte first characters, as the HAT model feeds them."""
    words = ["Größe", " über", " 日本語", "!", " 😀ok", " a"]
    cu = seqlens([len(w.encode()) for w in words], device, torch.int32)
    check_word_attention([len(w.encode()) for w in words], 4, 1, 32, torch.float32, device, torch.int32)
    assert int(cu[-1]) == sum(len(w.encode()) for w in words)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=0, max_size=12), kv_heads=st.integers(1, 3),
       group=st.integers(1, 3), dim=st.integers(1, 40), dtype=st.sampled_from(FLOATS),
       scale=st.one_of(st.none(), st.floats(0.05, 2.0)))
def test_word_attention_hypothesis(lengths, kv_heads, group, dim, dtype, scale):
    check_word_attention(lengths, kv_heads * group, kv_heads, dim, dtype, "cpu", scale=scale)


def test_softmax_is_over_the_word_only():
    """A huge key in the neighbouring word must not change this word's output."""
    cu = seqlens([2, 2])
    q, k, v = torch.randn(2, 1, 4), torch.randn(4, 1, 4), torch.randn(4, 1, 4)
    before = word_attention(q, k, v, cu)
    k[2:] *= 1e3
    after = word_attention(q, k, v, cu)
    assert torch.equal(before[0], after[0])


def test_word_attention_is_deterministic(device):
    cu = seqlens([5, 9, 1, 30] * 20, device)
    q, k, v = (torch.randn(80, 8, 64, device=device), torch.randn(int(cu[-1]), 2, 64, device=device),
               torch.randn(int(cu[-1]), 2, 64, device=device))
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    runs = []
    for _ in range(2):
        out = word_attention(q, k, v, cu)
        runs.append((out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_word_attention_compiles_without_graph_breaks():
    cu = seqlens([3, 1, 4])
    q, k, v = torch.randn(3, 2, 8), torch.randn(8, 2, 8), torch.randn(8, 2, 8)
    compiled = torch.compile(lambda q, k, v: word_attention(q, k, v, cu) * 2, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), word_attention(q, k, v, cu) * 2)


def test_opcheck():
    cu = seqlens([3, 1, 4])
    q, k, v = torch.randn(3, 2, 8), torch.randn(8, 2, 8), torch.randn(8, 2, 8)
    torch.library.opcheck(torch.ops.lmk.word_attention, (q, k, v, cu, 0.5))
    x, guide = torch.randn(8, 6), torch.randn(3, 6)
    torch.library.opcheck(torch.ops.lmk.guide_broadcast, (x, guide, cu))


@pytest.mark.parametrize("dtype", FLOATS)
def test_guide_broadcast_matches_reference(device, dtype):
    cu = torch.tensor([1, 4, 4, 5, 9], device=device)
    x, guide = leaves((11, 24), (4, 24), dtype=dtype, device=device)
    ours, expected = guide_broadcast(x, guide, cu), reference.guide_broadcast(x, guide, cu)
    torch.testing.assert_close(ours, expected, **TOLERANCE[dtype])
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (x, guide), grad), torch.autograd.grad(expected, (x, guide), grad)):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype])


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=0, max_size=10), width=st.integers(1, 33))
def test_guide_broadcast_hypothesis(lengths, width):
    cu = seqlens(lengths)
    x, guide = leaves((int(cu[-1]), width), (len(lengths), width), dtype=torch.float32, device="cpu")
    ours = guide_broadcast(x, guide, cu)
    torch.testing.assert_close(ours, reference.guide_broadcast(x, guide, cu))
    grad = torch.randn_like(ours)
    _, grad_guide = torch.autograd.grad(ours, (x, guide), grad, allow_unused=True, materialize_grads=True)
    expected = torch.stack([grad[a:b].sum(0) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]) if lengths \
        else grad.new_zeros(0, width)
    torch.testing.assert_close(grad_guide, expected)


def test_bad_input(device):
    q, k, v, cu = (torch.randn(2, 4, 8, device=device), torch.randn(5, 2, 8, device=device),
                   torch.randn(5, 2, 8, device=device), torch.tensor([0, 2, 5], device=device))
    with pytest.raises(TypeError, match="q"):
        word_attention(q.numpy() if device == "cpu" else None, k, v, cu)
    with pytest.raises(TypeError, match="k"):
        word_attention(q, k.double(), v, cu)
    with pytest.raises(TypeError, match="cu_seqlens"):
        word_attention(q, k, v, cu.float())
    with pytest.raises(ValueError, match="k"):
        word_attention(q, torch.randn(5, 3, 8, device=device), torch.randn(5, 3, 8, device=device), cu)
    with pytest.raises(ValueError, match="k"):
        word_attention(q, torch.randn(5, 2, 4, device=device), v, cu)
    with pytest.raises(ValueError, match="v"):
        word_attention(q, k, torch.randn(4, 2, 8, device=device), cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        word_attention(q, k, v, torch.tensor([0, 5], device=device))
    with pytest.raises(ValueError, match="head dimension"):
        word_attention(torch.randn(2, 1, 300, device=device), torch.randn(5, 1, 300, device=device),
                       torch.randn(5, 1, 300, device=device), cu)
    with pytest.raises(ValueError, match="head dimension of at least 1"):
        word_attention(torch.randn(2, 1, 0, device=device), torch.randn(5, 1, 0, device=device),
                       torch.randn(5, 1, 0, device=device), cu)
    with pytest.raises(TypeError, match="scale"):
        word_attention(q, k, v, cu, scale=True)
    for bad in (math.nan, math.inf, -math.inf):  # as attention() rejects them
        with pytest.raises(ValueError, match="scale: expected a finite number"):
            word_attention(q, k, v, cu, scale=bad)
    for bad in ([0, 3, 2], [-1, 2, 5], [0, 2, 6]):
        with pytest.raises(ValueError, match="cu_seqlens"):
            word_attention(q, k, v, torch.tensor(bad, device=device))
        with pytest.raises(ValueError, match="cu_seqlens"):
            guide_broadcast(torch.randn(5, 3, device=device), torch.randn(2, 3, device=device),
                            torch.tensor(bad, device=device))
    with pytest.raises(ValueError, match="guide"):
        guide_broadcast(torch.randn(5, 3, device=device), torch.randn(2, 4, device=device), cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        guide_broadcast(torch.randn(5, 3, device=device), torch.randn(3, 3, device=device), cu)
    with pytest.raises(ValueError, match="x"):
        guide_broadcast(torch.randn(5, device=device), torch.randn(2, 3, device=device), cu)


def test_a_table_found_valid_is_checked_again_after_a_write(device):
    # On CUDA a cu_seqlens table the kernels found valid is not waited for again, until written.
    q, k, v = (torch.randn(rows, heads, 8, device=device) for rows, heads in ((2, 4), (5, 2), (5, 2)))
    cu = torch.tensor([0, 2, 5], device=device)
    first = word_attention(q, k, v, cu)
    assert torch.equal(word_attention(q, k, v, cu), first)
    cu[1] = 6
    with pytest.raises(ValueError, match="cu_seqlens"):
        word_attention(q, k, v, cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        guide_broadcast(torch.randn(5, 3, device=device), torch.randn(2, 3, device=device), cu)


def test_bad_cu_seqlens_raise_when_no_word_is_computed(device):
    # Empty outputs: on CUDA no word's warp or block runs, so only the table check can report bad values.
    k, v, empty_q = (torch.randn(5, 2, 8, device=device), torch.randn(5, 2, 8, device=device),
                     torch.randn(0, 4, 8, device=device))
    no_rows = torch.randn(0, 2, 8, device=device)

    def table(*values):
        return torch.tensor(values, device=device)

    with pytest.raises(ValueError, match="cu_seqlens"):
        word_attention(empty_q, k, v, table(7))
    with pytest.raises(ValueError, match="cu_seqlens"):
        torch.ops.lmk.word_attention_backward(empty_q, no_rows, no_rows, table(3), torch.zeros(0, 4, device=device),
                                              torch.zeros_like(empty_q), 1.0)
    with pytest.raises(ValueError, match="cu_seqlens"):
        guide_broadcast(torch.randn(0, 3, device=device), torch.randn(1, 3, device=device), table(0, 2))
    with pytest.raises(ValueError, match="cu_seqlens"):
        guide_broadcast(torch.randn(5, 0, device=device), torch.randn(2, 0, device=device), table(0, 3, 2))
    with pytest.raises(ValueError, match="cu_seqlens"):
        torch.ops.lmk.guide_broadcast_backward(torch.randn(5, 3, device=device), table(7), 0)
