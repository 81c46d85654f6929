"""lmk::fp8_gemm against the float64 reference: shapes (empty, tiny, ragged, long K), format pairs,
out dtypes, alpha, bias; exact cases bitwise; the summation order with exact_order; the AMX and
Hopper kernels' bounds; determinism; NaN/inf; compile; opcheck; bad input."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import lmkernels
from lmkernels import reference
from lmkernels.ops import fp8_gemm
from lmkernels.ops.fp8_gemm import _SM90_ENV, _SM90_KERNELS

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
PAIRS = [(E4M3, E4M3), (E5M2, E4M3), (E4M3, E5M2)]
OUT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Unit roundoff of each output dtype, doubled for the reference's double -> fp32 -> 16-bit rounding.
OUT_EPS = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
FP16_SUBNORMAL = 2.0**-24


def random_fp8(rows, cols, dtype, device="cpu"):
    return (torch.randn(rows, cols) * 2).to(dtype).to(device)


def assert_within_fp32_accumulation_bound(out, a, b, alpha, bias):
    """|out - exact| within K+2 fp32 roundings of sum |alpha a b| + |bias|, plus the output rounding."""
    alpha32 = float(torch.tensor(alpha, dtype=torch.float32))
    exact = (a.double() @ b.double().T) * alpha32
    magnitude = (a.double().abs() @ b.double().abs().T) * abs(alpha32)
    if bias is not None:
        exact = exact + bias.double()
        magnitude = magnitude + bias.double().abs()
    fp32_error = (a.shape[1] + 2) * 2.0**-24 * magnitude
    eps = OUT_EPS[out.dtype]
    bound = fp32_error * (1 + eps) + eps * exact.abs() + FP16_SUBNORMAL
    error = (out.double().cpu() - exact.cpu()).abs()
    assert bool((error <= bound.cpu()).all()), f"max excess {(error - bound.cpu()).max().item()}"


@st.composite
def problems(draw):
    m = draw(st.sampled_from([0, 1, 2, 5, 17, 40, 97]))
    n = draw(st.sampled_from([0, 1, 3, 16, 31, 65]))
    k = draw(st.sampled_from([0, 1, 7, 16, 33, 130, 300]))
    a_dtype, b_dtype = draw(st.sampled_from(PAIRS))
    out_dtype = draw(st.sampled_from(OUT_DTYPES))
    alpha = draw(st.sampled_from([1.0, 0.5, -3.0, 0.1]))
    bias_kind = draw(st.sampled_from([None, "fp32", "out"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return m, n, k, a_dtype, b_dtype, out_dtype, alpha, bias_kind, seed


def arguments(problem):
    """(a, b, alpha, bias, out_dtype) of a drawn problem."""
    m, n, k, a_dtype, b_dtype, out_dtype, alpha, bias_kind, seed = problem
    torch.manual_seed(seed)
    a, b = random_fp8(m, k, a_dtype), random_fp8(n, k, b_dtype)
    bias = None if bias_kind is None else torch.randn(n).to(torch.float32 if bias_kind == "fp32" else out_dtype)
    return a, b, alpha, bias, out_dtype


@given(problems())
@settings(max_examples=80, deadline=None)
def test_matches_reference_within_fp32_accumulation_error(problem):
    a, b, alpha, bias, out_dtype = arguments(problem)
    m, n = a.shape[0], b.shape[0]
    out = fp8_gemm(a, b, alpha, bias, out_dtype)
    assert out.shape == (m, n) and out.dtype == out_dtype and out.is_contiguous()
    assert_within_fp32_accumulation_bound(out, a, b, alpha, bias)


@pytest.mark.parametrize("a_dtype, b_dtype", PAIRS)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_every_device_within_bound_for_long_k(device, a_dtype, b_dtype, out_dtype):
    a, b = random_fp8(37, 4100, a_dtype, device), random_fp8(45, 4100, b_dtype, device)
    bias = torch.randn(45, device=device)
    out = fp8_gemm(a, b, 0.25, bias, out_dtype)
    assert out.device == a.device
    assert_within_fp32_accumulation_bound(out, a, b, 0.25, bias)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("a_dtype, b_dtype", PAIRS)
def test_small_integers_are_exact(device, a_dtype, b_dtype, out_dtype):
    # |products| <= 16 and K <= 8: every partial sum is a small integer, exact in fp32 and in the output.
    a = torch.randint(-4, 5, (29, 8)).to(a_dtype).to(device)
    b = torch.randint(-4, 5, (18, 8)).to(b_dtype).to(device)
    bias = torch.randint(-8, 9, (18,)).to(out_dtype).to(device)
    for alpha in (1.0, 0.5, -2.0):
        expected = reference.fp8_gemm(a.cpu(), b.cpu(), alpha, bias.cpu(), out_dtype)
        assert torch.equal(fp8_gemm(a, b, alpha, bias, out_dtype).cpu(), expected)


@pytest.mark.parametrize("a_dtype, b_dtype", [(E4M3, E4M3), (E5M2, E4M3)])
def test_every_fp8_value_decodes_as_torch_does(device, a_dtype, b_dtype):
    # a holds all 256 bit patterns as a column; multiplying by b = [[1]] exposes the decoded values.
    a = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(a_dtype).reshape(256, 1)
    b = torch.ones(1, 1).to(b_dtype)
    out = fp8_gemm(a.to(device), b.to(device), out_dtype=torch.float32).cpu()[:, 0]
    expected = a.float()[:, 0]
    assert torch.equal(out.isnan(), expected.isnan())
    finite = ~expected.isnan()
    assert torch.equal(out[finite], expected[finite])  # -0 gives +0: the sum starts at +0


@pytest.mark.parametrize("a_dtype", [E4M3, E5M2])
def test_every_fp8_value_decodes_exactly_in_long_rows(a_dtype):
    # Rows of K = 45 (a 32-byte block and a tail: the CPU decodes blocks with vector arithmetic and
    # tails through a table): bit pattern r sits at column r % 45 of row r, zeros elsewhere, and
    # b is all ones, so out[r] is pattern r's value (NaN and inf included, as nothing multiplies 0).
    patterns = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    a = torch.zeros(256, 45, dtype=torch.uint8)
    a[torch.arange(256), torch.arange(256) % 45] = patterns
    a = a.view(a_dtype)
    b = torch.ones(1, 45).to(E4M3)
    out = fp8_gemm(a, b, out_dtype=torch.float32)[:, 0]
    expected = patterns.view(a_dtype).float()
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out[~expected.isnan()], expected[~expected.isnan()] + 0.0)  # -0 sums to +0


@given(problems())
@settings(max_examples=30, deadline=None)
def test_cpu_micro_kernels_agree_bitwise(problem):
    # In exact order, the AVX512_BF16 pair kernel (where the CPU has it) and the fp32 kernel sum alike.
    default = fp8_gemm(*arguments(problem), exact_order=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMK_FP8_GEMM_CPU", "fp32")
        assert torch.equal(fp8_gemm(*arguments(problem), exact_order=True), default)
        assert torch.equal(fp8_gemm(*arguments(problem)), default)  # and the variable rules out AMX


def test_cpu_micro_kernels_agree_bitwise_across_k_blocks_and_tiles():
    # K = 4100: three of the pair kernel's 2048-deep blocks (17 of the fp32 kernel's 256-deep ones),
    # a ragged last tile in both directions, each thread count taking the tiles in its own order.
    torch.manual_seed(3)
    a, b, bias = random_fp8(200, 4100, E4M3), random_fp8(130, 4100, E5M2), torch.randn(130)
    default = fp8_gemm(a, b, 0.7, bias, torch.float32, exact_order=True)
    previous = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(1)
        assert torch.equal(fp8_gemm(a, b, 0.7, bias, torch.float32, exact_order=True), default)
    finally:
        lmkernels.set_num_threads(previous)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMK_FP8_GEMM_CPU", "fp32")
        assert torch.equal(fp8_gemm(a, b, 0.7, bias, torch.float32, exact_order=True), default)


def test_summation_is_sequential_in_k(device):
    # 2^23 + 0.5 + 0.5 - 2^23 in increasing k: each + 0.5 is a tie rounded to the even 2^23, so the sum
    # is 0 (the exact sum is 1, and any other order that pairs the halves first gives 1).
    a = torch.tensor([[256.0, 0.5, 0.5, -256.0]]).to(E4M3).to(device)
    b = torch.tensor([[32768.0, 1.0, 1.0, 32768.0]]).to(E5M2).to(device)
    assert fp8_gemm(a, b, out_dtype=torch.float32, exact_order=True).item() == 0.0
    assert reference.fp8_gemm(a.cpu(), b.cpu(), out_dtype=torch.float32).item() == 1.0


needs_amx = pytest.mark.skipif(lmkernels.info()["fp8_gemm_cpu"] != "amx",
                               reason="needs a CPU with AMX-BF16 (Intel Sapphire Rapids and later; AMD CPUs have "
                                      "none): the tile kernel runs only there, and elsewhere every default call "
                                      "takes the sequential kernels, which the other tests cover")


def test_cpu_kernel_is_named():
    kernel = lmkernels.info()["fp8_gemm_cpu"]
    assert kernel in ("amx", "avx512_bf16", "fp32")
    assert lmkernels._C.fp8_gemm_cpu_kernel(exact_order=True) in ("avx512_bf16", "fp32")


@needs_amx
@pytest.mark.parametrize("a_dtype, b_dtype", PAIRS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (33, 65, 70), (300, 260, 2100), (130, 513, 4100)])
def test_amx_kernel_within_fp32_accumulation_bound(shape, a_dtype, b_dtype):
    # Ragged edges (rows, columns and K padded to 32), more than one 2048-deep K block, several
    # 128 x 256 tiles; within the same bound as the sequential sum, and not always bitwise equal to it
    # (a different order), which shows the tile kernel ran.
    m, n, k = shape
    a, b, bias = random_fp8(m, k, a_dtype), random_fp8(n, k, b_dtype), torch.randn(n)
    for out_dtype in OUT_DTYPES:
        out = fp8_gemm(a, b, 0.3, bias, out_dtype)
        assert_within_fp32_accumulation_bound(out, a, b, 0.3, bias)
    if k > 1000:
        assert not torch.equal(fp8_gemm(a, b, out_dtype=torch.float32),
                               fp8_gemm(a, b, out_dtype=torch.float32, exact_order=True))


@needs_amx
@pytest.mark.parametrize("a_dtype, b_dtype", PAIRS)
@pytest.mark.parametrize("m, transposed", [(520, False), (1100, False), (1100, True)])
def test_amx_row_strips_decoded_per_thread(m, transposed, a_dtype, b_dtype):
    # With at least 4 row strips per thread, each thread decodes its strips of A (128 rows at m = 520,
    # 256 at 1100 on one thread) itself; a ragged last strip, more than one K block, A stored transposed.
    a, b, bias = random_fp8(m, 2100, a_dtype), random_fp8(70, 2100, b_dtype), torch.randn(70)
    if transposed:
        a = a.t().contiguous().t()
    previous = lmkernels.num_threads()
    lmkernels.set_num_threads(1)
    try:
        out = fp8_gemm(a, b, 0.3, bias, torch.float32)
    finally:
        lmkernels.set_num_threads(previous)
    assert_within_fp32_accumulation_bound(out, a, b, 0.3, bias)
    assert torch.equal(out, fp8_gemm(a, b, 0.3, bias, torch.float32))  # any thread count: the same sums


@pytest.mark.parametrize("exact_order", [False, True])
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_every_finite_code_is_decoded_exactly(dtype, exact_order):
    # Every finite code against the identity, as A and as B (E4M3 with E5M2: E5M2 x E5M2 is refused):
    # each output is one value. Then NaN codes give NaN.
    finite = torch.arange(256, dtype=torch.uint8).view(dtype)
    finite = finite[finite.float().isfinite()]
    eye = torch.eye(len(finite)).to(E4M3)
    rows = fp8_gemm(finite[None], eye, out_dtype=torch.float32, exact_order=exact_order)[0]
    columns = fp8_gemm(eye, finite[None], out_dtype=torch.float32, exact_order=exact_order)[:, 0]
    assert torch.equal(rows, finite.float()) and torch.equal(columns, finite.float())
    nan = torch.arange(256, dtype=torch.uint8).view(dtype)
    nan = nan[nan.float().isnan()]
    assert fp8_gemm(nan[:, None], torch.ones(1, 1).to(E4M3), out_dtype=torch.float32,
                    exact_order=exact_order).isnan().all()


@needs_amx
def test_amx_kernel_as_accurate_as_the_sequential_sum():
    # Products spanning 2^-25 .. 2^17 with cancellation: the tile unit's errors are of the sequential
    # sum's size (measured: largest errors within a few percent of each other).
    torch.manual_seed(1)
    a = (torch.randn(64, 3000) * torch.exp2(torch.randint(-8, 8, (64, 3000)).float())).to(E4M3)
    b = (torch.randn(96, 3000) * torch.exp2(torch.randint(-14, 14, (96, 3000)).float())).to(E5M2)
    exact = a.double() @ b.double().T
    scale = a.double().abs() @ b.double().abs().T * 2.0**-24
    amx = ((fp8_gemm(a, b, out_dtype=torch.float32).double() - exact).abs() / scale).max().item()
    sequential = ((fp8_gemm(a, b, out_dtype=torch.float32, exact_order=True).double() - exact).abs() / scale).max()
    assert amx <= 2 * sequential.item() + 1


def test_zero_k_gives_bias_or_zeros(device):
    a, b = torch.empty(3, 0, dtype=E4M3, device=device), torch.empty(4, 0, dtype=E4M3, device=device)
    bias = torch.randn(4, device=device)
    assert torch.equal(fp8_gemm(a, b, 2.0, bias, torch.float32), bias.expand(3, 4))
    assert torch.equal(fp8_gemm(a, b, 2.0, None, torch.float32), torch.zeros(3, 4, device=device))


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA kernel at run time)")
needs_hopper = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
         and lmkernels.info()["hopper_kernels"]),
    reason="needs a compute capability 9.0 GPU and a build with the CUTLASS sm_90a kernels")


@needs_gpu
@pytest.mark.parametrize("shape", [(130, 77, 700), (256, 128, 1024)])  # portable-only, and Hopper-eligible
def test_cpu_and_cuda_agree_bitwise_in_exact_order(shape):
    m, n, k = shape
    a, b, bias = random_fp8(m, k, E4M3), random_fp8(n, k, E5M2), torch.randn(n)
    for out_dtype in OUT_DTYPES:
        cpu = fp8_gemm(a, b, 0.3, bias, out_dtype, exact_order=True)
        gpu = fp8_gemm(a.cuda(), b.cuda(), 0.3, bias.cuda(), out_dtype, exact_order=True)
        assert torch.equal(cpu, gpu.cpu())


def assert_within_tensor_core_bound(out, a, b, alpha, bias):
    """The Hopper kernel's sums: |out - exact| <= 2^-9 sum |alpha a b| + the output rounding (a
    transposed or misplaced operand misses this by a wide margin at K = 4096), and a relative
    Frobenius error below 1e-3 (a quarter of bf16's unit roundoff)."""
    exact = (a.double() @ b.double().T) * alpha + (0 if bias is None else bias.double())
    magnitude = (a.double().abs() @ b.double().abs().T) * abs(alpha)
    error = (out.double() - exact).abs()
    assert bool((error <= 2.0**-9 * magnitude + OUT_EPS[out.dtype] * exact.abs() + FP16_SUBNORMAL).all())
    if out.dtype == torch.float32:
        assert (torch.linalg.norm(out.double() - exact) / torch.linalg.norm(exact)).item() < 1e-3


# Hopper configurations: None runs the shape heuristic's choice, a name forces that configuration.
SM90_KERNELS = [None, *_SM90_KERNELS]


def force_sm90(monkeypatch, setting):
    """Hopper calls in this test run configuration ``setting`` (None: the heuristic's choice)."""
    if setting is None:
        monkeypatch.delenv(_SM90_ENV, raising=False)
    else:
        monkeypatch.setenv(_SM90_ENV, setting)


@needs_hopper
@pytest.mark.parametrize("kernel", SM90_KERNELS)
@pytest.mark.parametrize("a_dtype, b_dtype", PAIRS)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("m", [1, 200, 512])
def test_hopper_kernel_within_tensor_core_bound(monkeypatch, kernel, a_dtype, b_dtype, out_dtype, m):
    force_sm90(monkeypatch, kernel)
    a, b = random_fp8(m, 4096, a_dtype, "cuda"), random_fp8(384, 4096, b_dtype, "cuda")
    for alpha, bias in ((1.0, None), (0.125, torch.randn(384, device="cuda"))):
        out = fp8_gemm(a, b, alpha, bias, out_dtype)
        assert out.shape == (m, 384) and out.dtype == out_dtype
        assert_within_tensor_core_bound(out, a, b, alpha, bias)
        assert torch.equal(out, fp8_gemm(a, b, alpha, bias, out_dtype))  # deterministic
        if out_dtype == torch.float32:  # the tensor cores ran: their sums differ from the sequential ones
            assert not torch.equal(out, fp8_gemm(a, b, alpha, bias, out_dtype, exact_order=True))


@needs_hopper
@pytest.mark.parametrize("kernel", SM90_KERNELS)
@pytest.mark.parametrize("a_dtype, b_dtype", PAIRS)
def test_hopper_kernel_exact_on_small_integers(monkeypatch, kernel, a_dtype, b_dtype):
    # |products| <= 16, K = 64: every partial sum is an integer below 2^11, exact in any order and at
    # any tensor-core precision; a wrong layout or tile placement cannot hide here.
    force_sm90(monkeypatch, kernel)
    a = torch.randint(-4, 5, (300, 64)).to(a_dtype).cuda()
    b = torch.randint(-4, 5, (208, 64)).to(b_dtype).cuda()
    bias = torch.randint(-8, 9, (208,)).float().cuda()
    expected = reference.fp8_gemm(a.cpu(), b.cpu(), 2.0, bias.cpu(), torch.float32)
    assert torch.equal(fp8_gemm(a, b, 2.0, bias, torch.float32).cpu(), expected)


@needs_hopper
@pytest.mark.parametrize("kernel", SM90_KERNELS)
def test_hopper_kernel_takes_padded_rows_and_falls_back_when_unaligned(monkeypatch, kernel):
    force_sm90(monkeypatch, kernel)
    wide = random_fp8(96, 1024 + 32, E4M3, "cuda")
    a, b = wide[:, :1024], random_fp8(160, 1024, E4M3, "cuda")  # row stride 1056: a 16-byte multiple
    assert_within_tensor_core_bound(fp8_gemm(a, b, out_dtype=torch.float32), a, b, 1.0, None)
    # N = 100 and K = 1000 are not multiples of 16: the portable kernel, bitwise the CPU's.
    a, b = random_fp8(64, 1000, E4M3, "cuda"), random_fp8(100, 1000, E5M2, "cuda")
    assert torch.equal(fp8_gemm(a, b, 0.5).cpu(), fp8_gemm(a.cpu(), b.cpu(), 0.5))


@needs_hopper
@pytest.mark.parametrize("kernel", _SM90_KERNELS)
def test_hopper_kernel_swizzle_moves_tiles_not_bits(monkeypatch, kernel):
    # Several tiles along both modes, in counts that a swizzle of 8 does not divide: the scheduler
    # pads the grid with empty tiles. Which CTA computes a tile must not change a bit of it.
    a, b = random_fp8(1000, 512, E5M2, "cuda"), random_fp8(1040, 512, E4M3, "cuda")
    bias = torch.randn(1040, device="cuda")
    results = []
    for swizzle in (1, 2, 8):
        monkeypatch.setenv(_SM90_ENV, f"{kernel}:{swizzle}")
        results.append(fp8_gemm(a, b, 0.5, bias, torch.float32))
    assert_within_tensor_core_bound(results[0], a, b, 0.5, bias)
    assert all(torch.equal(r, results[0]) for r in results[1:])


@needs_hopper
def test_hopper_kernel_setting_is_checked(monkeypatch):
    a, b = random_fp8(64, 128, E4M3, "cuda"), random_fp8(64, 128, E4M3, "cuda")
    expected = fp8_gemm(a, b, out_dtype=torch.float32)
    for setting in ("auto", "auto:8", "", f"{_SM90_KERNELS[0]}:4"):
        monkeypatch.setenv(_SM90_ENV, setting)
        assert_within_tensor_core_bound(fp8_gemm(a, b, out_dtype=torch.float32), a, b, 1.0, None)
    for setting in ("256x256", "128x128:3", "auto:", "128x128x128"):
        monkeypatch.setenv(_SM90_ENV, setting)
        with pytest.raises(ValueError, match=f"LMK_FP8_GEMM_SM90: expected one of auto, .*got '{setting}'"):
            fp8_gemm(a, b, out_dtype=torch.float32)
    monkeypatch.delenv(_SM90_ENV)
    assert torch.equal(fp8_gemm(a, b, out_dtype=torch.float32), expected)


def test_same_result_for_any_thread_count():
    a, b, bias = random_fp8(250, 700, E4M3), random_fp8(190, 700, E4M3), torch.randn(190)
    first = fp8_gemm(a, b, 0.7, bias, torch.float32)
    threads = lmkernels.num_threads()
    try:
        for n in (1, 2, 3):
            lmkernels.set_num_threads(n)
            assert torch.equal(first, fp8_gemm(a, b, 0.7, bias, torch.float32))
    finally:
        lmkernels.set_num_threads(threads)


def test_concurrent_calls_from_python_threads_share_the_scratch_cache():
    from concurrent.futures import ThreadPoolExecutor

    # Decoded operands live in reused scratch blocks; calls of different sizes from several Python
    # threads at once must each get their own block.
    problems = [(random_fp8(m, k, E4M3), random_fp8(n, k, E5M2)) for m, n, k in
                [(300, 200, 640), (40, 90, 2000), (513, 64, 96), (7, 300, 1024)] * 3]
    expected = [fp8_gemm(a, b, out_dtype=torch.float32) for a, b in problems]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda ab: fp8_gemm(*ab, out_dtype=torch.float32), problems))
    assert all(torch.equal(r, e) for r, e in zip(results, expected))


def test_non_finite_inputs_propagate(device):
    a = torch.ones(3, 2)
    a[2, 0] = 0.0
    b = torch.ones(4, 2)
    b[1, 0] = float("inf")
    a8, b8 = a.to(E4M3), b.to(E5M2)
    a8.view(torch.uint8)[0, 1] = 0x7F  # E4M3 NaN (E4M3FN has no infinity)
    out = fp8_gemm(a8.to(device), b8.to(device), out_dtype=torch.float32).cpu()
    expected = reference.fp8_gemm(a8, b8, out_dtype=torch.float32)
    assert torch.equal(out.isnan(), expected.isnan()) and bool(out[0].isnan().all())
    assert out[1, 1] == float("inf") and bool(out[2, 1].isnan())  # inf * 1, and inf * 0
    finite = ~expected.isnan()
    assert torch.equal(out[finite], expected[finite])


def test_strided_operands(device):
    wide = random_fp8(20, 50, E4M3, device)
    a = wide[:, 5:45]  # row stride 50
    b = random_fp8(40, 13, E5M2, device).t()  # column-strided: read as it lies on the CPU, copied on CUDA
    assert torch.equal(fp8_gemm(a.t().contiguous().t(), b, out_dtype=torch.float32),
                       fp8_gemm(a.contiguous(), b.contiguous(), out_dtype=torch.float32))
    out = fp8_gemm(a, b, out_dtype=torch.float32)
    assert torch.equal(out, fp8_gemm(a.contiguous(), b.contiguous(), out_dtype=torch.float32))
    every_other = random_fp8(13, 80, E5M2, device)[:, ::2]  # no unit stride: copied everywhere
    assert torch.equal(fp8_gemm(a, every_other, out_dtype=torch.float32),
                       fp8_gemm(a, every_other.contiguous(), out_dtype=torch.float32))


@pytest.mark.parametrize("kernel", ["default", "exact_order", "fp32"])
@pytest.mark.parametrize("shape", [(5, 1, 3), (3, 7, 1), (33, 65, 70), (17, 31, 33), (64, 300, 2100)])
def test_transposed_operands_are_decoded_in_place(monkeypatch, kernel, shape):
    # a = v.t() and b = w.t() of row-major v [K, M] and w [K, N] (padded rows: slices of wider
    # tensors): every CPU kernel decodes them directly (masked loads at the ragged edges), bitwise as
    # from the contiguous copies, alone or together.
    m, n, k = shape
    if kernel == "fp32":
        monkeypatch.setenv("LMK_FP8_GEMM_CPU", "fp32")
    v = random_fp8(k, m + 5, E4M3)[:, 2:2 + m]
    w = random_fp8(k, n + 7, E5M2)[:, 3:3 + n]
    exact = kernel == "exact_order"
    expected = fp8_gemm(v.t().contiguous(), w.t().contiguous(), 0.5, None, torch.float32, exact_order=exact)
    for a, b in ((v.t(), w.t()), (v.t().contiguous(), w.t()), (v.t(), w.t().contiguous())):
        assert torch.equal(fp8_gemm(a, b, 0.5, None, torch.float32, exact_order=exact), expected)


def test_compiles_fullgraph(device):
    a, b = random_fp8(33, 70, E4M3, device), random_fp8(21, 70, E5M2, device)
    bias = torch.randn(21, device=device, dtype=torch.bfloat16)
    compiled = torch.compile(lambda a, b, bias: fp8_gemm(a, b, 1.5, bias), fullgraph=True)
    assert torch.equal(compiled(a, b, bias), fp8_gemm(a, b, 1.5, bias))


# test_schema compares inputs before and after the call with arithmetic that torch lacks for float8
# ("mul_cpu_reduced_float" not implemented); the input bytes are checked unchanged here instead.
OPCHECK_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def test_opcheck():
    a, b = random_fp8(9, 20, E4M3), random_fp8(7, 20, E5M2)
    a_bytes, b_bytes = a.view(torch.uint8).clone(), b.view(torch.uint8).clone()
    torch.library.opcheck(torch.ops.lmk.fp8_gemm.default, (a, b, 0.5, torch.randn(7), torch.float32),
                          test_utils=OPCHECK_UTILS)
    torch.library.opcheck(torch.ops.lmk.fp8_gemm.default, (a, b, 1.0, None, torch.bfloat16), test_utils=OPCHECK_UTILS)
    assert torch.equal(a.view(torch.uint8), a_bytes) and torch.equal(b.view(torch.uint8), b_bytes)


def test_backward_raises():
    a, b = random_fp8(3, 4, E4M3), random_fp8(2, 4, E4M3)
    bias = torch.randn(2, requires_grad=True)
    out = fp8_gemm(a, b, 1.0, bias, torch.float32)
    with pytest.raises(RuntimeError, match="fp8_gemm has no autograd"):
        out.sum().backward()


def _ops(m=3, n=2, k=4):
    return random_fp8(m, k, E4M3), random_fp8(n, k, E4M3)


@pytest.mark.parametrize("argument, call", [
    ("a", lambda: fp8_gemm(torch.randn(3, 4), _ops()[1])),
    ("b", lambda: fp8_gemm(_ops()[0], torch.randn(2, 4).to(torch.bfloat16))),
    ("a", lambda: fp8_gemm([[1.0]], _ops()[1])),
    ("alpha", lambda: fp8_gemm(*_ops(), alpha=torch.tensor(1.0))),
    ("out_dtype", lambda: fp8_gemm(*_ops(), out_dtype=torch.float64)),
    ("bias", lambda: fp8_gemm(*_ops(), bias=torch.randn(2).double(), out_dtype=torch.bfloat16)),
    ("bias", lambda: fp8_gemm(*_ops(), bias=torch.randn(2).half(), out_dtype=torch.bfloat16)),
])
def test_wrong_dtype_or_type_raises_type_error(argument, call):
    with pytest.raises(TypeError, match=argument):
        call()


@pytest.mark.parametrize("argument, call", [
    ("a, b: torch.float8_e5m2 x torch.float8_e5m2", lambda: fp8_gemm(random_fp8(3, 4, E5M2), random_fp8(2, 4, E5M2))),
    ("b: expected K = 4", lambda: fp8_gemm(random_fp8(3, 4, E4M3), random_fp8(2, 5, E4M3))),
    ("a", lambda: fp8_gemm(random_fp8(3, 4, E4M3)[0], random_fp8(2, 4, E4M3))),
    ("b", lambda: fp8_gemm(random_fp8(3, 4, E4M3), random_fp8(2, 4, E4M3)[None])),
    ("bias", lambda: fp8_gemm(*_ops(), bias=torch.randn(3))),
    ("bias", lambda: fp8_gemm(*_ops(), bias=torch.randn(2, 1))),
    ("bias", lambda: fp8_gemm(*_ops(), bias=torch.randn(2, device="meta"))),
    ("b", lambda: fp8_gemm(_ops()[0], _ops()[1].to("meta"))),
])
def test_wrong_shape_or_device_raises_value_error(argument, call):
    with pytest.raises(ValueError, match=argument):
        call()


def test_native_checks_raise_python_errors():
    from lmkernels import _C
    a, b = _ops()
    with pytest.raises(ValueError, match="float8_e5m2 x float8_e5m2"):
        _C.fp8_gemm(a.to(E5M2), b.to(E5M2), 1.0, None, torch.empty(3, 2))
    with pytest.raises(ValueError, match="b: expected K = 4"):
        _C.fp8_gemm(a, random_fp8(2, 5, E4M3), 1.0, None, torch.empty(3, 2))
    with pytest.raises(ValueError, match="b: expected unit stride in one dimension"):
        _C.fp8_gemm(a, random_fp8(4, 4, E4M3)[::2, ::2].t(), 1.0, None, torch.empty(3, 2))
    with pytest.raises(ValueError, match="a: expected unit stride in one dimension"):
        _C.fp8_gemm(random_fp8(8, 6, E4M3)[::2, ::2].t(), b, 1.0, None, torch.empty(3, 2))
    with pytest.raises(ValueError, match="out: expected size 2"):
        _C.fp8_gemm(a, b, 1.0, None, torch.empty(3, 3))
    with pytest.raises(TypeError, match="bias: expected dtype float32"):
        _C.fp8_gemm(a, b, 1.0, torch.ones(2, dtype=torch.float16), torch.empty(3, 2))
    with pytest.raises(TypeError, match="out: expected dtype"):
        _C.fp8_gemm(a, b, 1.0, None, torch.empty(3, 2, dtype=torch.int32))
