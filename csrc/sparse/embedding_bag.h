// Embedding bag: a CSR batch of bags of table rows, reduced to one vector per bag.
//
//   forward:   out[b] = scale_b * sum_{i in bag b} w_i * table[indices[i]]
//   backward:  grad_table[r] = sum_{i : indices[i] = r} scale_{bag(i)} * w_i * grad_out[bag(i)]
//              grad_w[i]     = scale_{bag(i)} * <grad_out[bag(i)], table[indices[i]]>
//
// where bag b holds positions [offsets[b], offsets[b+1]), w_i = 1 without per-sample weights, and
// scale_b = 1 (sum) or 1 / |bag b| (mean; an empty bag gives zeros). Values are float32, bfloat16
// or float16 and accumulate in fp32; indices and offsets are int32 or int64 (the same type).
//
// The table gradient is computed per output row over the positions of that row in a stable order
// (positions sorted by index), never with floating-point atomics, so it is bitwise reproducible.
// The sort is a counting sort on the CPU and a radix sort on the GPU; both give the same order.
// The rows of the gradient are "segments" of that sorted order: one segment per table row gives
// the dense gradient, one per distinct index gives the sparse (rows, values) gradient.
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/tensor_view.h"

namespace lmk::sparse {

enum class BagMode : int { Sum = 0, Mean = 1 };

struct Bags {
  TensorView indices;   // [N]   int32 or int64, each in [0, rows)
  TensorView offsets;   // [B+1] same dtype; offsets[0] = 0, non-decreasing, offsets[B] = N
  OptionalView weights; // [N]   dtype of the table, or absent
  BagMode mode = BagMode::Sum;

  int64_t num_bags() const { return offsets.size(0) - 1; }
  int64_t num_indices() const { return indices.size(0); }
};

// Shapes, dtypes, devices and layouts (everything but the values of indices and offsets, which
// the kernels check where the data lives).
void check_bags(const Bags& bags, const TensorView& table, const char* table_name);
void check_forward(const TensorView& table, const Bags& bags, const TensorView& out);
void check_backward_table(const TensorView& grad_out, const Bags& bags, const TensorView& sorted_positions,
                          const TensorView& segment_starts, const TensorView& grad_segments);
void check_backward_weights(const TensorView& grad_out, const TensorView& table, const Bags& bags,
                            const TensorView& grad_weights);

// ---- CPU -------------------------------------------------------------------------------------
// Raise IndexError for an index outside [0, rows) and ValueError for malformed offsets.
void forward_cpu(const TensorView& table, const Bags& bags, const TensorView& out);

// Stable counting sort of positions by index: sorted_positions [N] int64 lists the positions of
// row 0 first (in increasing position order), then row 1, ...; row_starts [rows+1] int64 is the
// CSR start of each row in that list.
void sort_positions_by_row_cpu(const TensorView& indices, int64_t rows, const TensorView& sorted_positions,
                               const TensorView& row_starts);

// grad_segments[s] = sum over j in [segment_starts[s], segment_starts[s+1]) of
//                    scale_{bag(p)} * w_p * grad_out[bag(p)],  p = sorted_positions[j].
void backward_table_cpu(const TensorView& grad_out, const Bags& bags, const TensorView& sorted_positions,
                        const TensorView& segment_starts, const TensorView& grad_segments);

void backward_weights_cpu(const TensorView& grad_out, const TensorView& table, const Bags& bags,
                          const TensorView& grad_weights);

// ---- CUDA ------------------------------------------------------------------------------------
// Same contracts, on the given stream. Values are not checked on the host: the kernels OR these
// bits into error_flag (int32 [1] on the device) and skip the offending element instead.
constexpr int32_t kBadIndex = 1;     // an index outside [0, rows), or a sorted position outside [0, N)
constexpr int32_t kBadOffsets = 2;   // offsets or segment starts not monotone within bounds

// The GPU sort of positions by row is a stable LSD radix sort: tiles of kSortTile positions,
// digits of at most 8 bits. Its workspace is int64 [sort_positions_workspace_size(N)]: the keys
// of one pass and a count per (digit, tile). Positions and rows must fit in 31 bits.
constexpr int64_t kSortTile = 2048;
constexpr int64_t kSortRadix = 256;
int64_t sort_positions_workspace_size(int64_t num_indices);
void check_sort_positions(const TensorView& indices, int64_t rows, const TensorView& sorted_positions,
                          const TensorView& row_starts, const OptionalView& workspace);
// The sort's outputs (and GPU workspace) share no memory with each other or with the indices: a write
// there would change an index after its range check.
void check_sort_positions_disjoint(const TensorView& indices, const TensorView& sorted_positions,
                                   const TensorView& row_starts, const OptionalView& workspace);

#ifdef LMK_WITH_CUDA
// sort_positions_by_row_cpu on the GPU; an index outside [0, rows) sets kBadIndex (its position
// then sorts after all others, outside every row).
void sort_positions_by_row_cuda(const TensorView& indices, int64_t rows, const TensorView& sorted_positions,
                                const TensorView& row_starts, const TensorView& workspace,
                                const TensorView& error_flag, void* stream);
void forward_cuda(const TensorView& table, const Bags& bags, const TensorView& out, const TensorView& error_flag,
                  void* stream);
void backward_table_cuda(const TensorView& grad_out, const Bags& bags, const TensorView& sorted_positions,
                         const TensorView& segment_starts, const TensorView& grad_segments,
                         const TensorView& error_flag, void* stream);
void backward_weights_cuda(const TensorView& grad_out, const TensorView& table, const Bags& bags,
                           const TensorView& grad_weights, const TensorView& error_flag, void* stream);
#endif

}  // namespace lmk::sparse
