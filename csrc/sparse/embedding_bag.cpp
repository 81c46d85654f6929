// Argument checks of the embedding bag, shared by the CPU and CUDA paths.
#include "sparse/embedding_bag.h"

namespace lmk::sparse {

static void check_vector(const TensorView& t, const char* name) {
  check_ndim(t, name, 1);
  check_contiguous(t, name);
}

// A [rows, dim] matrix of values whose rows may sit at any stride.
static void check_value_rows(const TensorView& t, const char* name) {
  check_dtype(t, name, {DType::Float32, DType::BFloat16, DType::Float16});
  check_ndim(t, name, 2);
  check_unit_last_stride(t, name);
}

void check_bags(const Bags& bags, const TensorView& table, const char* table_name) {
  check_dtype(bags.indices, "indices", {DType::Int32, DType::Int64});
  check_same_dtype(bags.offsets, "offsets", bags.indices, "indices");
  check_vector(bags.indices, "indices");
  check_vector(bags.offsets, "offsets");
  if (bags.offsets.size(0) < 1)
    fail(ErrorKind::Value, "offsets: expected at least one entry (offsets has num_bags + 1 entries), got 0");
  check_same_device(bags.indices, "indices", table, table_name);
  check_same_device(bags.offsets, "offsets", table, table_name);
  if (bags.weights) {
    const TensorView& w = *bags.weights;
    check_same_dtype(w, "per_sample_weights", table, table_name);
    check_vector(w, "per_sample_weights");
    check_size(w, "per_sample_weights", 0, bags.num_indices());
    check_same_device(w, "per_sample_weights", table, table_name);
  }
  if (bags.mode != BagMode::Sum && bags.mode != BagMode::Mean)
    fail(ErrorKind::Value, "mode: expected sum (0) or mean (1), got ", int(bags.mode));
}

void check_forward(const TensorView& table, const Bags& bags, const TensorView& out) {
  check_value_rows(table, "table");
  check_bags(bags, table, "table");
  check_same_dtype(out, "out", table, "table");
  check_ndim(out, "out", 2);
  check_size(out, "out", 0, bags.num_bags());
  check_size(out, "out", 1, table.size(1));
  check_contiguous(out, "out");
  check_writable(out, "out");
  check_same_device(out, "out", table, "table");
}

void check_backward_table(const TensorView& grad_out, const Bags& bags, const TensorView& sorted_positions,
                          const TensorView& segment_starts, const TensorView& grad_segments) {
  check_value_rows(grad_out, "grad_out");
  check_bags(bags, grad_out, "grad_out");
  check_size(grad_out, "grad_out", 0, bags.num_bags());
  check_dtype(sorted_positions, "sorted_positions", {DType::Int64});
  check_vector(sorted_positions, "sorted_positions");
  check_size(sorted_positions, "sorted_positions", 0, bags.num_indices());
  check_same_device(sorted_positions, "sorted_positions", grad_out, "grad_out");
  check_dtype(segment_starts, "segment_starts", {DType::Int64});
  check_vector(segment_starts, "segment_starts");
  check_same_device(segment_starts, "segment_starts", grad_out, "grad_out");
  if (segment_starts.size(0) < 1)
    fail(ErrorKind::Value, "segment_starts: expected num_segments + 1 entries, got 0");
  check_same_dtype(grad_segments, "grad_table", grad_out, "grad_out");
  check_ndim(grad_segments, "grad_table", 2);
  check_size(grad_segments, "grad_table", 0, segment_starts.size(0) - 1);
  check_size(grad_segments, "grad_table", 1, grad_out.size(1));
  check_contiguous(grad_segments, "grad_table");
  check_writable(grad_segments, "grad_table");
  check_same_device(grad_segments, "grad_table", grad_out, "grad_out");
}

int64_t sort_positions_workspace_size(int64_t num_indices) {
  return num_indices + kSortRadix * ((num_indices + kSortTile - 1) / kSortTile);
}

void check_sort_positions(const TensorView& indices, int64_t rows, const TensorView& sorted_positions,
                          const TensorView& row_starts, const OptionalView& workspace) {
  constexpr int64_t kMax31 = (int64_t(1) << 31) - 1;
  check_dtype(indices, "indices", {DType::Int32, DType::Int64});
  check_vector(indices, "indices");
  if (indices.size(0) > kMax31)
    fail(ErrorKind::Value, "indices: at most 2^31 - 1 indices on the GPU, got ", indices.size(0));
  if (rows < 0 || rows > kMax31)
    fail(ErrorKind::Value, "rows: expected a row count in [0, 2^31 - 1] on the GPU, got ", rows);
  const auto check_int64_vector = [&](const TensorView& t, const char* name, int64_t size) {
    check_dtype(t, name, {DType::Int64});
    check_vector(t, name);
    check_size(t, name, 0, size);
    check_writable(t, name);
    check_same_device(t, name, indices, "indices");
  };
  check_int64_vector(sorted_positions, "sorted_positions", indices.size(0));
  check_int64_vector(row_starts, "row_starts", rows + 1);
  if (!workspace) fail(ErrorKind::Value, "workspace: required for GPU tensors (int64 [sort_positions_workspace_size])");
  check_int64_vector(*workspace, "workspace", sort_positions_workspace_size(indices.size(0)));
  check_sort_positions_disjoint(indices, sorted_positions, row_starts, workspace);
}

void check_sort_positions_disjoint(const TensorView& indices, const TensorView& sorted_positions,
                                   const TensorView& row_starts, const OptionalView& workspace) {
  check_disjoint(sorted_positions, "sorted_positions", indices, "indices");
  check_disjoint(row_starts, "row_starts", indices, "indices");
  check_disjoint(row_starts, "row_starts", sorted_positions, "sorted_positions");
  if (!workspace) return;
  check_disjoint(*workspace, "workspace", indices, "indices");
  check_disjoint(*workspace, "workspace", sorted_positions, "sorted_positions");
  check_disjoint(*workspace, "workspace", row_starts, "row_starts");
}

void check_backward_weights(const TensorView& grad_out, const TensorView& table, const Bags& bags,
                            const TensorView& grad_weights) {
  check_value_rows(table, "table");
  check_bags(bags, table, "table");
  check_value_rows(grad_out, "grad_out");
  check_same_dtype(grad_out, "grad_out", table, "table");
  check_size(grad_out, "grad_out", 0, bags.num_bags());
  check_size(grad_out, "grad_out", 1, table.size(1));
  check_same_device(grad_out, "grad_out", table, "table");
  check_same_dtype(grad_weights, "grad_weights", table, "table");
  check_vector(grad_weights, "grad_weights");
  check_size(grad_weights, "grad_weights", 0, bags.num_indices());
  check_writable(grad_weights, "grad_weights");
  check_same_device(grad_weights, "grad_weights", table, "table");
}

}  // namespace lmk::sparse
