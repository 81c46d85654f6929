"""lmk::int8_quantize / int8_dequantize / int8_fake_quantize against the reference: bitwise parity,
edge values, round-half-even ties, non-finite weights, determinism, compile, opcheck, bad input."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import lmkernels
from lmkernels import _C, reference
from lmkernels.ops import int8_dequantize, int8_fake_quantize, int8_quantize

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def assert_bitwise_equal(a, b):
    """Equal bit patterns (so -0 differs from +0 and NaN must match NaN exactly)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.is_floating_point():
        a, b = a.contiguous().view(_SAME_WIDTH_INT[a.dtype]), b.contiguous().view(_SAME_WIDTH_INT[b.dtype])
    assert torch.equal(a.cpu(), b.cpu())


def check_all_ops(weight):
    q, scale = int8_quantize(weight)
    expected_q, expected_scale = reference.int8_quantize(weight)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and q.is_contiguous()
    assert_bitwise_equal(q, expected_q)
    assert_bitwise_equal(scale, expected_scale)
    for dtype in DTYPES:
        assert_bitwise_equal(int8_dequantize(q, scale, dtype), reference.int8_dequantize(q, scale, dtype))
    fake, fake_scale = int8_fake_quantize(weight, return_scale=True)
    assert_bitwise_equal(fake, reference.int8_fake_quantize(weight))
    assert_bitwise_equal(fake_scale, expected_scale)
    in_place = weight.clone()
    returned, in_place_scale = int8_fake_quantize(in_place, inplace=True, return_scale=True)
    assert returned is in_place
    assert_bitwise_equal(in_place, fake)
    assert_bitwise_equal(in_place_scale, expected_scale)


@st.composite
def weights(draw):
    rows = draw(st.integers(0, 9))
    cols = draw(st.sampled_from([0, 1, 2, 7, 15, 16, 17, 31, 32, 33, 100, 257]))
    dtype = draw(st.sampled_from(DTYPES))
    row_padding = draw(st.sampled_from([0, 3, 8]))  # rows of a wider matrix: strided rows
    magnitude = draw(st.sampled_from([1e-3, 1.0, 300.0]))
    zero_rows = draw(st.lists(st.integers(0, 8), max_size=3))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    wide = (torch.randn(rows, cols + row_padding, generator=gen) * magnitude).to(dtype)
    weight = wide[:, :cols]
    weight[[r for r in zero_rows if r < rows]] = 0
    return weight


@settings(max_examples=200, deadline=None)
@given(weights())
def test_matches_reference_bitwise(weight):
    check_all_ops(weight)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_shapes_on_every_device(device, dtype):
    for rows, cols in [(1, 1), (0, 5), (4, 0), (9, 4096), (3, 1000), (17, 64)]:
        check_all_ops(torch.randn(rows, cols, device=device).to(dtype))


def test_one_by_one_quantises_to_127(device):
    q, scale = int8_quantize(torch.tensor([[-2.5]], device=device))
    assert q.item() == -127 and scale.item() == pytest.approx(2.5 / 127)
    assert int8_fake_quantize(torch.tensor([[-2.5]], device=device)).item() == pytest.approx(-2.5, rel=1e-6)


def test_zero_rows_have_zero_scale_and_zero_values(device):
    weight = torch.randn(4, 40, device=device)
    weight[1] = 0
    weight[2] = -0.0
    q, scale = int8_quantize(weight)
    assert scale[1].item() == 0 and scale[2].item() == 0
    assert not q[1:3].any()
    fake = int8_fake_quantize(weight)
    assert_bitwise_equal(fake[1:3], torch.zeros(2, 40, device=device))  # +0, as through int8


@pytest.mark.parametrize("dtype", DTYPES)
def test_values_rounding_to_zero_fake_quantise_to_plus_zero(device, dtype):
    # As through the int8 round trip; CUDA's first version kept the sign of -0.3 / scale through rintf.
    weight = torch.tensor([[100.0, -0.3, -0.0, 0.2, -0.39]], device=device).to(dtype)
    fake = int8_fake_quantize(weight)
    assert not fake[0, 1:].signbit().any() and not fake[0, 1:].any()
    assert_bitwise_equal(fake, reference.int8_fake_quantize(weight))


def test_underflowing_scale_quantises_to_zeros(device):
    tiny = torch.tensor([[6e-44, -3e-44, 0.0]], device=device)  # absmax / 127 rounds to 0 in fp32
    q, scale = int8_quantize(tiny)
    assert scale.item() == 0 and not q.any()
    check_all_ops(tiny)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_magnitudes(device, dtype):
    info = torch.finfo(dtype)
    weight = torch.tensor([[info.max, -info.max, 1.0, info.tiny],
                           [info.tiny, -info.tiny, 0.0, info.tiny / 2],
                           [-info.max, 0.0, info.max / 3, -info.max / 254]], device=device).to(dtype)
    q, _ = int8_quantize(weight)
    assert q[0, :2].tolist() == [127, -127] and q[2, 0].item() == -127
    check_all_ops(weight)


def test_rounding_to_16_bits_over_the_whole_exponent_range(device):
    # Every int8 value times scales from 2^-30 to 2^10, and scales at fp16's overflow and subnormal
    # edges: the lane-wise fp16 and bf16 roundings agree with torch's casts.
    scale = torch.logspace(-30, 10, 2000, base=2.0) * (1 + torch.rand(2000) * 1e-3)
    scale = torch.cat([scale, torch.tensor([65504 / 127, 65520 / 127, 7e-8, 1e-10, 0.0])]).to(device)
    q = torch.arange(-128, 128, dtype=torch.int8, device=device).repeat(scale.numel(), 1)
    for dtype in DTYPES:
        assert_bitwise_equal(int8_dequantize(q, scale, dtype), reference.int8_dequantize(q, scale, dtype))


def test_ties_round_half_to_even(device):
    # absmax 127 gives scale exactly 1, so W / scale is W: the halves are exact ties.
    values = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, 4.5]
    q, scale = int8_quantize(torch.tensor([values], device=device))
    assert scale.item() == 1.0
    assert q[0].tolist() == [127, 0, 2, 2, 0, -2, -2, 126, -126, 4, 4]
    # absmax 63.5 gives scale 0.5: W / scale doubles W, so quarters become ties.
    q, scale = int8_quantize(torch.tensor([[63.5, 0.25, 0.75, -1.25, 1.75]], device=device))
    assert scale.item() == 0.5 and q[0].tolist() == [127, 0, 2, -2, 4]
    for dtype in DTYPES:
        check_all_ops(torch.tensor([values], device=device).to(dtype))


def test_quotients_past_127_clamp(device):
    # The largest subnormal-free case where absmax / 127 rounds down: W / scale exceeds 127 a little.
    weight = torch.tensor([[1.0, 0.999, -1.0]], device=device) * torch.tensor(2.0 ** -120, device=device)
    q, _ = int8_quantize(weight)
    assert q.abs().max().item() == 127
    check_all_ops(weight)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_weights_raise_value_error(device, bad, dtype):
    weight = torch.randn(5, 20, device=device).to(dtype)
    weight[3, 7] = bad
    match = "weight.*row 3" if device == "cpu" else "weight"
    with pytest.raises(ValueError, match=match):
        int8_quantize(weight)
    with pytest.raises(ValueError, match=match):
        int8_fake_quantize(weight)
    with pytest.raises(ValueError, match="weight"):
        reference.int8_quantize(weight)
    in_place = weight.clone()
    with pytest.raises(ValueError, match=match):
        int8_fake_quantize(in_place, inplace=True)
    # The non-finite row is left as it was; the others are quantised.
    assert_bitwise_equal(in_place[3], weight[3])
    finite_rows = [0, 1, 2, 4]
    assert_bitwise_equal(in_place[finite_rows], reference.int8_fake_quantize(weight[finite_rows]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_deterministic(device, dtype):
    weight = (torch.randn(300, 1000, device=device) * torch.rand(300, 1, device=device)).to(dtype)
    first = int8_fake_quantize(weight, return_scale=True), int8_quantize(weight)
    for _ in range(3):
        again = int8_fake_quantize(weight, return_scale=True), int8_quantize(weight)
        for a, b in zip([*first[0], *first[1]], [*again[0], *again[1]]):
            assert_bitwise_equal(a, b)


def test_same_result_for_any_thread_count():
    weight = torch.randn(300, 1000) * torch.rand(300, 1)
    first = int8_fake_quantize(weight, return_scale=True)
    threads = lmkernels.num_threads()
    try:
        for n in (1, 3, threads):
            lmkernels.set_num_threads(n)
            for a, b in zip(first, int8_fake_quantize(weight, return_scale=True)):
                assert_bitwise_equal(a, b)
    finally:
        lmkernels.set_num_threads(threads)


def test_concurrent_calls_from_python_threads():
    from concurrent.futures import ThreadPoolExecutor

    weight = torch.randn(64, 513)
    expected = int8_fake_quantize(weight)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: int8_fake_quantize(weight), range(16)))
    assert all(torch.equal(r, expected) for r in results)


def test_transposed_weight_is_read_correctly(device):
    weight = torch.randn(40, 24, device=device).t()  # no unit stride within rows: copied
    check_all_ops(weight.contiguous())
    q, scale = int8_quantize(weight)
    assert_bitwise_equal(q, reference.int8_quantize(weight)[0])
    assert_bitwise_equal(int8_fake_quantize(weight), reference.int8_fake_quantize(weight))


def test_in_place_writes_strided_rows_only(device):
    wide = torch.randn(6, 50, device=device)
    before = wide.clone()
    int8_fake_quantize(wide[:, 10:30], inplace=True)
    assert_bitwise_equal(wide[:, 10:30], reference.int8_fake_quantize(before[:, 10:30]))
    assert_bitwise_equal(wide[:, :10], before[:, :10])
    assert_bitwise_equal(wide[:, 30:], before[:, 30:])


def test_straight_through_gradient(device):
    weight = torch.randn(5, 9, device=device, requires_grad=True)
    upstream = torch.randn(5, 9, device=device)
    (grad,) = torch.autograd.grad(int8_fake_quantize(weight), weight, upstream)
    assert torch.equal(grad, upstream)
    bf16 = weight.detach().bfloat16().requires_grad_()
    (grad,) = torch.autograd.grad((int8_fake_quantize(bf16).float() * upstream).sum(), bf16)
    assert grad.dtype == torch.bfloat16 and torch.equal(grad, upstream.bfloat16())


def test_quantize_outputs_carry_no_gradient(device):
    weight = torch.randn(3, 4, device=device, requires_grad=True)
    q, scale = int8_quantize(weight)
    assert not q.requires_grad and not scale.requires_grad
    _, fake_scale = int8_fake_quantize(weight, return_scale=True)
    assert not fake_scale.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        (scale.sum() + fake_scale.sum()).backward()


def test_dequantize_gradient_with_respect_to_scale(device):
    q = torch.randint(-128, 128, (5, 7), dtype=torch.int8, device=device)
    scale = torch.rand(5, device=device, requires_grad=True)
    upstream = torch.randn(5, 7, device=device)
    (grad,) = torch.autograd.grad(int8_dequantize(q, scale), scale, upstream)
    (expected,) = torch.autograd.grad(reference.int8_dequantize(q, scale), scale, upstream)
    torch.testing.assert_close(grad, expected)


def test_in_place_on_a_tensor_requiring_grad_raises():
    weight = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="no_grad"):
        int8_fake_quantize(weight, inplace=True)
    with torch.no_grad():
        int8_fake_quantize(weight, inplace=True)
    assert weight.abs().max(1).values.eq(weight.abs().amax(1)).all()


def test_compiles_fullgraph(device):
    weight = torch.randn(8, 48, device=device, requires_grad=True)

    def fn(weight):
        fake, scale = int8_fake_quantize(weight, return_scale=True)
        q, _ = int8_quantize(weight.detach())
        return (fake * 2).sum() + int8_dequantize(q, scale, torch.bfloat16).float().sum()

    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(weight)
    torch.testing.assert_close(out, fn(weight))
    (grad,) = torch.autograd.grad(out, weight)
    assert torch.equal(grad, torch.full_like(weight, 2.0))

    def in_place(weight):
        int8_fake_quantize(weight, inplace=True)
        return weight + 1

    target = torch.randn(8, 48, device=device)
    expected = reference.int8_fake_quantize(target) + 1
    assert_bitwise_equal(torch.compile(in_place, fullgraph=True)(target), expected)


def test_opcheck():
    weight = torch.randn(6, 20, requires_grad=True)
    torch.library.opcheck(torch.ops.lmk.int8_fake_quantize.default, (weight,))
    torch.library.opcheck(torch.ops.lmk.int8_quantize.default, (weight.detach(),))
    q, scale = int8_quantize(weight.detach())
    torch.library.opcheck(torch.ops.lmk.int8_dequantize.default, (q, scale, torch.bfloat16))
    torch.library.opcheck(torch.ops.lmk.int8_fake_quantize_.default, (weight.detach().clone(),))


def test_native_functions_accept_numpy():
    import numpy as np

    weight = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], dtype=np.float32)
    q, scale = np.empty((2, 3), dtype=np.int8), np.empty(2, dtype=np.float32)
    _C.int8_absmax_quantize(weight, q, scale)
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]] and scale[1] == 0
    out = np.empty((2, 3), dtype=np.float32)
    _C.int8_absmax_dequantize(q, scale, out)
    np.testing.assert_array_equal(out, q * scale[:, None])


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("argument, call", [
    ("weight", lambda: int8_quantize(torch.randn(3, 4).double())),
    ("weight", lambda: int8_quantize(torch.ones(3, 4, dtype=torch.int32))),
    ("weight", lambda: int8_fake_quantize(torch.randn(3, 4).double())),
    ("weight", lambda: int8_quantize(torch.randn(3, 4).numpy())),
    ("weight", lambda: int8_fake_quantize([[1.0]])),
    ("q", lambda: int8_dequantize(torch.ones(3, 4, dtype=torch.int32), torch.ones(3))),
    ("q", lambda: int8_dequantize(torch.ones(3, 4, dtype=torch.uint8), torch.ones(3))),
    ("scale", lambda: int8_dequantize(torch.ones(3, 4, dtype=torch.int8), torch.ones(3).double())),
    ("dtype", lambda: int8_dequantize(torch.ones(3, 4, dtype=torch.int8), torch.ones(3), torch.float64)),
    ("dtype", lambda: int8_dequantize(torch.ones(3, 4, dtype=torch.int8), torch.ones(3), torch.int8)),
])
def test_wrong_dtype_or_type_raises_type_error(argument, call):
    with pytest.raises(TypeError, match=argument):
        call()


@pytest.mark.parametrize("argument, call", [
    ("weight", lambda: int8_quantize(torch.randn(4))),
    ("weight", lambda: int8_quantize(torch.randn(2, 3, 4))),
    ("weight", lambda: int8_fake_quantize(torch.tensor(1.0))),
    ("weight", lambda: int8_fake_quantize(torch.randn(4, 5).t(), inplace=True)),
    ("q", lambda: int8_dequantize(torch.ones(4, dtype=torch.int8), torch.ones(4))),
    ("scale", lambda: int8_dequantize(torch.ones(3, 4, dtype=torch.int8), torch.ones(4))),
    ("scale", lambda: int8_dequantize(torch.ones(3, 4, dtype=torch.int8), torch.ones(3, 1))),
    ("scale", lambda: int8_dequantize(torch.ones(3, 4, dtype=torch.int8), torch.ones(3, device="meta"))),
])
def test_wrong_shape_layout_or_device_raises_value_error(argument, call):
    with pytest.raises(ValueError, match=argument):
        call()


def test_native_checks_outputs():
    storage = torch.randn(25)
    weight = storage[:24].view(4, 6)
    scale = torch.empty(4)
    with pytest.raises(ValueError, match="out: expected either weight itself"):
        _C.int8_absmax_fake_quantize(weight, storage[1:].view(4, 6), scale)
    with pytest.raises(ValueError, match="q: expected rows that do not overlap"):
        _C.int8_absmax_quantize(weight, torch.empty(6, dtype=torch.int8).expand(4, 6), scale)
    with pytest.raises(ValueError, match="q: expected size 6"):
        _C.int8_absmax_quantize(weight, torch.empty(4, 5, dtype=torch.int8), scale)
    with pytest.raises(ValueError, match="scale: expected size 4"):
        _C.int8_absmax_fake_quantize(weight, torch.empty(4, 6), torch.empty(3))
    with pytest.raises(TypeError, match="out: expected the dtype of weight"):
        _C.int8_absmax_fake_quantize(weight, torch.empty(4, 6, dtype=torch.bfloat16), scale)
    with pytest.raises(ValueError, match="out: expected unit stride"):
        _C.int8_absmax_dequantize(torch.ones(4, 6, dtype=torch.int8), scale, torch.empty(6, 4).t())


def test_outputs_in_reused_memory_are_overwritten_entirely(poison_memory_cache):
    # q (32 MiB of int8) and the dequantised and fake-quantised bf16 weights (64 MiB) come from the
    # memory cache, uninitialised; rows of zeros quantise to zeros, which must still be written.
    weight = torch.randn(4096, 8192).to(torch.bfloat16)
    weight[::7] = 0
    poison_memory_cache(32 << 20, 64 << 20, 64 << 20)
    check_all_ops(weight)
    poisoned = poison_memory_cache(32 << 20)
    q, _ = int8_quantize(weight)
    assert q.data_ptr() in poisoned  # q did come from the poisoned block


def test_dequantize_takes_strided_and_expanded_scales():
    # The op layer makes its inputs contiguous where the kernels need it (docs/architecture.md).
    q = torch.randint(-127, 128, (4, 6), dtype=torch.int8)
    scale = torch.rand(8) + 0.5
    for view in (scale[::2], scale[:1].expand(4)):
        torch.testing.assert_close(int8_dequantize(q, view), q.float() * view.contiguous()[:, None], rtol=0, atol=0)


def test_in_place_fake_quantize_tells_autograd_the_weight_changed():
    x, weight = torch.randn(3, 4, requires_grad=True), torch.randn(4, 8)
    y = (x @ weight).sum()  # saves weight for the gradient of x
    int8_fake_quantize(weight, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
