"""lmk::embedding_bag against the reference: values, gradients, determinism, compile, bad input."""

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import lmkernels
from lmkernels import _C, reference
from lmkernels.ops import embedding_bag
from lmkernels.ops._native import dl, error_flag

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
             torch.float16: dict(rtol=2e-3, atol=2e-3)}


def make_bags(bag_sizes, rows, index_dtype=torch.int64, device="cpu"):
    offsets = torch.tensor([0] + list(np.cumsum(bag_sizes, dtype=np.int64)), dtype=index_dtype, device=device)
    indices = torch.randint(0, rows, (int(offsets[-1]),), dtype=index_dtype, device=device)
    return indices, offsets


@st.composite
def problems(draw):
    rows = draw(st.integers(1, 40))
    dim = draw(st.sampled_from([0, 1, 3, 8, 17, 64, 130]))
    bag_sizes = draw(st.lists(st.integers(0, 12), min_size=0, max_size=9))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    index_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    mode = draw(st.sampled_from(["sum", "mean"]))
    weighted = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return rows, dim, bag_sizes, dtype, index_dtype, mode, weighted, seed


def build(problem, device="cpu"):
    rows, dim, bag_sizes, dtype, index_dtype, mode, weighted, seed = problem
    torch.manual_seed(seed)
    table = torch.randn(rows, dim, device=device).to(dtype)
    indices, offsets = make_bags(bag_sizes, rows, index_dtype, device)
    weights = torch.rand(indices.numel(), device=device).to(dtype) if weighted else None
    return table, indices, offsets, weights, mode


def check_forward(problem, device="cpu"):
    table, indices, offsets, weights, mode = build(problem, device)
    ours = embedding_bag(table, indices, offsets, weights, mode)
    expected = reference.embedding_bag(table, indices, offsets, weights, mode)
    assert ours.dtype == table.dtype and ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, **TOLERANCE[table.dtype])


def check_gradients(problem, sparse, device="cpu"):
    table, indices, offsets, weights, mode = build(problem, device)
    table.requires_grad_()
    inputs = (table,) if weights is None else (table, weights.requires_grad_())
    ours = embedding_bag(table, indices, offsets, weights, mode, sparse=sparse)
    upstream = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, inputs, upstream)
    expected = torch.autograd.grad(reference.embedding_bag(table, indices, offsets, weights, mode), inputs, upstream,
                                   materialize_grads=True)
    if sparse:
        assert grads[0].is_sparse
        touched = torch.unique(indices)
        assert torch.equal(grads[0].coalesce().indices()[0], touched)
    tolerance = TOLERANCE[table.dtype]
    torch.testing.assert_close(grads[0].to_dense(), expected[0], **tolerance)
    if weights is not None:
        torch.testing.assert_close(grads[1], expected[1], **{k: v * 4 for k, v in tolerance.items()})


@settings(max_examples=150, deadline=None)
@given(problems())
def test_forward_matches_reference(problem):
    check_forward(problem)


@settings(max_examples=100, deadline=None)
@given(problems(), st.booleans())
def test_gradients_match_reference(problem, sparse):
    check_gradients(problem, sparse)


# Fixed problems, run on every device (hypothesis above covers the CPU broadly):
# (rows, dim, bag sizes, dtype, index dtype, mode, weighted, seed)
FIXED_PROBLEMS = [
    (40, 130, [3, 0, 12, 1], torch.float32, torch.int64, "sum", False, 1),
    (7, 17, [5, 5, 0, 9], torch.bfloat16, torch.int32, "mean", True, 2),
    (300, 64, [50] * 20, torch.float16, torch.int64, "sum", True, 3),
    (3, 1, [0, 0, 4], torch.float32, torch.int32, "mean", False, 4),
    (25, 0, [2, 3], torch.float32, torch.int64, "sum", True, 5),
    (1000, 1024, [40] * 8, torch.bfloat16, torch.int64, "sum", False, 6),
]


@pytest.mark.parametrize("problem", FIXED_PROBLEMS)
@pytest.mark.parametrize("sparse", [False, True])
def test_fixed_problems_on_every_device(device, problem, sparse):
    check_forward(problem, device)
    check_gradients(problem, sparse, device)


def test_sum_of_plain_fp32_bags_equals_torch_bitwise(device):
    table = torch.randn(1000, 96, device=device)
    indices, offsets = make_bags([50] * 64, 1000, device=device)
    expected = torch.nn.functional.embedding_bag(indices, table, offsets[:-1], mode="sum")
    assert torch.equal(embedding_bag(table, indices, offsets), expected)


def test_empty_bags_give_zeros(device):
    table = torch.randn(10, 4, device=device)
    indices, offsets = make_bags([0, 3, 0, 0], 10, device=device)
    for mode in ("sum", "mean"):
        out = embedding_bag(table, indices, offsets, mode=mode)
        assert torch.equal(out[[0, 2, 3]], torch.zeros(3, 4, device=device))


def test_no_bags(device):
    out = embedding_bag(torch.randn(5, 3, device=device), torch.zeros(0, dtype=torch.int64, device=device),
                        torch.zeros(1, dtype=torch.int64, device=device))
    assert out.shape == (0, 3)


def test_strided_table_rows_are_read_correctly(device):
    wide = torch.randn(50, 40, device=device)
    table = wide[:, 5:21]  # rows 40 elements apart, each row contiguous
    indices, offsets = make_bags([7, 0, 9], 50, device=device)
    torch.testing.assert_close(embedding_bag(table, indices, offsets), reference.embedding_bag(table, indices, offsets))
    transposed = torch.randn(16, 50, device=device).t()  # no unit stride in the last dimension: made contiguous
    torch.testing.assert_close(embedding_bag(transposed, indices, offsets),
                               reference.embedding_bag(transposed, indices, offsets))


def heavy_duplicates(device="cpu", dtype=torch.float32):
    table = torch.randn(64, 257, device=device, dtype=dtype, requires_grad=True)
    indices = (torch.randint(0, 8, (4000,), device=device) ** 2)  # few rows, each hit hundreds of times
    offsets = torch.arange(0, 4001, 40, device=device)
    weights = torch.rand(4000, device=device, dtype=dtype, requires_grad=True)
    return table, indices, offsets, weights


def run_fwd_bwd(table, indices, offsets, weights, mode):
    out = embedding_bag(table, indices, offsets, weights, mode)
    grads = torch.autograd.grad(out, (table, weights), torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out))
    return out, *grads


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_deterministic(device, mode, dtype):
    problem = heavy_duplicates(device, dtype)
    first = run_fwd_bwd(*problem, mode)
    for _ in range(3):
        for a, b in zip(first, run_fwd_bwd(*problem, mode)):
            assert torch.equal(a, b)


def test_same_result_for_any_thread_count():
    problem = heavy_duplicates()
    threads = lmkernels.num_threads()
    try:
        lmkernels.set_num_threads(1)
        single = run_fwd_bwd(*problem, "sum")
        lmkernels.set_num_threads(3)
        several = run_fwd_bwd(*problem, "sum")
    finally:
        lmkernels.set_num_threads(threads)
    for a, b in zip(single, several):
        assert torch.equal(a, b)


def test_concurrent_calls_from_python_threads():
    from concurrent.futures import ThreadPoolExecutor

    table, indices, offsets, _ = heavy_duplicates()
    table = table.detach()
    expected = embedding_bag(table, indices, offsets)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: embedding_bag(table, indices, offsets), range(16)))
    assert all(torch.equal(r, expected) for r in results)


@pytest.mark.parametrize("sparse", [False, True])
def test_compiles_fullgraph_with_backward(device, sparse):
    table = torch.randn(30, 8, device=device, requires_grad=True)
    weights = torch.rand(12, device=device, requires_grad=True)
    indices, offsets = make_bags([5, 0, 7], 30, device=device)

    def loss(table, weights):
        return (embedding_bag(table, indices, offsets, weights, "mean", sparse) ** 2).sum()

    compiled = torch.compile(loss, fullgraph=True)
    grads = torch.autograd.grad(compiled(table, weights), (table, weights))
    expected = torch.autograd.grad(loss(table, weights), (table, weights))
    assert grads[0].is_sparse == sparse
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a.to_dense(), b.to_dense())


# 16-bit rows are read as exact fp32 values, by F16C's conversion for fp16 where the CPU has it and
# by the portable decoding elsewhere, and each column is summed in bag order in fp32: plain sums
# equal the sequential fp32 sum bit for bit, whichever path ran. 149 columns: two 64-column passes,
# a 16-column pass and five scalar columns.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_sums_equal_the_sequential_fp32_sum_bitwise(dtype):
    torch.manual_seed(5)
    table = (torch.randn(500, 149) * 1000).to(dtype)
    table[3, :8] = torch.tensor([6e-8, -6e-8, 1e-5, 65504, -65504, float("inf"), 0.0, -0.0]).to(dtype)
    indices, offsets = make_bags([0, 1, 7, 50, 3], 500)
    indices[:1] = 3  # the bag of one: the subnormal, extreme and signed-zero values as they are
    expected = torch.zeros(5, 149)
    for bag in range(5):
        for row in indices[offsets[bag]:offsets[bag + 1]]:
            expected[bag] += table[row].float()
    assert torch.equal(embedding_bag(table, indices, offsets), expected.to(dtype))


# fp16 outputs are rounded from the fp32 sums as torch rounds them, by the vectorised conversion:
# ties to even (also at the smallest subnormal, through the mean), overflow to inf from 65520, zeros,
# and the NaN of inf + -inf with the sign x86 gives it. 40 columns: two 16-column units and eight
# scalar columns.
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_fp16_outputs_round_as_torch_rounds(mode):
    torch.manual_seed(7)
    first = [2048, 2048, 2050, 65504, 65504, 65504, float("inf"), 2**-24, 3 * 2**-24, -2048, 1, -0.0]
    second = [1, 3, 1, 8, 16, 65504, float("-inf"), 0, 0, -3, 2**-11, -0.0]
    table = (torch.randn(2, 40) * 3000).to(torch.float16)
    table[0, :12], table[1, :12] = torch.tensor(first), torch.tensor(second)
    indices, offsets = torch.tensor([0, 1]), torch.tensor([0, 2])
    expected = torch.zeros(40) + table[0].float() + table[1].float()  # each column summed from +0
    if mode == "mean":
        expected = expected / 2
    result = embedding_bag(table, indices, offsets, mode=mode)
    assert torch.equal(result.view(torch.int16), expected.to(torch.float16).view(torch.int16)[None])


# Outputs larger than a last-level cache (over 32 MiB) are faulted in up front and written with
# streaming stores where their rows are 16-byte aligned; smaller outputs with plain stores. The
# values must not depend on the path: large results are compared bitwise with the same values
# computed into small outputs.
LARGE_ROWS = {torch.float32: 8400, torch.bfloat16: 16800, torch.float16: 16800}  # x 1024 columns: 34.4 MB


@pytest.mark.parametrize("dtype, dim", [(torch.float32, 1024), (torch.bfloat16, 1024), (torch.float16, 1024),
                                        (torch.float32, 1023)])  # 1023: rows not 16-byte aligned, plain stores
@pytest.mark.parametrize("mode, weighted", [("sum", False), ("mean", True)])
def test_large_table_gradient_equals_small_output_bitwise(dtype, dim, mode, weighted):
    rows = LARGE_ROWS[dtype]
    torch.manual_seed(7)
    indices, offsets = make_bags([20] * 64, rows)
    indices[:40] = indices[40:80]  # duplicates: rows gathered from several bags
    weights = torch.rand(indices.numel()).to(dtype) if weighted else None
    grad_out = torch.randn(64, dim).to(dtype)
    dense = torch.ops.lmk.embedding_bag_backward_table(grad_out, indices, offsets, weights, mode, rows)
    touched, values = torch.ops.lmk.embedding_bag_backward_rows(grad_out, indices, offsets, weights, mode, rows)
    assert dense.numel() * dense.element_size() > 32 * 2**20 > values.numel() * values.element_size()
    assert torch.equal(dense[touched], values)
    untouched = torch.ones(rows, dtype=torch.bool)
    untouched[touched] = False
    assert not dense[untouched].any()


# The table gradient gathers upstream-gradient rows from packed column blocks when the upstream
# gradient is larger than 1 MiB and gathered at least once per row on average (the budget in
# packed_block_columns), from whole rows otherwise. Columns are independent, so the same gradient
# computed a column slice at a time (each slice small: whole rows) must agree bit for bit; 144
# columns leave a partial last block (32-column blocks for fp32: 4 x 32 + 16; 64 for 16-bit: 2 x 64 + 16).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode, weighted", [("sum", False), ("mean", True), ("sum", True)])
def test_packed_table_gradient_equals_whole_row_gradient_bitwise(dtype, mode, weighted):
    rows, num_bags, dim = 300, 4096, 144
    torch.manual_seed(11)
    indices, offsets = make_bags(torch.randint(0, 4, (num_bags,)).tolist(), rows)
    weights = torch.rand(indices.numel()).to(dtype) if weighted else None
    grad_out = torch.randn(num_bags, dim).to(dtype)
    assert grad_out.numel() * grad_out.element_size() > 2**20 and indices.numel() >= num_bags
    whole = torch.ops.lmk.embedding_bag_backward_table(grad_out, indices, offsets, weights, mode, rows)
    slices = [torch.ops.lmk.embedding_bag_backward_table(grad_out[:, c:c + 16].contiguous(), indices, offsets,
                                                         weights, mode, rows) for c in range(0, dim, 16)]
    assert torch.equal(whole, torch.cat(slices, dim=1))
    expected = torch.autograd.grad(reference.embedding_bag(table := torch.zeros(rows, dim, dtype=dtype,
                                                                                requires_grad=True),
                                                           indices, offsets, weights, mode), table, grad_out)[0]
    torch.testing.assert_close(whole, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_forward_output_equals_small_outputs_bitwise(dtype):
    table = torch.randn(500, 1024).to(dtype)
    indices, offsets = make_bags([3] * LARGE_ROWS[dtype], 500)
    weights = torch.rand(indices.numel()).to(dtype)
    whole = embedding_bag(table, indices, offsets, weights)
    assert whole.numel() * whole.element_size() > 32 * 2**20
    half = offsets.numel() // 2
    first = embedding_bag(table, indices[:offsets[half]], offsets[:half + 1], weights[:offsets[half]])
    second = embedding_bag(table, indices[offsets[half]:], offsets[half:] - offsets[half], weights[offsets[half]:])
    assert torch.equal(whole, torch.cat([first, second]))


def test_opcheck():
    table = torch.randn(20, 6, requires_grad=True)
    indices, offsets = make_bags([3, 0, 4], 20)
    weights = torch.rand(7, requires_grad=True)
    torch.library.opcheck(torch.ops.lmk.embedding_bag.default, (table, indices, offsets, weights, "sum", False))


def test_native_function_accepts_numpy():
    table = np.random.default_rng(0).standard_normal((20, 5)).astype(np.float32)
    indices = np.array([1, 2, 3, 19, 0], dtype=np.int32)
    offsets = np.array([0, 2, 5], dtype=np.int32)
    out = np.empty((2, 5), dtype=np.float32)
    _C.embedding_bag_forward(table, indices, offsets, None, 0, out)
    np.testing.assert_allclose(out, np.stack([table[[1, 2]].sum(0), table[[3, 19, 0]].sum(0)]), rtol=1e-6)


# ---- bad input --------------------------------------------------------------------------------

def valid():
    table = torch.randn(10, 4)
    indices, offsets = make_bags([2, 3], 10)
    return table, indices, offsets


@pytest.mark.parametrize("bad_index", [10, 1000, -1])
def test_index_out_of_range_raises_index_error(device, bad_index):
    # On CUDA the kernels flag the index and the host raises after the launch.
    table, indices, offsets = valid()
    indices[3] = bad_index
    table, indices, offsets, grad = (t.to(device) for t in (table, indices, offsets, torch.ones(2, 4)))
    with pytest.raises(IndexError, match="indices"):
        embedding_bag(table, indices, offsets)
    with pytest.raises(IndexError, match="indices"):
        torch.ops.lmk.embedding_bag_backward_table(grad, indices, offsets, None, "sum", 10)
    with pytest.raises(IndexError, match="indices"):
        torch.ops.lmk.embedding_bag_backward_weights(grad, table, indices, offsets, "sum")


@pytest.mark.parametrize("offsets, message", [
    ([-1, 2, 5], "offsets\\[0\\] == 0"),
    ([0, 4, 2, 5], "non-decreasing"),
    ([0, 2, 4], "last offset"),
    ([0, 2, 9], "last offset"),
    ([], "offsets"),
])
def test_malformed_offsets_raise_value_error(device, offsets, message):
    table, indices, _ = valid()
    with pytest.raises(ValueError, match=message):
        embedding_bag(table.to(device), indices.to(device), torch.tensor(offsets, dtype=torch.int64, device=device))


def test_several_faults_raise_what_the_cpu_checks_first_on_every_device(device):
    table, indices, _ = valid()
    indices[3] = 10
    table, indices, offsets = table.to(device), indices.to(device), torch.tensor([0, 4, 2, 5], device=device)
    with pytest.raises(ValueError, match="non-decreasing"):  # the forward checks the offsets first
        embedding_bag(table, indices, offsets)
    with pytest.raises(IndexError, match="indices"):  # the backward sorts by row first, which checks the indices
        torch.ops.lmk.embedding_bag_backward_table(torch.ones(3, 4, device=device), indices, offsets, None, "sum", 10)


@pytest.mark.parametrize("argument, make", [
    ("indices", lambda t, i, o: (t, i.float(), o, None)),
    ("table", lambda t, i, o: (t.to(torch.int32), i, o, None)),
    ("table", lambda t, i, o: (t.double(), i, o, None)),
    ("per_sample_weights", lambda t, i, o: (t, i, o, torch.rand(5, dtype=torch.float64))),
    ("table", lambda t, i, o: (t.numpy(), i, o, None)),
])
def test_wrong_dtype_or_type_raises_type_error(argument, make):
    with pytest.raises(TypeError, match=argument):
        embedding_bag(*make(*valid()))


@pytest.mark.parametrize("argument, make", [
    ("table", lambda t, i, o: (t[0], i, o, None)),
    ("indices", lambda t, i, o: (t, i.view(5, 1), o, None)),
    ("per_sample_weights", lambda t, i, o: (t, i, o, torch.rand(4))),
    ("indices", lambda t, i, o: (t, i.to("meta"), o, None)),
    ("offsets", lambda t, i, o: (t, i, o.to("meta"), None)),
    ("per_sample_weights", lambda t, i, o: (t, i, o, torch.rand(5, device="meta"))),
])
def test_wrong_shape_or_device_raises_value_error(argument, make):
    with pytest.raises(ValueError, match=argument):
        embedding_bag(*make(*valid()))


def test_bad_mode_raises_value_error():
    with pytest.raises(ValueError, match="mode"):
        embedding_bag(*valid(), mode="max")


# The native backward entry points check what the op layer computes for them, for callers of _C.

def backward_arguments():
    indices = torch.tensor([3, 1, 3, 0])
    offsets = torch.tensor([0, 2, 4])
    positions = torch.tensor([3, 1, 0, 2])  # sorted by index: rows 0, 1, 3, 3
    row_starts = torch.tensor([0, 1, 2, 2, 4])
    return torch.ones(2, 5), indices, offsets, positions, row_starts, torch.empty(4, 5)


def test_native_backward_matches_reference():
    grad_out, indices, offsets, positions, row_starts, grad_table = backward_arguments()
    grad_out = torch.tensor([[1.0] * 5, [10.0] * 5])
    _C.embedding_bag_backward_table(grad_out, indices, offsets, None, 0, positions, row_starts, grad_table)
    assert grad_table[:, 0].tolist() == [10.0, 1.0, 0.0, 11.0]


@pytest.mark.parametrize("bad_position", [4, -1])
def test_native_backward_rejects_bad_positions(bad_position):
    grad_out, indices, offsets, positions, row_starts, grad_table = backward_arguments()
    positions[2] = bad_position
    with pytest.raises(IndexError, match="sorted_positions"):
        _C.embedding_bag_backward_table(grad_out, indices, offsets, None, 0, positions, row_starts, grad_table)


@pytest.mark.parametrize("starts", [[0, 1, 3, 2, 4], [-1, 1, 2, 2, 4], [0, 1, 2, 2, 5]])
def test_native_backward_rejects_bad_segment_starts(starts):
    grad_out, indices, offsets, positions, _, grad_table = backward_arguments()
    with pytest.raises(ValueError, match="segment_starts"):
        _C.embedding_bag_backward_table(grad_out, indices, offsets, None, 0, positions, torch.tensor(starts),
                                        grad_table)


def test_native_sort_positions_checks_its_arguments():
    indices = torch.tensor([2, 0, 2])
    positions, row_starts = torch.empty(3, dtype=torch.int64), torch.empty(4, dtype=torch.int64)
    _C.embedding_bag_sort_positions(indices, 3, positions, row_starts)
    assert positions.tolist() == [1, 0, 2] and row_starts.tolist() == [0, 1, 1, 3]
    with pytest.raises(ValueError, match="rows"):
        _C.embedding_bag_sort_positions(indices, -1, positions, row_starts)
    with pytest.raises(IndexError, match="indices"):
        _C.embedding_bag_sort_positions(indices, 2, positions, torch.empty(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="sorted_positions"):
        _C.embedding_bag_sort_positions(indices, 3, positions.int(), row_starts)
    # Outputs over the indices would change them after the range check (a heap corruption before).
    shared = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="sorted_positions: expected memory disjoint from indices"):
        _C.embedding_bag_sort_positions(shared, 2, shared, torch.empty(3, dtype=torch.int64))
    buffer = torch.zeros(8, dtype=torch.int64)
    with pytest.raises(ValueError, match="disjoint"):
        _C.embedding_bag_sort_positions(buffer[:5], 2, buffer[3:], buffer[:3])


# The table gradient's sort of positions by row: a counting sort on the CPU, on the GPU a radix sort
# of 1 to 4 passes (digits of up to 8 bits of the row) over tiles of 2048 positions. Both must give
# the stable order: positions of row 0 in increasing order, then row 1, ...
@pytest.mark.parametrize("rows, n", [(1, 5), (7, 5000), (300, 4500), (32000, 4097), (70000, 2100), (2**24 + 3, 3000),
                                     (5, 0)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_positions_are_sorted_stably_by_row(device, rows, n, index_dtype):
    ops = importlib.import_module("lmkernels.ops.embedding_bag")
    torch.manual_seed(n)
    indices = torch.randint(0, min(rows, 1000), (n,)) * (rows // min(rows, 1000))  # duplicates, spread over all digits
    indices[:3] = rows - 1
    indices = indices[torch.randperm(n)].to(index_dtype)
    flag = error_flag(indices.to(device))
    positions, row_starts = ops._positions_by_row(indices.to(device), rows, flag)
    keys = indices.numpy()
    assert np.array_equal(positions.cpu().numpy(), np.argsort(keys, kind="stable"))
    assert np.array_equal(row_starts.cpu().numpy(), np.searchsorted(np.sort(keys), np.arange(rows + 1)))
    if flag is not None:
        assert flag.item() == 0


@pytest.mark.parametrize("rows, dim, dtype, mode, weighted", [
    (70000, 16, torch.float32, "mean", True),    # 3 sort passes; 4 lanes per table row, 8 rows per warp
    (5000, 1024, torch.float32, "sum", False),   # 2 passes; a block of 256 threads per table row
    (5000, 512, torch.bfloat16, "sum", True),    # a block of 64 threads per table row
    (5000, 40, torch.float16, "mean", False),    # 5 packs of 8 values: 8 lanes per table row, 3 idle
])
def test_gradients_of_larger_tables(device, rows, dim, dtype, mode, weighted):
    torch.manual_seed(rows + dim)
    table = torch.randn(rows, dim, device=device).to(dtype).requires_grad_()
    indices, offsets = make_bags(torch.randint(0, 30, (300,)).tolist(), rows, device=device)
    indices[: indices.numel() // 4] = indices[-(indices.numel() // 4):].flip(0)  # rows hit from several bags
    weights = torch.rand(indices.numel(), device=device).to(dtype).requires_grad_() if weighted else None
    inputs = (table,) if weights is None else (table, weights)
    upstream = torch.randn(offsets.numel() - 1, dim, device=device).to(dtype)
    ours = torch.autograd.grad(embedding_bag(table, indices, offsets, weights, mode), inputs, upstream)
    expected = torch.autograd.grad(reference.embedding_bag(table, indices, offsets, weights, mode), inputs, upstream)
    torch.testing.assert_close(ours[0], expected[0], **TOLERANCE[dtype])
    if weighted:
        torch.testing.assert_close(ours[1], expected[1], **{k: v * 4 for k, v in TOLERANCE[dtype].items()})
    again = torch.autograd.grad(embedding_bag(table, indices, offsets, weights, mode), inputs, upstream)
    assert all(torch.equal(a, b) for a, b in zip(ours, again))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU sort's own arguments")
def test_native_cuda_sort_checks_its_arguments():
    indices = torch.tensor([2, 0, 2], device="cuda")
    positions = torch.empty(3, dtype=torch.int64, device="cuda")
    row_starts = torch.empty(4, dtype=torch.int64, device="cuda")
    workspace = torch.empty(_C.embedding_bag_sort_workspace_size(3), dtype=torch.int64, device="cuda")
    flag = error_flag(indices)
    stream = torch.cuda.current_stream().cuda_stream

    def sort(rows, starts=row_starts, work=workspace, flag=flag):
        _C.embedding_bag_sort_positions(dl(indices), rows, dl(positions), dl(starts), dl(work), dl(flag), stream)

    sort(3)
    assert positions.tolist() == [1, 0, 2] and row_starts.tolist() == [0, 1, 1, 3] and flag.item() == 0
    with pytest.raises(ValueError, match="workspace"):
        sort(3, work=None)
    with pytest.raises(ValueError, match="workspace"):
        sort(3, work=workspace[1:])
    shared = torch.empty(_C.embedding_bag_sort_workspace_size(3) + 4, dtype=torch.int64, device="cuda")
    with pytest.raises(ValueError, match="workspace: expected memory disjoint from row_starts"):
        sort(3, starts=shared[:4], work=shared[:_C.embedding_bag_sort_workspace_size(3)])
    with pytest.raises(ValueError, match="error_flag"):
        sort(3, flag=None)
    with pytest.raises(ValueError, match="rows"):
        sort(-1)
    with pytest.raises(ValueError, match="row_starts"):
        sort(2)
    sort(2, starts=row_starts[:3])
    assert flag.item() == _C.BAG_BAD_INDEX  # index 2 of a 2-row table: flagged, not raised


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_in_reused_memory_are_overwritten_entirely(dtype, poison_memory_cache):
    rows, dim, bags = 2048, 16384 // dtype.itemsize, 2048  # output and gradient: 32 MiB each, from the cache
    table = torch.randn(rows, dim).to(dtype).requires_grad_()
    indices = torch.randint(0, rows // 2, (bags * 3,))  # half the table's rows get no gradient
    offsets = torch.arange(0, bags * 3 + 1, 3)
    poisoned = poison_memory_cache(32 << 20, 32 << 20)
    out = embedding_bag(table, indices, offsets)
    grad = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, table, grad)
    expected_out = reference.embedding_bag(table, indices, offsets)
    (expected,) = torch.autograd.grad(expected_out, table, grad)
    torch.testing.assert_close(out, expected_out, **TOLERANCE[dtype])
    torch.testing.assert_close(ours, expected, **TOLERANCE[dtype])
    assert not ours[rows // 2:].any()
    assert {out.data_ptr(), ours.data_ptr()} == poisoned


def test_tables_found_valid_are_checked_again_after_a_write(device):
    # On CUDA indices and offsets the kernels found valid are not waited for again (the backward
    # reads the forward's), until written.
    table = torch.randn(10, 4, device=device, requires_grad=True)
    indices, offsets = torch.tensor([1, 2, 3, 9], device=device), torch.tensor([0, 2, 4], device=device)
    out = embedding_bag(table, indices, offsets)
    out.square().sum().backward()
    expected = torch.zeros(10, 4, device=device)
    expected[[1, 2, 3, 9]] = 2 * out.detach().repeat_interleave(2, dim=0)
    torch.testing.assert_close(table.grad, expected)
    indices[0] = 10
    with pytest.raises(IndexError, match="indices"):
        embedding_bag(table, indices, offsets)
    offsets[1] = 5
    with pytest.raises((ValueError, IndexError), match="offsets|indices"):
        embedding_bag(table, torch.tensor([1, 2, 3, 9], device=device), offsets)
