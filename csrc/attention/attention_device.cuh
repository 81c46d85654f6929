// Device helpers shared by the attention kernels (attention_cuda.cu, attention_mma_cuda.cu): the
// batch item or packed sequence of a block, its rows, and the keys a query row sees.
#pragma once
#include <cstdint>

#include "attention/attention.h"

namespace lmk::attention {

struct DeviceItem {
  int64_t index, first_row, queries, keys;
  bool valid;
};

__device__ inline int64_t seq_entry(const AttentionProblem& p, int64_t n) {
  return p.cu_dtype == DType::Int32 ? int64_t(static_cast<const int32_t*>(p.cu_seqlens)[n])
                                    : static_cast<const int64_t*>(p.cu_seqlens)[n];
}

// The item of this block; for varlen, a malformed entry (or a sequence longer than max_seqlen,
// which sized the grid) flags kBadSeqlens and invalidates the item.
__device__ inline DeviceItem item_at(const AttentionProblem& p, int64_t n, int32_t* flag) {
  if (!p.cu_seqlens) return DeviceItem{n, 0, p.queries, p.prefix + p.keys, true};
  const int64_t start = seq_entry(p, n), end = seq_entry(p, n + 1);
  bool ok = start >= 0 && start <= end && end <= p.total_rows && end - start <= p.queries;
  if (n == 0) ok = ok && start == 0;
  if (n + 1 == p.items) ok = ok && end == p.total_rows;
  if (!ok) {
    if (threadIdx.x == 0) atomicOr(flag, kBadSeqlens);
    return DeviceItem{n, 0, 0, 0, false};
  }
  return DeviceItem{n, start, end - start, end - start, true};
}

template <typename T>
__device__ inline T* row_at(const Operand& o, const DeviceItem& it, int64_t head, int64_t row) {
  return static_cast<T*>(o.data) + it.index * o.batch + head * o.head + (it.first_row + row) * o.row;
}

// The rows of one key (or value) head of an item, prefix first: row j's first element in a few
// integer operations, the head's bases computed once (for the tile loaders).
template <typename T>
struct HeadRows {
  const T* prefix;
  const T* own;
  int64_t prefix_stride, own_stride, prefix_rows;

  __device__ const T* operator()(int64_t j) const {
    const bool in_prefix = j < prefix_rows;
    return (in_prefix ? prefix : own) + (in_prefix ? j * prefix_stride : (j - prefix_rows) * own_stride);
  }

  // Whether rows [j, j + n) lie on one side of the prefix boundary, one stride apart.
  __device__ bool one_side(int64_t j, int64_t n) const { return j >= prefix_rows || j + n <= prefix_rows; }
  __device__ int64_t stride_at(int64_t j) const { return j < prefix_rows ? prefix_stride : own_stride; }
};

template <typename T>
__device__ inline HeadRows<T> head_rows(const AttentionProblem& p, const Operand& prefix, const Operand& own,
                                        const DeviceItem& it, int64_t head) {
  const T* prefix_base = p.prefix > 0 ? static_cast<const T*>(prefix.data) + it.index * prefix.batch + head * prefix.head
                                      : nullptr;
  return HeadRows<T>{prefix_base, row_at<const T>(own, it, head, 0), prefix.row, own.row, p.prefix};
}

struct Interval {
  int64_t lo, hi;
};

__device__ inline Interval visible_keys(const AttentionOptions& o, const DeviceItem& it, int64_t i) {
  const int64_t pos = it.keys - it.queries + i;
  const int64_t lo = o.window > 0 ? (pos - o.window + 1 > 0 ? pos - o.window + 1 : 0) : 0;
  return Interval{lo, o.causal ? pos + 1 : it.keys};
}

}  // namespace lmk::attention
