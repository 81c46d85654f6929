"""lmk::multilabel_bce against the dense reference: values, gradients, accuracy of the vectorised
softplus and sigmoid, extreme logits, determinism, compile, opcheck, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import lmkernels
from lmkernels import _C, reference
from lmkernels.ops import multilabel_bce_with_logits

# The kernel and the reference both compute in fp32 from the same stored logits, so the loss
# agrees to fp32 summation error for every dtype; 16-bit gradients are rounded once more.
LOSS_TOLERANCE = dict(rtol=2e-5, atol=1e-5)
GRAD_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-7), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-6),
                  torch.float16: dict(rtol=2e-3, atol=1e-6)}
INF = math.inf


def make_targets(counts, v, index_dtype=torch.int64, device="cpu", distinct_values=None, generator=None):
    """CSR positives: counts[p] indices for position p, drawn from [0, distinct_values or v)."""
    offsets = torch.tensor([0] + list(np.cumsum(counts, dtype=np.int64)), dtype=index_dtype)
    high = min(v, distinct_values) if distinct_values else v
    indices = torch.randint(0, max(high, 1), (int(offsets[-1]),), generator=generator).to(index_dtype)
    return indices.to(device), offsets.to(device)


@st.composite
def problems(draw):
    v = draw(st.sampled_from([1, 3, 15, 16, 17, 40, 100, 333]))
    counts = draw(st.lists(st.integers(0, 12), min_size=0, max_size=8))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    index_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    duplicates = draw(st.booleans())  # draw indices from a few values, so rows repeat them
    weighted = draw(st.booleans())
    pos_weight = draw(st.sampled_from([1.0, 0.5, 3.0, 300.0]))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    scale = draw(st.sampled_from([1.0, 8.0]))
    seed = draw(st.integers(0, 2**16))
    return v, counts, dtype, index_dtype, duplicates, weighted, pos_weight, reduction, scale, seed


def build(problem, device="cpu"):
    v, counts, dtype, index_dtype, duplicates, weighted, pos_weight, reduction, scale, seed = problem
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(len(counts), v, generator=gen) * scale).to(device=device, dtype=dtype)
    indices, offsets = make_targets(counts, v, index_dtype, device, 3 if duplicates else None, gen)
    weights = None
    if weighted:
        weights = torch.rand(len(counts), generator=gen)
        weights[::3] = 0.0  # padding positions
        weights = weights.to(device)
    return logits, indices, offsets, weights, pos_weight, reduction


def check(problem, device="cpu"):
    logits, indices, offsets, weights, pos_weight, reduction = build(problem, device)
    logits.requires_grad_()
    exact_logits = logits.detach().double().requires_grad_()  # the oracle, in fp64 from the same values
    ours = multilabel_bce_with_logits(logits, indices, offsets, weights, pos_weight, reduction)
    expected = reference.multilabel_bce_with_logits(exact_logits, indices, offsets, weights, pos_weight, reduction)
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    scale = max(1.0, pos_weight)
    torch.testing.assert_close(ours, expected.float(), rtol=LOSS_TOLERANCE["rtol"],
                               atol=LOSS_TOLERANCE["atol"] * scale, equal_nan=True)  # a mean of nothing is NaN
    upstream = torch.rand_like(ours) + 0.5
    (grad,) = torch.autograd.grad(ours, logits, upstream)
    (expected_grad,) = torch.autograd.grad(expected, exact_logits, upstream.double())
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    tolerance = GRAD_TOLERANCE[logits.dtype]
    torch.testing.assert_close(grad, expected_grad.to(logits.dtype), rtol=tolerance["rtol"],
                               atol=tolerance["atol"] * scale)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_matches_reference(problem):
    check(problem)


# Fixed problems, run on every device (hypothesis above covers the CPU broadly):
# (v, counts, dtype, index dtype, duplicates, weighted, pos_weight, reduction, scale, seed)
FIXED_PROBLEMS = [
    (100, [3, 0, 12, 1], torch.float32, torch.int64, False, True, 3.0, "none", 1.0, 1),
    (17, [5, 5, 0, 9], torch.bfloat16, torch.int32, True, True, 300.0, "mean", 8.0, 2),
    (333, [50] * 6, torch.float16, torch.int64, False, False, 1.0, "sum", 1.0, 3),
    (1, [0, 1, 1], torch.float32, torch.int32, True, False, 0.5, "none", 8.0, 4),
    (3000, [50] * 4, torch.float32, torch.int64, False, True, 300.0, "mean", 1.0, 5),
]


@pytest.mark.parametrize("problem", FIXED_PROBLEMS)
def test_fixed_problems_on_every_device(device, problem):
    check(problem, device)


def ulps(actual, exact):
    """|actual - exact| in units of the float32 spacing at |exact| (exact in float64)."""
    magnitude = exact.float().abs()
    spacing = (torch.nextafter(magnitude, torch.tensor(INF)) - magnitude).double()
    return ((actual.double() - exact).abs() / spacing).max().item()


def accuracy_inputs():
    return torch.cat([torch.linspace(-110, 110, 40001), torch.randn(20000) * 4,
                      torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 88.7, -88.7, -87.3, -103.0])])


def test_softplus_within_two_ulp_of_float64():
    x = accuracy_inputs()
    # One logit per position: each position's loss is softplus(x) (a negative) or softplus(-x) (a positive).
    rows = x.view(-1, 1)
    no_positives = torch.zeros(rows.shape[0] + 1, dtype=torch.int64)
    loss = multilabel_bce_with_logits(rows, torch.zeros(0, dtype=torch.int64), no_positives, reduction="none")
    assert ulps(loss, torch.nn.functional.softplus(x.double())) <= 2
    all_positive = torch.arange(rows.shape[0] + 1)
    loss = multilabel_bce_with_logits(rows, torch.zeros(rows.shape[0], dtype=torch.int64), all_positive,
                                      reduction="none")
    assert ulps(loss, torch.nn.functional.softplus(-x.double())) <= 2


@pytest.mark.parametrize("width", [1, 16, 50])  # the padded tail alone, whole vector blocks, both
def test_sigmoid_gradient_within_three_ulp_of_float64(width):
    x = accuracy_inputs()
    x = x[: x.numel() // width * width].view(-1, width).requires_grad_()
    no_positives = torch.zeros(x.shape[0] + 1, dtype=torch.int64)
    loss = multilabel_bce_with_logits(x, torch.zeros(0, dtype=torch.int64), no_positives, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    assert ulps(grad.flatten(), torch.sigmoid(x.detach().double()).flatten()) <= 3


def test_extreme_finite_logits_match_reference(device):
    logits = torch.randn(4, 40, device=device)
    logits[:, ::3] = 100.0
    logits[:, 1::3] = -100.0
    indices = torch.tensor([0, 1, 2, 3, 6, 7, 39, 0, 0], device=device)  # positives at +-100 and in between
    offsets = torch.tensor([0, 3, 6, 6, 9], device=device)
    check_pair = dict(pos_weight=300.0, reduction="none")
    leaf = logits.requires_grad_()
    ours = multilabel_bce_with_logits(leaf, indices, offsets, **check_pair)
    expected = reference.multilabel_bce_with_logits(leaf, indices, offsets, **check_pair)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), leaf)[0], torch.autograd.grad(expected.sum(), leaf)[0])


def test_infinite_logits_give_the_limits(device):
    # Row 0: +inf on a negative (loss inf, gradient w). Row 1: -inf on a negative (0, 0), the rest
    # finite. Row 2: -inf on a positive (loss inf, gradient -w P). Row 3: +inf on a positive (NaN).
    logits = torch.zeros(4, 3, device=device)
    logits[0, 1] = INF
    logits[1, 1] = -INF
    logits[2, 1] = -INF
    logits[3, 1] = INF
    leaf = logits.requires_grad_()
    indices = torch.tensor([2, 1, 1], device=device)
    offsets = torch.tensor([0, 0, 1, 2, 3], device=device)
    weights = torch.tensor([2.0, 2.0, 2.0, 2.0], device=device)
    loss = multilabel_bce_with_logits(leaf, indices, offsets, weights, pos_weight=5.0, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    softplus0 = math.log(2.0)
    assert loss[0].item() == INF and loss[2].item() == INF and math.isnan(loss[3].item())
    assert loss[1].item() == pytest.approx(2 * (softplus0 + 5 * softplus0), rel=1e-6)
    assert grad[0, 1].item() == 2.0 and grad[1, 1].item() == 0.0 and grad[2, 1].item() == -10.0
    assert grad[1, 0].item() == pytest.approx(1.0) and grad[1, 2].item() == pytest.approx(-5.0)


def test_nan_logit_makes_only_its_position_nan(device):
    logits = torch.randn(3, 20, device=device)
    logits[1, 7] = math.nan
    indices, offsets = make_targets([2, 2, 2], 20, device=device)
    loss = multilabel_bce_with_logits(logits, indices, offsets, reduction="none")
    assert math.isnan(loss[1].item()) and loss[[0, 2]].isfinite().all()


def test_duplicates_count_once(device):
    logits = torch.randn(2, 10, device=device, requires_grad=True)
    once = multilabel_bce_with_logits(logits, torch.tensor([4, 1, 8], device=device),
                                      torch.tensor([0, 2, 3], device=device), pos_weight=7.0, reduction="none")
    repeated = multilabel_bce_with_logits(logits, torch.tensor([4, 1, 4, 1, 4, 8, 8], device=device),
                                          torch.tensor([0, 5, 7], device=device), pos_weight=7.0, reduction="none")
    assert torch.equal(once, repeated)
    assert torch.equal(torch.autograd.grad(once.sum(), logits)[0], torch.autograd.grad(repeated.sum(), logits)[0])


def test_empty_positive_sets_and_no_positions(device):
    logits = torch.randn(3, 5, device=device)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    loss = multilabel_bce_with_logits(logits, empty, torch.zeros(4, dtype=torch.int64, device=device),
                                      reduction="none")
    torch.testing.assert_close(loss, torch.nn.functional.softplus(logits).sum(1))
    none = multilabel_bce_with_logits(torch.randn(0, 5, device=device), empty,
                                      torch.zeros(1, dtype=torch.int64, device=device), reduction="sum")
    assert none.item() == 0.0


def test_mean_counts_padded_positions_in_the_denominator():
    logits = torch.randn(4, 6)
    indices, offsets = make_targets([1, 2, 0, 3], 6)
    weights = torch.tensor([1.0, 0.0, 1.0, 0.0])
    total = multilabel_bce_with_logits(logits, indices, offsets, weights, 2.0, "sum")
    mean = multilabel_bce_with_logits(logits, indices, offsets, weights, 2.0, "mean")
    assert mean.item() == pytest.approx(total.item() / 24, rel=1e-6)


def test_strided_logit_rows_are_read_correctly(device):
    wide = torch.randn(6, 50, device=device)
    logits = wide[:, 3:40]  # rows 50 apart, each row contiguous
    indices, offsets = make_targets([3, 0, 5, 1, 2, 2], 37, device=device)
    torch.testing.assert_close(multilabel_bce_with_logits(logits, indices, offsets, reduction="none"),
                               reference.multilabel_bce_with_logits(logits, indices, offsets, reduction="none"))
    transposed = torch.randn(37, 6, device=device).t()  # no unit inner stride: made contiguous
    torch.testing.assert_close(multilabel_bce_with_logits(transposed, indices, offsets, reduction="none"),
                               reference.multilabel_bce_with_logits(transposed, indices, offsets, reduction="none"))


def test_without_gradient_only_the_loss_is_computed():
    logits = torch.randn(5, 30, requires_grad=True)
    indices, offsets = make_targets([4, 4, 4, 4, 4], 30)
    with_grad = multilabel_bce_with_logits(logits, indices, offsets, reduction="none")
    with torch.no_grad():
        without = multilabel_bce_with_logits(logits, indices, offsets, reduction="none")
    assert torch.equal(with_grad.detach(), without)
    loss, grad = torch.ops.lmk.multilabel_bce(logits.detach(), indices, offsets, None, 1.0, False)
    assert grad.numel() == 0 and torch.equal(loss, without)


def heavy_problem(device="cpu", dtype=torch.float32):
    gen = torch.Generator().manual_seed(7)
    logits = (torch.randn(64, 1000, generator=gen) * 4).to(device=device, dtype=dtype).requires_grad_()
    indices, offsets = make_targets([50] * 64, 1000, device=device, distinct_values=200, generator=gen)
    weights = torch.rand(64, generator=gen).to(device)
    return logits, indices, offsets, weights


def run_fwd_bwd(logits, indices, offsets, weights):
    loss = multilabel_bce_with_logits(logits, indices, offsets, weights, 300.0, "none")
    (grad,) = torch.autograd.grad(loss, logits, torch.linspace(0.5, 2, loss.numel(), device=loss.device))
    return loss, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_deterministic(device, dtype):
    problem = heavy_problem(device, dtype)
    first = run_fwd_bwd(*problem)
    for _ in range(3):
        for a, b in zip(first, run_fwd_bwd(*problem)):
            assert torch.equal(a, b)


def test_same_result_for_any_thread_count():
    problem = heavy_problem()
    threads = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(1)
        single = run_fwd_bwd(*problem)
        lmkernels.set_num_threads(3)
        several = run_fwd_bwd(*problem)
    finally:
        lmkernels.set_num_threads(threads)
    for a, b in zip(single, several):
        assert torch.equal(a, b)


def test_concurrent_calls_from_python_threads():
    from concurrent.futures import ThreadPoolExecutor

    problem = heavy_problem()
    expected = run_fwd_bwd(*problem)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run_fwd_bwd(*problem), range(8)))
    assert all(torch.equal(a, b) for result in results for a, b in zip(result, expected))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiles_fullgraph_with_backward(device, reduction):
    logits = torch.randn(5, 24, device=device, requires_grad=True)
    indices, offsets = make_targets([3, 0, 7, 2, 2], 24, device=device)
    weights = torch.rand(5, device=device)

    def loss(logits):
        return (multilabel_bce_with_logits(logits * 2, indices, offsets, weights, 30.0, reduction) ** 2).sum()

    compiled = torch.compile(loss, fullgraph=True)
    (grad,) = torch.autograd.grad(compiled(logits), logits)
    (expected,) = torch.autograd.grad(loss(logits), logits)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("compute_grad", [False, True])
def test_opcheck(compute_grad):
    logits = torch.randn(4, 9, requires_grad=compute_grad)
    indices, offsets = make_targets([3, 0, 4, 1], 9)
    torch.library.opcheck(torch.ops.lmk.multilabel_bce.default,
                          (logits, indices, offsets, torch.rand(4), 3.0, compute_grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_backward_scales_rows_in_fp32_and_rounds_once(device, dtype):
    grad = torch.randn(3, 37, device=device).to(dtype)
    grad_loss = torch.tensor([0.5, -3.0, 1e-9], device=device)
    out = torch.ops.lmk.multilabel_bce_backward(grad, grad_loss)
    assert out.dtype == dtype
    assert torch.equal(out, (grad.float() * grad_loss[:, None]).to(dtype))


def test_opcheck_backward():
    torch.library.opcheck(torch.ops.lmk.multilabel_bce_backward.default, (torch.randn(4, 9), torch.rand(4)))


# ---- bad input --------------------------------------------------------------------------------

def valid():
    logits = torch.randn(2, 10)
    indices, offsets = make_targets([2, 3], 10)
    return logits, indices, offsets


@pytest.mark.parametrize("bad_index", [10, 1000, -1])
def test_index_out_of_range_raises_index_error(bad_index):
    logits, indices, offsets = valid()
    indices[3] = bad_index
    with pytest.raises(IndexError, match="pos_indices"):
        multilabel_bce_with_logits(logits, indices, offsets)
    with pytest.raises(IndexError, match="pos_indices"):
        multilabel_bce_with_logits(logits.requires_grad_(), indices.int(), offsets.int())


@pytest.mark.parametrize("offsets, message", [
    ([-1, 2, 5], "pos_offsets\\[0\\] == 0"),
    ([0, 4, 2], "non-decreasing|last offset"),
    ([0, 2, 4], "last offset"),
    ([0, 2, 9], "last offset"),
    ([0, 5], "pos_offsets"),
])
def test_malformed_offsets_raise_value_error(offsets, message):
    logits, indices, _ = valid()
    with pytest.raises(ValueError, match=message):
        multilabel_bce_with_logits(logits, indices, torch.tensor(offsets, dtype=torch.int64))


# On CUDA the values are checked by the kernel and reported through the error flag, with messages
# of their own: the exception type and the argument named are what both devices share.
@pytest.mark.parametrize("bad_index, offsets, error, name", [
    (10, [0, 2, 5], IndexError, "pos_indices"),
    (-1, [0, 2, 5], IndexError, "pos_indices"),
    (None, [-1, 2, 5], ValueError, "pos_offsets"),
    (None, [0, 4, 2], ValueError, "pos_offsets"),
    (None, [0, 2, 9], ValueError, "pos_offsets"),
    (10, [0, 4, 2], ValueError, "pos_offsets"),  # both: the offsets are checked first on every device
])
def test_bad_target_values_raise_on_every_device(device, bad_index, offsets, error, name):
    logits, indices, _ = valid()
    if bad_index is not None:
        indices[3] = bad_index
    logits, indices, offsets = logits.to(device), indices.to(device), torch.tensor(offsets, device=device)
    with pytest.raises(error, match=name):
        multilabel_bce_with_logits(logits, indices, offsets)
    with pytest.raises(error, match=name):
        multilabel_bce_with_logits(logits.requires_grad_(), indices.int(), offsets.int())


@pytest.mark.parametrize("argument, make", [
    ("logits", lambda x, i, o: (x.double(), i, o, None)),
    ("logits", lambda x, i, o: (x.to(torch.int32), i, o, None)),
    ("logits", lambda x, i, o: (x.numpy(), i, o, None)),
    ("pos_indices", lambda x, i, o: (x, i.float(), o, None)),
    ("pos_offsets", lambda x, i, o: (x, i, o.to(torch.int16), None)),
    ("weights", lambda x, i, o: (x, i, o, torch.rand(2, dtype=torch.float64))),
    ("weights", lambda x, i, o: (x, i, o, [1.0, 1.0])),
])
def test_wrong_type_or_dtype_raises_type_error(argument, make):
    with pytest.raises(TypeError, match=argument):
        multilabel_bce_with_logits(*make(*valid()))


@pytest.mark.parametrize("argument, make", [
    ("logits", lambda x, i, o: (x[0], i, o, None)),
    ("pos_indices", lambda x, i, o: (x, i.view(5, 1), o, None)),
    ("pos_offsets", lambda x, i, o: (x, i, o[:-1], None)),
    ("weights", lambda x, i, o: (x, i, o, torch.rand(3))),
    ("pos_indices", lambda x, i, o: (x, i.to("meta"), o, None)),
    ("pos_offsets", lambda x, i, o: (x, i, o.to("meta"), None)),
    ("weights", lambda x, i, o: (x, i, o, torch.rand(2, device="meta"))),
    ("weights", lambda x, i, o: (x, i, o, torch.rand(2, requires_grad=True))),
])
def test_wrong_shape_or_device_raises_value_error(argument, make):
    with pytest.raises(ValueError, match=argument):
        multilabel_bce_with_logits(*make(*valid()))


def test_bad_reduction_and_pos_weight():
    with pytest.raises(ValueError, match="reduction"):
        multilabel_bce_with_logits(*valid(), reduction="max")
    with pytest.raises(ValueError, match="pos_weight"):
        multilabel_bce_with_logits(*valid(), pos_weight=math.inf)
    with pytest.raises(TypeError, match="pos_weight"):
        multilabel_bce_with_logits(*valid(), pos_weight=torch.tensor(2.0))


def test_native_entry_point_checks_its_outputs():
    logits, indices, offsets = valid()
    _C.multilabel_bce(logits, indices, offsets, None, 2.0, loss := torch.empty(2), torch.empty(2, 10))
    torch.testing.assert_close(loss, reference.multilabel_bce_with_logits(logits, indices, offsets, None, 2.0, "none"))
    with pytest.raises(TypeError, match="loss"):
        _C.multilabel_bce(logits, indices, offsets, None, 2.0, torch.empty(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="grad"):
        _C.multilabel_bce(logits, indices, offsets, None, 2.0, torch.empty(2), torch.empty(2, 9))
    with pytest.raises(TypeError, match="grad"):
        _C.multilabel_bce(logits, indices, offsets, None, 2.0, torch.empty(2), torch.empty(2, 10).half())
    with pytest.raises(ValueError, match="pos_weight"):
        _C.multilabel_bce(logits, indices, offsets, None, math.nan, torch.empty(2))
    with pytest.raises(ValueError, match="grad_loss"):
        _C.multilabel_bce_backward(torch.ones(2, 10), torch.ones(3), torch.empty(2, 10))
    with pytest.raises(TypeError, match="grad_loss"):
        _C.multilabel_bce_backward(torch.ones(2, 10), torch.ones(2, dtype=torch.float64), torch.empty(2, 10))
    with pytest.raises(TypeError, match="grad_logits"):
        _C.multilabel_bce_backward(torch.ones(2, 10), torch.ones(2), torch.empty(2, 10).half())


def test_gradients_in_reused_memory_are_overwritten_entirely(poison_memory_cache):
    # [256, 32768] fp32 gradients (32 MiB) come from the memory cache, uninitialised; a third of the
    # positions have weight 0 and so a gradient of zeros that must still be written.
    problem = (32768, [10] * 256, torch.float32, torch.int64, False, True, 3.0, "none", 1.0, 6)
    poison_memory_cache(32 << 20, 32 << 20)
    check(problem)
    poisoned = poison_memory_cache(32 << 20, 32 << 20)
    logits, indices, offsets, weights, pos_weight, reduction = build(problem)
    loss = multilabel_bce_with_logits(logits.requires_grad_(), indices, offsets, weights, pos_weight, reduction)
    (grad,) = torch.autograd.grad(loss, logits, torch.rand_like(loss) + 0.5)
    assert grad.data_ptr() in poisoned  # the gradient did come from the poisoned blocks
