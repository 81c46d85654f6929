"""lmk.fp8_cast against torch's float8 conversion (nearest) and the reference hash (stochastic):
every bf16 and fp16 value, dense and random fp32 values, saturation, non-finite values, subnormals,
ties, rows and outputs at any alignment, stochastic determinism and statistics, transpose (whole and
partial tiles), autograd, compile, opcheck, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmkernels
from lmkernels import reference
from lmkernels.ops import fp8_cast
from lmkernels.ops._native import _C

FORMATS = [torch.float8_e4m3fn, torch.float8_e5m2]
MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
INPUTS = [torch.float32, torch.bfloat16, torch.float16]


def bits(t):
    return t.cpu().view(torch.uint8)


def assert_bitwise_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a.contiguous()), bits(b.contiguous())), "fp8 bits differ"


def torch_cast(x, dtype):
    """Independent of the reference module: clamp to +-max, then torch's own conversion."""
    return x.float().clamp(-MAX[dtype], MAX[dtype]).to(dtype)


def every_16_bit_value(dtype, device):
    return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).to(device)


# ---- round to nearest even: bit for bit against torch ---------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_16_bit_value_matches_torch(device, fmt, dtype):
    x = every_16_bit_value(dtype, device)
    assert_bitwise_equal(fp8_cast(x, fmt), torch_cast(x.cpu(), fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_dense_fp32_sweep_matches_torch(device, fmt):
    # Every 2^7-th fp32 bit pattern over the positive half: all exponents, 2^16 mantissas each.
    positive = torch.arange(0, 1 << 31, 1 << 7, dtype=torch.int64).to(torch.int32).view(torch.float32)
    x = torch.cat([positive, -positive]).to(device)
    assert_bitwise_equal(fp8_cast(x, fmt), torch_cast(x.cpu(), fmt))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64),
       fmt=st.sampled_from(FORMATS))
def test_random_fp32_values_match_torch(values, fmt):
    x = torch.tensor(values, dtype=torch.float32)
    assert_bitwise_equal(fp8_cast(x, fmt), torch_cast(x, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_saturation_and_non_finite_values(device, fmt):
    big = MAX[fmt]
    x = torch.tensor([big, big * 1.01, 1e30, math.inf, -big * 1.5, -math.inf, math.nan, -math.nan], device=device)
    max_code = 0x7E if fmt == torch.float8_e4m3fn else 0x7B
    expected = [max_code, max_code, max_code, max_code, 0x80 | max_code, 0x80 | max_code, 0x7F, 0xFF]
    for rounding in ("nearest", "stochastic"):
        assert bits(fp8_cast(x, fmt, rounding, seed=1)).tolist() == expected
    assert torch.isnan(fp8_cast(x, fmt)[6:].float()).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_subnormals_and_ties_round_half_to_even(device, fmt):
    mantissa_bits, min_exponent = (3, -6) if fmt == torch.float8_e4m3fn else (2, -14)
    quantum = 2.0 ** (min_exponent - mantissa_bits)  # the subnormal spacing
    # k + 1/2 quanta: ties between subnormals k and k+1 go to the even one.
    x = torch.tensor([(k + 0.5) * quantum for k in range(2 ** mantissa_bits)] + [0.25 * quantum, 0.75 * quantum],
                     device=device)
    codes = [k + (k % 2) for k in range(2 ** mantissa_bits)] + [0, 1]
    assert bits(fp8_cast(x, fmt)).tolist() == codes
    # A tie in the normal range: 1 + half an ulp rounds to 1 (even), 1 + 3 half ulps rounds up.
    ulp = 2.0 ** -mantissa_bits
    one = 0x38 if fmt == torch.float8_e4m3fn else 0x3C
    y = torch.tensor([1 + ulp / 2, 1 + 1.5 * ulp, -0.0, -quantum / 4], device=device)
    assert bits(fp8_cast(y, fmt)).tolist() == [one, one + 2, 0x80, 0x80]


@pytest.mark.parametrize("dtype", INPUTS)
def test_multi_dimensional_and_empty_inputs(device, dtype):
    for shape in [(), (0,), (3, 0, 2), (2, 3, 5), (7,)]:
        x = (torch.randn(shape) * 100).to(device=device, dtype=dtype)
        for fmt in FORMATS:
            assert_bitwise_equal(fp8_cast(x, fmt), torch_cast(x.cpu(), fmt))


def test_strided_rows_are_read_in_place(device):
    wide = torch.randn(9, 40, device=device) * 30
    x = wide[::2, 3:35]
    assert x.stride(1) == 1 and not x.is_contiguous()
    for fmt in FORMATS:
        assert_bitwise_equal(fp8_cast(x, fmt), torch_cast(x.cpu(), fmt))
        stochastic = fp8_cast(x, fmt, "stochastic", seed=4)
        assert_bitwise_equal(stochastic, fp8_cast(x.contiguous(), fmt, "stochastic", seed=4))


@pytest.mark.parametrize("dtype", INPUTS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_rows_and_outputs_at_any_alignment(device, dtype, rounding):
    # x and out starting anywhere relative to 16-byte boundaries, with lengths that leave elements
    # before and after the vectorised part; out is filled first so that unwritten elements show.
    base = (torch.randn(4096) * 100).to(device=device, dtype=dtype)
    fmt = torch.float8_e4m3fn
    for x_offset in range(9):
        for n in (1, 7, 33, 203):
            x = base[x_offset:x_offset + n]
            expected = bits(reference.fp8_cast(x.cpu(), fmt, rounding, 5))
            for out_offset in (0, 1, 4, 8):
                for fill in (0x00, 0xFF):
                    buffer = torch.full((out_offset + n,), fill, dtype=torch.uint8, device=device)
                    out = buffer[out_offset:].view(fmt)
                    _C.fp8_cast(x, out, 0 if rounding == "nearest" else 1, 5, False)
                    assert torch.equal(bits(out), expected), (x_offset, n, out_offset, fill)


@pytest.mark.parametrize("dtype", INPUTS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_strided_rows_at_every_alignment(device, dtype, rounding):
    # An odd row stride puts consecutive rows at different 16-byte phases in x; more rows than a
    # CUDA grid has in y (65535).
    wide = (torch.randn(70_000, 21) * 100).to(device=device, dtype=dtype)
    for start, width in [(0, 20), (1, 17), (3, 8), (4, 16)]:
        x = wide[:, start:start + width]
        expected = reference.fp8_cast(x.cpu(), torch.float8_e5m2, rounding, 6)
        assert_bitwise_equal(fp8_cast(x, torch.float8_e5m2, rounding, seed=6), expected)


# ---- stochastic rounding ----------------------------------------------------------------------

def spread_values(device, dtype=torch.float32, shape=(67, 129)):
    """Values over the whole range: subnormals, normals, past the max, and non-finite ones."""
    x = torch.randn(shape) * torch.logspace(-10, 6, shape[-1])
    x[0, :4] = torch.tensor([math.inf, -math.inf, math.nan, 0.0])
    return x.to(device=device, dtype=dtype)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", INPUTS)
def test_stochastic_matches_reference_bitwise(device, fmt, dtype):
    x = spread_values(device, dtype)
    for seed in (0, 12345, -1, 2**64 + 7):
        expected = reference.fp8_cast(x.cpu(), fmt, "stochastic", seed)
        assert_bitwise_equal(fp8_cast(x, fmt, "stochastic", seed=seed), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stochastic_is_deterministic_per_seed(device, fmt):
    x = spread_values(device)
    first = fp8_cast(x, fmt, "stochastic", seed=3)
    assert_bitwise_equal(first, fp8_cast(x, fmt, "stochastic", seed=3))
    assert not torch.equal(bits(first), bits(fp8_cast(x, fmt, "stochastic", seed=4)))
    torch.manual_seed(11)
    drawn = fp8_cast(x, fmt, "stochastic")
    torch.manual_seed(11)
    assert_bitwise_equal(drawn, fp8_cast(x, fmt, "stochastic"))


def test_stochastic_same_result_for_any_thread_count():
    x = spread_values("cpu", shape=(300, 1000))
    first = fp8_cast(x, torch.float8_e4m3fn, "stochastic", seed=9), fp8_cast(x, torch.float8_e5m2, transpose=True)
    threads = lmkernels.num_threads()
    try:
        for n in (1, 3, threads):
            lmkernels.set_num_threads(n)
            assert_bitwise_equal(first[0], fp8_cast(x, torch.float8_e4m3fn, "stochastic", seed=9))
            assert_bitwise_equal(first[1], fp8_cast(x, torch.float8_e5m2, transpose=True))
    finally:
        lmkernels.set_num_threads(threads)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value", [0.3, 1.1, 100.7, 3e-3, -2e-5])
def test_stochastic_is_unbiased_and_only_hits_the_two_neighbours(device, fmt, value):
    n = 200_000
    x = torch.full((n,), value, device=device)
    y = fp8_cast(x, fmt, "stochastic", seed=21).float().cpu()
    below = torch_cast(torch.tensor([value]), fmt).float().item()
    neighbours = torch.unique(y).tolist()
    assert len(neighbours) == 2, neighbours
    lower, upper = neighbours
    assert lower <= value <= upper and below in neighbours
    # The mean of n Bernoulli draws between the neighbours: within 5 standard deviations of value.
    p = (value - lower) / (upper - lower)
    sigma = (upper - lower) * math.sqrt(p * (1 - p) / n)
    assert abs(y.double().mean().item() - value) < 5 * sigma


# ---- transpose --------------------------------------------------------------------------------

# (130, 2100) and (64, 4104): more columns than the CPU kernel's 2048-column bands, ragged and whole
# 64-row bands (the latter written with streaming stores).
@pytest.mark.parametrize("shape", [(1, 1), (64, 64), (100, 37), (3, 1000), (1030, 5), (130, 2100), (64, 4104)])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_transpose_equals_cast_then_transpose(device, shape, rounding):
    x = torch.randn(shape, device=device) * 50
    for fmt in FORMATS:
        out = fp8_cast(x, fmt, rounding, seed=8, transpose=True)
        assert out.shape == (shape[1], shape[0]) and out.is_contiguous()
        assert_bitwise_equal(out, fp8_cast(x, fmt, rounding, seed=8).t())
    strided = torch.randn(shape[0], shape[1] + 3, device=device)[:, 1:-2]
    assert_bitwise_equal(fp8_cast(strided, FORMATS[0], transpose=True), torch_cast(strided.cpu(), FORMATS[0]).t())
    assert_bitwise_equal(fp8_cast(x[:0], FORMATS[0], transpose=True), x[:0].t().to(FORMATS[0]))


@pytest.mark.parametrize("dtype", INPUTS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_transpose_whole_and_partial_tiles(device, dtype, rounding):
    # Sizes and strides that are multiples of 4 (whole 4-element groups) or not, whole and partial
    # 64 x 64 tiles, rows at a stride and contiguous.
    base = (torch.randn(200, 264) * 100).to(device=device, dtype=dtype)
    for rows, cols, start in [(128, 192, 0), (68, 132, 0), (200, 260, 4), (130, 70, 1), (67, 129, 0)]:
        for x in (base[:rows, start:start + cols], base[:rows, start:start + cols].contiguous()):
            expected = reference.fp8_cast(x.cpu(), torch.float8_e4m3fn, rounding, 2, transpose=True)
            assert_bitwise_equal(fp8_cast(x, torch.float8_e4m3fn, rounding, seed=2, transpose=True), expected)


def test_transpose_more_row_tiles_than_a_grid(device):
    # 65535 row tiles is the most a CUDA grid has in y; the rest are looped over.
    x = (torch.randn(65_537 * 64 + 4, 4) * 100).to(device=device, dtype=torch.bfloat16)
    expected = fp8_cast(x, torch.float8_e4m3fn).t()
    assert_bitwise_equal(fp8_cast(x, torch.float8_e4m3fn, transpose=True), expected)


# ---- autograd, compile, opcheck ---------------------------------------------------------------

@pytest.mark.parametrize("transpose", [False, True])
def test_straight_through_gradient(device, transpose):
    x = torch.randn(5, 6, device=device, dtype=torch.bfloat16, requires_grad=True)
    y = fp8_cast(x, torch.float8_e4m3fn, transpose=transpose)
    weight = torch.randn(y.shape, device=device)
    (y.float() * weight).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    expected = weight.t() if transpose else weight
    torch.testing.assert_close(x.grad, expected.to(torch.float8_e4m3fn).to(torch.bfloat16))


def test_compiles_fullgraph(device):
    x = torch.randn(32, 48, device=device)

    def fn(x):
        seeded = fp8_cast(x * 2, torch.float8_e5m2, "stochastic", seed=5, transpose=True)
        return seeded, fp8_cast(x, torch.float8_e4m3fn, "stochastic")  # a seed drawn inside the op

    compiled, drawn = torch.compile(fn, fullgraph=True)(x)
    assert_bitwise_equal(compiled, fn(x)[0])
    assert drawn.shape == x.shape and drawn.dtype == torch.float8_e4m3fn


def test_opcheck():
    x = torch.randn(6, 10)
    for args in [(x, torch.float8_e4m3fn, "nearest", None, False), (x, torch.float8_e5m2, "stochastic", 3, True)]:
        torch.library.opcheck(torch.ops.lmk.fp8_cast.default, args)


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("argument, call", [
    ("x", lambda: fp8_cast(torch.randn(3).double(), torch.float8_e4m3fn)),
    ("x", lambda: fp8_cast(torch.ones(3, dtype=torch.int32), torch.float8_e4m3fn)),
    ("x", lambda: fp8_cast(np.ones(3, dtype=np.float32), torch.float8_e4m3fn)),
    ("dtype", lambda: fp8_cast(torch.randn(3), torch.float16)),
    ("dtype", lambda: fp8_cast(torch.randn(3), "float8_e4m3fn")),
    ("seed", lambda: fp8_cast(torch.randn(3), torch.float8_e4m3fn, "stochastic", seed=1.5)),
    ("seed", lambda: fp8_cast(torch.randn(3), torch.float8_e4m3fn, "stochastic", seed=True)),
])
def test_wrong_type_raises_type_error(argument, call):
    with pytest.raises(TypeError, match=argument):
        call()


@pytest.mark.parametrize("argument, call", [
    ("rounding", lambda: fp8_cast(torch.randn(3), torch.float8_e4m3fn, "up")),
    ("x", lambda: fp8_cast(torch.randn(3), torch.float8_e4m3fn, transpose=True)),
    ("x", lambda: fp8_cast(torch.randn(2, 3, 4), torch.float8_e4m3fn, transpose=True)),
    ("x", lambda: fp8_cast(torch.randn(4, 5).t(), torch.float8_e4m3fn)),
    ("x", lambda: fp8_cast(torch.randn(4, 6, 5)[:, ::2], torch.float8_e4m3fn)),
])
def test_wrong_value_raises_value_error(argument, call):
    with pytest.raises(ValueError, match=argument):
        call()


def test_native_checks_outputs_and_devices():
    x = torch.randn(4, 6)
    with pytest.raises(TypeError, match="out"):
        _C.fp8_cast(x, torch.empty(4, 6, dtype=torch.uint8), 0, 0, False)
    with pytest.raises(ValueError, match="out: expected size 4"):
        _C.fp8_cast(x, torch.empty(6, 6, dtype=torch.float8_e4m3fn), 0, 0, True)
    with pytest.raises(ValueError, match="out: expected a contiguous"):
        _C.fp8_cast(x, torch.empty(6, 4, dtype=torch.float8_e4m3fn).t(), 0, 0, False)
    with pytest.raises(ValueError, match="rounding"):
        _C.fp8_cast(x, torch.empty(4, 6, dtype=torch.float8_e4m3fn), 2, 0, False)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="out: expected the device of x"):
            _C.fp8_cast(x, torch.empty(4, 6, dtype=torch.float8_e4m3fn, device="cuda"), 0, 0, False)


@pytest.mark.parametrize("transpose", [False, True])
def test_outputs_in_reused_memory_are_overwritten_entirely(transpose, poison_memory_cache):
    # A 32 MiB fp8 output comes from the memory cache, uninitialised.
    x = torch.randn(4096, 8192, dtype=torch.bfloat16) * 100
    poisoned = poison_memory_cache(32 << 20)
    out = fp8_cast(x, torch.float8_e4m3fn, transpose=transpose)
    assert out.data_ptr() in poisoned
    assert_bitwise_equal(out, torch_cast(x.t() if transpose else x, torch.float8_e4m3fn))
