"""``lmk::embedding_bag``: sum or mean of table rows over CSR bags, with optional per-sample weights.

    out[b] = scale_b * sum_{i = offsets[b]}^{offsets[b+1]-1} w_i * table[indices[i]]

``scale_b`` is 1 for ``mode="sum"`` and ``1 / (offsets[b+1] - offsets[b])`` for ``mode="mean"``;
empty bags give zeros. ``offsets`` has ``num_bags + 1`` entries, starts at 0 and ends at
``len(indices)``. Values are float32, bfloat16 or float16 and accumulate in fp32.

Gradients: the table gradient sums ``scale * w_i * grad_out[bag(i)]`` into row ``indices[i]``,
deterministically (positions sorted stably by index, by a counting sort on the CPU and a radix sort
on the GPU, then one reduction per row in position order, no floating-point atomics);
with ``sparse=True`` it is a sparse COO tensor holding only the touched rows. The weight gradient
is ``scale * <grad_out[bag(i)], table[indices[i]]>``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmkernels.ops._native import (_C, TableCheck, call_op, define_autograd, define_op, dl, kernel_output,
                                   narrowed_offsets, stream_of)

_MODES = {"sum": 0, "mean": 1}


def embedding_bag(
    table: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    mode: str = "sum",
    sparse: bool = False,
) -> Tensor:
    """Reduce the rows ``table[indices]`` bag by bag; see the module docstring for the math.

    Args:
        table: [rows, dim] float32, bfloat16 or float16.
        indices: [N] int32 or int64, each in ``[0, rows)``.
        offsets: [num_bags + 1] int32 or int64 CSR offsets into ``indices``.
        per_sample_weights: optional [N], dtype of ``table``.
        mode: ``"sum"`` or ``"mean"``.
        sparse: return the table gradient as a sparse COO tensor of the touched rows.

    Returns:
        [num_bags, dim], dtype of ``table``.
    """
    for name, t in (("table", table), ("indices", indices), ("offsets", offsets)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if per_sample_weights is not None and not isinstance(per_sample_weights, Tensor):
        raise TypeError(f"per_sample_weights: expected a torch.Tensor or None, got {type(per_sample_weights).__name__}")
    if mode not in _MODES:
        raise ValueError(f"mode: expected 'sum' or 'mean', got {mode!r}")
    for name, t in (("indices", indices), ("offsets", offsets), ("per_sample_weights", per_sample_weights)):
        if t is not None and t.device != table.device:
            raise ValueError(f"{name}: expected the device of table ({table.device}), got {t.device}")
    return call_op("embedding_bag", table, indices, offsets, per_sample_weights, mode, bool(sparse))


def _prepare(table: Tensor, indices: Tensor, offsets: Tensor, weights: Tensor | None):
    """The tensors in the layouts the kernels take (offsets converted to the index dtype)."""
    if table.dim() == 2 and table.stride(-1) != 1:
        table = table.contiguous()
    indices = indices.contiguous()
    if offsets.dtype in (torch.int32, torch.int64) and indices.dtype in (torch.int32, torch.int64):
        offsets = narrowed_offsets(offsets, indices)
    offsets = offsets.contiguous()
    weights = None if weights is None else weights.contiguous()
    return table, indices, offsets, weights


def _tables_check(indices: Tensor, offsets: Tensor, rows: int, like: Tensor) -> TableCheck:
    """The kernels check the indices against the table's rows and the offsets against the indices.
    Tables found valid once (a forward's, for its backward) are not waited for again."""
    return TableCheck(((indices, (rows,)), (offsets, (indices.numel(),))), like)


def _raise_on_flag(check: TableCheck, rows: int, sorted_first: bool = False) -> None:
    """In the CPU kernels' order: offsets, then indices; after the sort by row, which checks the
    indices before anything reads the offsets, indices first."""
    def messages():
        offsets = (_C.BAG_BAD_OFFSETS, ValueError("offsets: expected offsets[0] == 0, non-decreasing offsets, and the "
                                                  "last offset == len(indices)"))
        indices = (_C.BAG_BAD_INDEX, IndexError(f"indices: an index is out of range for a table of {rows} rows"))
        return dict([indices, offsets] if sorted_first else [offsets, indices])

    check.raise_on_flag(messages)


def _embedding_bag(
    table: Tensor, index_table: Tensor, offset_table: Tensor, per_sample_weights: Tensor | None, mode: str, sparse: bool
) -> Tensor:
    table, indices, offsets, weights = _prepare(table, index_table, offset_table, per_sample_weights)
    if table.dim() != 2:
        raise ValueError(f"table: expected 2 dimensions, got shape {list(table.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets: expected a 1-D tensor of num_bags + 1 entries, got shape {list(offsets.shape)}")
    out = kernel_output((offsets.numel() - 1, table.shape[1]), table.dtype, table.device)
    check = _tables_check(index_table, offset_table, table.shape[0], table)
    _C.embedding_bag_forward(dl(table), dl(indices), dl(offsets), dl(weights), _MODES[mode], dl(out),
                             dl(check.flag), stream_of(table))
    _raise_on_flag(check, table.shape[0])
    return out


def _embedding_bag_fake(table, indices, offsets, per_sample_weights, mode, sparse):
    return table.new_empty((offsets.shape[0] - 1, table.shape[1]))


define_op("embedding_bag(Tensor table, Tensor indices, Tensor offsets, Tensor? per_sample_weights, str mode, "
          "bool sparse) -> Tensor", _embedding_bag, _embedding_bag_fake)


def _positions_by_row(indices: Tensor, rows: int, flag: Tensor | None) -> tuple[Tensor, Tensor]:
    """Positions sorted stably by index, and the start of each row's run in that order ([rows + 1]).

    A counting sort on the CPU (raising on a bad index), a radix sort on the GPU (flagging it)."""
    positions = torch.empty(indices.numel(), dtype=torch.int64, device=indices.device)
    row_starts = torch.empty(rows + 1, dtype=torch.int64, device=indices.device)
    if not indices.is_cuda:
        _C.embedding_bag_sort_positions(dl(indices), rows, dl(positions), dl(row_starts))
        return positions, row_starts
    workspace = torch.empty(_C.embedding_bag_sort_workspace_size(indices.numel()), dtype=torch.int64,
                            device=indices.device)
    _C.embedding_bag_sort_positions(dl(indices), rows, dl(positions), dl(row_starts), dl(workspace), dl(flag),
                                    stream_of(indices))
    return positions, row_starts


def _backward_table(
    grad_out: Tensor, index_table: Tensor, offset_table: Tensor, per_sample_weights: Tensor | None, mode: str, rows: int
) -> Tensor:
    grad_out, indices, offsets, weights = _prepare(grad_out, index_table, offset_table, per_sample_weights)
    check = _tables_check(index_table, offset_table, rows, grad_out)
    positions, row_starts = _positions_by_row(indices, rows, check.flag)
    grad_table = kernel_output((rows, grad_out.shape[1]), grad_out.dtype, grad_out.device)
    _C.embedding_bag_backward_table(dl(grad_out), dl(indices), dl(offsets), dl(weights), _MODES[mode],
                                    dl(positions), dl(row_starts), dl(grad_table), dl(check.flag), stream_of(grad_out))
    _raise_on_flag(check, rows, sorted_first=True)
    return grad_table


def _backward_table_fake(grad_out, indices, offsets, per_sample_weights, mode, rows):
    return grad_out.new_empty((rows, grad_out.shape[1]))


define_op("embedding_bag_backward_table(Tensor grad_out, Tensor indices, Tensor offsets, Tensor? per_sample_weights, "
          "str mode, SymInt rows) -> Tensor", _backward_table, _backward_table_fake)


def _backward_rows(
    grad_out: Tensor, index_table: Tensor, offset_table: Tensor, per_sample_weights: Tensor | None, mode: str, rows: int
) -> tuple[Tensor, Tensor]:
    grad_out, indices, offsets, weights = _prepare(grad_out, index_table, offset_table, per_sample_weights)
    check = _tables_check(index_table, offset_table, rows, grad_out)
    positions, row_starts = _positions_by_row(indices, rows, check.flag)
    _raise_on_flag(check, rows)  # the sizes below read the sort's result
    touched = torch.nonzero(row_starts[1:] > row_starts[:-1]).flatten()
    segment_starts = torch.cat([row_starts[touched], row_starts[-1:]])
    values = torch.empty((touched.numel(), grad_out.shape[1]), dtype=grad_out.dtype, device=grad_out.device)
    _C.embedding_bag_backward_table(dl(grad_out), dl(indices), dl(offsets), dl(weights), _MODES[mode],
                                    dl(positions), dl(segment_starts), dl(values), dl(check.flag), stream_of(grad_out))
    _raise_on_flag(check, rows)
    return touched, values


def _backward_rows_fake(grad_out, indices, offsets, per_sample_weights, mode, rows):
    touched = torch.library.get_ctx().new_dynamic_size()
    return indices.new_empty((touched,), dtype=torch.int64), grad_out.new_empty((touched, grad_out.shape[1]))


define_op("embedding_bag_backward_rows(Tensor grad_out, Tensor indices, Tensor offsets, Tensor? per_sample_weights, "
          "str mode, SymInt rows) -> (Tensor, Tensor)", _backward_rows, _backward_rows_fake)


def _backward_weights(grad_out: Tensor, table: Tensor, index_table: Tensor, offset_table: Tensor, mode: str) -> Tensor:
    table, indices, offsets, _ = _prepare(table, index_table, offset_table, None)
    grad_out = grad_out.contiguous()
    grad_weights = torch.empty(indices.numel(), dtype=table.dtype, device=table.device)
    check = _tables_check(index_table, offset_table, table.shape[0], table)
    _C.embedding_bag_backward_weights(dl(grad_out), dl(table), dl(indices), dl(offsets), _MODES[mode],
                                      dl(grad_weights), dl(check.flag), stream_of(table))
    _raise_on_flag(check, table.shape[0])
    return grad_weights


def _backward_weights_fake(grad_out, table, indices, offsets, mode):
    return table.new_empty((indices.shape[0],))


define_op("embedding_bag_backward_weights(Tensor grad_out, Tensor table, Tensor indices, Tensor offsets, str mode) "
          "-> Tensor", _backward_weights, _backward_weights_fake)


def _setup_context(ctx, inputs, output):
    table, indices, offsets, per_sample_weights, mode, sparse = inputs
    ctx.mode, ctx.sparse, ctx.table_shape, ctx.dtype = mode, sparse, table.shape, table.dtype
    ctx.save_for_backward(table if per_sample_weights is not None else None, indices, offsets, per_sample_weights)


def _backward(ctx, grad):
    table, indices, offsets, weights = ctx.saved_tensors
    rows = ctx.table_shape[0]
    grad = grad.to(ctx.dtype)
    grad_table = grad_weights = None
    if ctx.needs_input_grad[0]:
        if ctx.sparse:
            touched, values = call_op("embedding_bag_backward_rows", grad, indices, offsets, weights, ctx.mode, rows)
            grad_table = torch.sparse_coo_tensor(touched.unsqueeze(0), values, ctx.table_shape, is_coalesced=True,
                                                 check_invariants=False)
        else:
            grad_table = call_op("embedding_bag_backward_table", grad, indices, offsets, weights, ctx.mode, rows)
    if weights is not None and ctx.needs_input_grad[3]:
        grad_weights = call_op("embedding_bag_backward_weights", grad, table, indices, offsets, ctx.mode)
    return grad_table, None, None, grad_weights, None, None


define_autograd("embedding_bag", _backward, _setup_context)
