// Embedding bag on CUDA: gather-reduce forward, deterministic scatter backward (see embedding_bag.h).
//
// Every output element is written once by one thread that sums its terms in a fixed order, so
// results are bitwise reproducible without floating-point atomics. Values of indices, offsets and
// sorted positions are validated where they are read: a bad one sets a bit of error_flag and is
// skipped, so bad input never reads or writes out of bounds.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/numeric.h"
#include "sparse/embedding_bag.h"

namespace lmk::sparse {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = 0x7fffffff;
constexpr int64_t kMaxGridY = 65535;

// V adjacent elements, loaded and stored as one 16-byte access when V = 16 / sizeof(T).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

__device__ __forceinline__ void flag_error(int32_t* flag, int32_t bit) { atomicOr(flag, bit); }

template <typename T, typename I>
struct DeviceBags {
  const I* indices;
  const I* offsets;  // [num_bags + 1]
  const T* weights;  // nullptr when absent
  int64_t num_bags;
  int64_t n;  // number of indices
  bool mean;

  __device__ float weight(int64_t i) const { return weights ? to_float(weights[i]) : 1.0f; }
  // Mean divides (rather than multiplying by a reciprocal) to round exactly as the CPU kernels do.
  __device__ float divisor(int64_t count) const { return mean && count > 0 ? float(count) : 1.0f; }

  // The bag holding position p: upper_bound(offsets, p) - 1. Reads stay inside offsets whatever
  // its values, and the answer is verified, so malformed offsets give -1, never a wrong bag.
  __device__ int64_t bag_of(int64_t p) const {
    int64_t lo = 0, hi = num_bags + 1;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (int64_t(offsets[mid]) <= p) lo = mid + 1;
      else hi = mid;
    }
    const int64_t b = lo - 1;
    const bool ok = b >= 0 && b < num_bags && int64_t(offsets[b]) <= p && p < int64_t(offsets[b + 1]);
    return ok ? b : -1;
  }
};

// a[0..n) must be non-decreasing within [0, last]; with exact, also a[0] = 0 and a[n-1] = last (offsets).
template <typename I>
__global__ void check_monotone_kernel(const I* __restrict__ a, int64_t n, int64_t last, bool exact,
                                      int32_t* __restrict__ flag) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = a[i];
    bool ok = 0 <= x && x <= last;
    if (i + 1 < n) ok = ok && x <= int64_t(a[i + 1]);
    if (exact && i == 0) ok = ok && x == 0;
    if (exact && i == n - 1) ok = ok && x == last;
    if (!ok) flag_error(flag, kBadOffsets);
  }
}

// Only for D = 0, where the main kernels touch no element and so check nothing.
template <typename I>
__global__ void check_range_kernel(const I* __restrict__ a, int64_t n, int64_t hi, int32_t* __restrict__ flag) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (a[i] < 0 || int64_t(a[i]) >= hi) flag_error(flag, kBadIndex);
}

template <typename I>
void check_monotone(const I* a, int64_t n, int64_t last, bool exact, int32_t* flag, cudaStream_t stream) {
  const auto blocks = unsigned(std::min<int64_t>(ceil_div(n, kThreads), 1024));
  check_monotone_kernel<<<blocks, kThreads, 0, stream>>>(a, n, last, exact, flag);
  LMK_CUDA_CHECK(cudaGetLastError());
}

template <typename I>
void check_range(const I* a, int64_t n, int64_t hi, int32_t* flag, cudaStream_t stream) {
  if (n == 0) return;
  const auto blocks = unsigned(std::min<int64_t>(ceil_div(n, kThreads), 1024));
  check_range_kernel<<<blocks, kThreads, 0, stream>>>(a, n, hi, flag);
  LMK_CUDA_CHECK(cudaGetLastError());
}

// Row kernels (forward, backward_table) split a block into groups of `group` threads: one group
// per output row, its threads across the row's `cols` packs. Narrow rows pack several groups into
// a block so that no thread idles; wide rows spread over grid.y.
struct RowGrid {
  dim3 grid;
  int group;
};

RowGrid row_grid(int64_t rows, int64_t cols) {
  int group = 1;
  while (group < cols && group < kThreads) group *= 2;
  const int64_t per_block = kThreads / group;
  const auto x = unsigned(std::min(ceil_div(rows, per_block), kMaxGridX));
  const auto y = unsigned(std::min(ceil_div(cols, group), kMaxGridY));
  return {dim3(x, y), group};
}

// out[b] = scale_b * sum over the bag's positions, in position order, of w_i * table[indices[i]].
template <typename T, typename I, int V>
__global__ void forward_kernel(const T* __restrict__ table, int64_t rows, int64_t table_stride, DeviceBags<T, I> bags,
                               T* __restrict__ out, int64_t dim, int group, int32_t* __restrict__ flag) {
  const int64_t cols = dim / V;
  const int per_block = kThreads / group;
  const int lane = threadIdx.x % group;
  for (int64_t b = int64_t(blockIdx.x) * per_block + threadIdx.x / group; b < bags.num_bags;
       b += int64_t(gridDim.x) * per_block) {
    const int64_t start = bags.offsets[b], end = bags.offsets[b + 1];
    // A malformed bag (flagged by check_monotone) gives zeros.
    const bool bag_ok = 0 <= start && start <= end && end <= bags.n;
    const float divisor = bags.divisor(end - start);
    for (int64_t c = int64_t(blockIdx.y) * group + lane; c < cols; c += int64_t(gridDim.y) * group) {
      float acc[V] = {};
      for (int64_t i = start; bag_ok && i < end; ++i) {
        const int64_t r = bags.indices[i];
        if (r < 0 || r >= rows) {
          flag_error(flag, kBadIndex);
          continue;
        }
        const float w = bags.weight(i);
        const Pack<T, V> x = load<T, V>(table + r * table_stride + c * V);
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k] += w * to_float(x.v[k]);
      }
      Pack<T, V> y;
#pragma unroll
      for (int k = 0; k < V; ++k) y.v[k] = from_float<T>(acc[k] / divisor);
      *reinterpret_cast<Pack<T, V>*>(out + b * dim + c * V) = y;
    }
  }
}

// grad_segments[s] = sum over j in the segment, in sorted order, of scale * w_p * grad_out[bag(p)].
template <typename T, typename I, int V>
__global__ void backward_table_kernel(const T* __restrict__ grad_out, int64_t grad_stride, DeviceBags<T, I> bags,
                                      const int64_t* __restrict__ sorted_positions,
                                      const int64_t* __restrict__ segment_starts, int64_t num_segments,
                                      T* __restrict__ grad_segments, int64_t dim, int group,
                                      int32_t* __restrict__ flag) {
  const int64_t cols = dim / V;
  const int per_block = kThreads / group;
  const int lane = threadIdx.x % group;
  for (int64_t s = int64_t(blockIdx.x) * per_block + threadIdx.x / group; s < num_segments;
       s += int64_t(gridDim.x) * per_block) {
    const int64_t first = segment_starts[s], last = segment_starts[s + 1];
    // A malformed segment (flagged by check_monotone) gives zeros.
    const bool segment_ok = 0 <= first && first <= last && last <= bags.n;
    for (int64_t c = int64_t(blockIdx.y) * group + lane; c < cols; c += int64_t(gridDim.y) * group) {
      float acc[V] = {};
      for (int64_t j = first; segment_ok && j < last; ++j) {
        const int64_t p = sorted_positions[j];
        if (p < 0 || p >= bags.n) {
          flag_error(flag, kBadIndex);
          continue;
        }
        const int64_t b = bags.bag_of(p);
        if (b < 0) {
          flag_error(flag, kBadOffsets);
          continue;
        }
        const float ws = bags.weight(p) / bags.divisor(int64_t(bags.offsets[b + 1]) - int64_t(bags.offsets[b]));
        const Pack<T, V> g = load<T, V>(grad_out + b * grad_stride + c * V);
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k] += ws * to_float(g.v[k]);
      }
      Pack<T, V> y;
#pragma unroll
      for (int k = 0; k < V; ++k) y.v[k] = from_float<T>(acc[k]);
      *reinterpret_cast<Pack<T, V>*>(grad_segments + s * dim + c * V) = y;
    }
  }
}

// grad_weights[p] = scale * <grad_out[bag(p)], table[indices[p]]>: one warp per position, each lane
// summing its packs in order, then a fixed butterfly across lanes.
template <typename T, typename I, int V>
__global__ void backward_weights_kernel(const T* __restrict__ grad_out, int64_t grad_stride,
                                        const T* __restrict__ table, int64_t rows, int64_t table_stride,
                                        DeviceBags<T, I> bags, T* __restrict__ grad_weights, int64_t dim,
                                        int32_t* __restrict__ flag) {
  constexpr int kWarps = kThreads / 32;
  const int64_t cols = dim / V;
  const int lane = threadIdx.x % 32;
  // p is the same across a warp, so every lane reaches the shuffles below.
  for (int64_t p = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; p < bags.n; p += int64_t(gridDim.x) * kWarps) {
    const int64_t r = bags.indices[p];
    const int64_t b = bags.bag_of(p);
    const bool row_ok = 0 <= r && r < rows;
    if (lane == 0 && !row_ok) flag_error(flag, kBadIndex);
    if (lane == 0 && b < 0) flag_error(flag, kBadOffsets);
    float dot = 0.0f;
    if (row_ok && b >= 0) {
      for (int64_t c = lane; c < cols; c += 32) {
        const Pack<T, V> g = load<T, V>(grad_out + b * grad_stride + c * V);
        const Pack<T, V> x = load<T, V>(table + r * table_stride + c * V);
#pragma unroll
        for (int k = 0; k < V; ++k) dot += to_float(g.v[k]) * to_float(x.v[k]);
      }
    }
#pragma unroll
    for (int m = 16; m > 0; m /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, m);
    if (lane == 0) {
      const float divisor = b >= 0 ? bags.divisor(int64_t(bags.offsets[b + 1]) - int64_t(bags.offsets[b])) : 1.0f;
      grad_weights[p] = from_float<T>(dot / divisor);
    }
  }
}

template <typename T, typename I>
DeviceBags<T, I> device_bags(const Bags& bags) {
  return {bags.indices.as<const I>(),
          bags.offsets.as<const I>(),
          bags.weights ? bags.weights->as<const T>() : nullptr,
          bags.num_bags(),
          bags.num_indices(),
          bags.mode == BagMode::Mean};
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 16-byte packs when every row of every tensor starts on a 16-byte boundary, else scalars.
template <typename T, typename F>
void with_pack_width(int64_t dim, std::initializer_list<const TensorView*> rows_of, F&& f) {
  constexpr int V = 16 / int(sizeof(T));
  bool ok = dim % V == 0;
  for (const TensorView* t : rows_of)
    ok = ok && aligned16(t->data) && (t->stride(0) * int64_t(sizeof(T))) % 16 == 0;
  if (ok) f(std::integral_constant<int, V>{});
  else f(std::integral_constant<int, 1>{});
}

}  // namespace

void forward_cuda(const TensorView& table, const Bags& bags, const TensorView& out, const TensorView& error_flag,
                  void* stream) {
  CudaDeviceGuard guard(table.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  int32_t* flag = error_flag.as<int32_t>();
  const int64_t rows = table.size(0), dim = table.size(1), num_bags = bags.num_bags(), n = bags.num_indices();
  dispatch_index(bags.indices.dtype, "indices", [&](auto itag) {
    using I = typename decltype(itag)::type;
    check_monotone(bags.offsets.as<const I>(), num_bags + 1, n, /*exact=*/true, flag, s);
    if (dim == 0) check_range(bags.indices.as<const I>(), n, rows, flag, s);
    if (dim == 0 || num_bags == 0) return;
    dispatch_float(table.dtype, "table", [&](auto ttag) {
      using T = typename decltype(ttag)::type;
      with_pack_width<T>(dim, {&table, &out}, [&](auto vtag) {
        constexpr int V = decltype(vtag)::value;
        const RowGrid g = row_grid(num_bags, dim / V);
        forward_kernel<T, I, V><<<g.grid, kThreads, 0, s>>>(table.as<const T>(), rows, table.stride(0),
                                                             device_bags<T, I>(bags), out.as<T>(), dim, g.group, flag);
        LMK_CUDA_CHECK(cudaGetLastError());
      });
    });
  });
}

void backward_table_cuda(const TensorView& grad_out, const Bags& bags, const TensorView& sorted_positions,
                         const TensorView& segment_starts, const TensorView& grad_segments,
                         const TensorView& error_flag, void* stream) {
  CudaDeviceGuard guard(grad_out.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  int32_t* flag = error_flag.as<int32_t>();
  const int64_t dim = grad_out.size(1), num_bags = bags.num_bags(), n = bags.num_indices();
  const int64_t num_segments = segment_starts.size(0) - 1;
  const auto* positions = sorted_positions.as<const int64_t>();
  const auto* starts = segment_starts.as<const int64_t>();
  dispatch_index(bags.indices.dtype, "indices", [&](auto itag) {
    using I = typename decltype(itag)::type;
    check_monotone(bags.offsets.as<const I>(), num_bags + 1, n, /*exact=*/true, flag, s);
    check_monotone(starts, num_segments + 1, n, /*exact=*/false, flag, s);
    if (dim == 0) check_range(positions, n, n, flag, s);
    if (dim == 0 || num_segments == 0) return;
    dispatch_float(grad_out.dtype, "grad_out", [&](auto ttag) {
      using T = typename decltype(ttag)::type;
      with_pack_width<T>(dim, {&grad_out, &grad_segments}, [&](auto vtag) {
        constexpr int V = decltype(vtag)::value;
        const RowGrid g = row_grid(num_segments, dim / V);
        backward_table_kernel<T, I, V><<<g.grid, kThreads, 0, s>>>(grad_out.as<const T>(), grad_out.stride(0),
                                                                    device_bags<T, I>(bags), positions, starts,
                                                                    num_segments, grad_segments.as<T>(), dim,
                                                                    g.group, flag);
        LMK_CUDA_CHECK(cudaGetLastError());
      });
    });
  });
}

void backward_weights_cuda(const TensorView& grad_out, const TensorView& table, const Bags& bags,
                           const TensorView& grad_weights, const TensorView& error_flag, void* stream) {
  CudaDeviceGuard guard(table.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  int32_t* flag = error_flag.as<int32_t>();
  const int64_t rows = table.size(0), dim = table.size(1), num_bags = bags.num_bags(), n = bags.num_indices();
  dispatch_index(bags.indices.dtype, "indices", [&](auto itag) {
    using I = typename decltype(itag)::type;
    check_monotone(bags.offsets.as<const I>(), num_bags + 1, n, /*exact=*/true, flag, s);
    if (n == 0) return;
    dispatch_float(table.dtype, "table", [&](auto ttag) {
      using T = typename decltype(ttag)::type;
      with_pack_width<T>(dim, {&table, &grad_out}, [&](auto vtag) {
        constexpr int V = decltype(vtag)::value;
        constexpr int64_t kWarps = kThreads / 32;
        const auto blocks = unsigned(std::min(ceil_div(n, kWarps), kMaxGridX));
        backward_weights_kernel<T, I, V><<<blocks, kThreads, 0, s>>>(grad_out.as<const T>(), grad_out.stride(0),
                                                                      table.as<const T>(), rows, table.stride(0),
                                                                      device_bags<T, I>(bags), grad_weights.as<T>(),
                                                                      dim, flag);
        LMK_CUDA_CHECK(cudaGetLastError());
      });
    });
  });
}

}  // namespace lmk::sparse
