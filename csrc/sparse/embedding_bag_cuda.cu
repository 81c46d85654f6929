// Embedding bag on CUDA: gather-reduce forward, deterministic scatter backward (see embedding_bag.h).
//
// Every output element is written once by one thread that sums its terms in a fixed order, so
// results are bitwise reproducible without floating-point atomics. Values of indices, offsets and
// sorted positions are validated where they are read: a bad one sets a bit of error_flag and is
// skipped, so bad input never reads or writes out of bounds.
//
// The table backward takes the positions sorted by row from a stable radix sort (below), then
// sums each row's upstream-gradient rows in that order.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

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

// A store marked evict-first: for an output far larger than the L2 that is not read again here,
// so that its lines do not push out the inputs that the kernel gathers again and again.
template <typename T, int V>
__device__ __forceinline__ void store_streaming(T* p, const Pack<T, V>& y) {
  if constexpr (sizeof(y) == 16) {
    int4 bits;
    memcpy(&bits, &y, 16);
    __stcs(reinterpret_cast<int4*>(p), bits);
  } else {
    *reinterpret_cast<Pack<T, V>*>(p) = y;
  }
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

// ---- Sorting positions by row ------------------------------------------------------------------
// A stable LSD radix sort of (row, position) pairs packed as row << 32 | position, a digit of at
// most 8 bits of the row per pass. Each pass counts the digits of every tile of kSortTile
// elements, scans the counts in (digit, tile) order into each tile's first destination per digit,
// and scatters every tile in element order, so equal digits keep their order and the result is
// the positions of row 0 in increasing order, then those of row 1, and so on. Integer counting
// only: the order is the same on every run.
constexpr int kSortThreads = 256;
constexpr int kSortItems = int(kSortTile) / kSortThreads;
constexpr int kScanThreads = 1024;
constexpr int kScanItems = 8;
static_assert(kSortRadix <= kSortThreads, "one thread per digit");
static_assert(kScanThreads == 32 * 32, "the scan's second level is one warp");

__device__ __forceinline__ int digit_of(uint64_t packed, int shift, int radix) {
  return int((packed >> (32 + shift)) & uint64_t(radix - 1));
}

// packed[i] = row << 32 | i, with row_counts[row] += 1. A bad index flags, takes row `rows` (after
// every real row) and is counted in no row.
template <typename I>
__global__ void sort_pack_kernel(const I* __restrict__ indices, int64_t n, int64_t rows, uint64_t* __restrict__ packed,
                                 int64_t* __restrict__ row_counts, int32_t* __restrict__ flag) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = indices[i];
    const bool ok = 0 <= r && r < rows;
    if (ok) atomicAdd(reinterpret_cast<unsigned long long*>(row_counts + r), 1ull);
    else flag_error(flag, kBadIndex);
    packed[i] = uint64_t(ok ? r : rows) << 32 | uint64_t(i);
  }
}

// counts[d * num_tiles + t] = number of elements of tile t (block t) whose digit is d.
__global__ void sort_count_kernel(const uint64_t* __restrict__ src, int64_t n, int shift, int radix,
                                  int64_t* __restrict__ counts, int64_t num_tiles) {
  __shared__ int tile_counts[kSortRadix];
  for (int d = threadIdx.x; d < radix; d += kSortThreads) tile_counts[d] = 0;
  __syncthreads();
  const int64_t tile = blockIdx.x;
  for (int k = 0; k < kSortItems; ++k) {
    const int64_t e = tile * kSortTile + k * kSortThreads + threadIdx.x;
    if (e < n) atomicAdd(&tile_counts[digit_of(src[e], shift, radix)], 1);
  }
  __syncthreads();
  for (int d = threadIdx.x; d < radix; d += kSortThreads) counts[d * num_tiles + tile] = tile_counts[d];
}

// Exclusive prefix sum of a[0, n) in place, by one block: chunks of kScanThreads * kScanItems in
// turn, each thread summing kScanItems consecutive entries, then a scan across the block.
__global__ void __launch_bounds__(kScanThreads) exclusive_scan_kernel(int64_t* __restrict__ a, int64_t n) {
  constexpr int kWarps = kScanThreads / 32;
  __shared__ int64_t warp_sums[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t carry = 0;  // sum of all earlier chunks
  for (int64_t chunk = 0; chunk < n; chunk += int64_t(kScanThreads) * kScanItems) {
    const int64_t first = chunk + int64_t(threadIdx.x) * kScanItems;
    int64_t x[kScanItems];
    int64_t own = 0;
#pragma unroll
    for (int k = 0; k < kScanItems; ++k) {
      x[k] = first + k < n ? a[first + k] : 0;
      own += x[k];
    }
    int64_t inclusive = own;  // own plus all earlier lanes' of this warp
#pragma unroll
    for (int m = 1; m < 32; m *= 2) {
      const int64_t y = __shfl_up_sync(0xffffffffu, inclusive, m);
      if (lane >= m) inclusive += y;
    }
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
      int64_t w = warp_sums[lane];  // kWarps == 32
#pragma unroll
      for (int m = 1; m < 32; m *= 2) {
        const int64_t y = __shfl_up_sync(0xffffffffu, w, m);
        if (lane >= m) w += y;
      }
      warp_sums[lane] = w;  // now inclusive over warps
    }
    __syncthreads();
    int64_t at = carry + (warp > 0 ? warp_sums[warp - 1] : 0) + inclusive - own;
#pragma unroll
    for (int k = 0; k < kScanItems; ++k) {
      if (first + k < n) a[first + k] = at;
      at += x[k];
    }
    carry += warp_sums[kWarps - 1];
    __syncthreads();  // warp_sums is read above before the next chunk writes it
  }
}

// Moves every element of tile t (block t) to its place for this pass: the tile's first destination
// for its digit (the scanned counts) plus the number of earlier elements of the tile with that
// digit. The tile goes by in rounds of kSortThreads elements in order; within a round, a warp
// ranks its lanes by __match_any_sync and the warps' counts are added in warp order. The last
// pass writes the positions alone.
__global__ void __launch_bounds__(kSortThreads)
    sort_scatter_kernel(const uint64_t* __restrict__ src, int64_t n, int shift, int radix,
                        const int64_t* __restrict__ starts, int64_t num_tiles, uint64_t* __restrict__ dst,
                        bool last_pass) {
  constexpr int kWarps = kSortThreads / 32;
  __shared__ int64_t next[kSortRadix];           // the tile's next destination per digit
  __shared__ int warp_counts[kWarps][kSortRadix];  // this round's elements per warp and digit
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t tile = blockIdx.x;
  for (int d = threadIdx.x; d < radix; d += kSortThreads) {
    next[d] = starts[d * num_tiles + tile];
    for (int w = 0; w < kWarps; ++w) warp_counts[w][d] = 0;
  }
  uint64_t v[kSortItems];  // all loads first, so that they are in flight together
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int64_t e = tile * kSortTile + k * kSortThreads + threadIdx.x;
    v[k] = e < n ? src[e] : 0;
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const bool valid = tile * kSortTile + k * kSortThreads + threadIdx.x < n;
    const int d = valid ? digit_of(v[k], shift, radix) : radix;  // radix: no digit, matches only the invalid
    const unsigned peers = __match_any_sync(0xffffffffu, d);
    const int rank = __popc(peers & ((1u << lane) - 1));  // earlier lanes with this digit
    if (valid && rank == 0) warp_counts[warp][d] = __popc(peers);
    __syncthreads();
    if (valid) {
      int64_t at = next[d] + rank;
      for (int w = 0; w < warp; ++w) at += warp_counts[w][d];
      dst[at] = last_pass ? v[k] & 0xffffffffu : v[k];
    }
    __syncthreads();
    for (int dd = threadIdx.x; dd < radix; dd += kSortThreads) {
      int round = 0;
      for (int w = 0; w < kWarps; ++w) {
        round += warp_counts[w][dd];
        warp_counts[w][dd] = 0;
      }
      next[dd] += round;
    }
    __syncthreads();
  }
}

void exclusive_scan(int64_t* a, int64_t n, cudaStream_t stream) {
  exclusive_scan_kernel<<<1, kScanThreads, 0, stream>>>(a, n);
  LMK_CUDA_CHECK(cudaGetLastError());
}

// Row kernels (forward, backward_table) split a block into groups of `group` threads: one group
// per output row, its threads across the row's `cols` packs. Narrow rows pack several groups into
// a block so that no thread idles; wide rows spread over grid.y. With group_blocks, a group of a
// warp or more is a block of its own, so that __syncthreads is its barrier (a smaller group lies
// inside one warp).
struct RowGrid {
  dim3 grid;
  int group;
  int threads;
};

RowGrid row_grid(int64_t rows, int64_t cols, bool group_blocks = false) {
  int group = 1;
  while (group < cols && group < kThreads) group *= 2;
  const int threads = group_blocks && group >= 32 ? group : kThreads;
  const int64_t per_block = threads / group;
  const auto x = unsigned(std::min(ceil_div(rows, per_block), kMaxGridX));
  const auto y = unsigned(std::min(ceil_div(cols, group), kMaxGridY));
  return {dim3(x, y), group, threads};
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
// Finding a slot's bag is a binary search (a dozen dependent loads), so a group resolves a chunk
// of its segment's slots at once, one slot per thread, into shared memory; then every thread
// gathers its column pack from those rows, loading kAhead rows before adding them (in order).
template <typename T, typename I, int V>
__global__ void backward_table_kernel(const T* __restrict__ grad_out, int64_t grad_stride, DeviceBags<T, I> bags,
                                      const int64_t* __restrict__ sorted_positions,
                                      const int64_t* __restrict__ segment_starts, int64_t num_segments,
                                      T* __restrict__ grad_segments, int64_t dim, int group,
                                      int32_t* __restrict__ flag) {
  constexpr int kAhead = 4;
  __shared__ int64_t slot_row[kThreads];  // where the slot's grad_out row starts, -1 to skip the slot
  __shared__ float slot_scale[kThreads];
  const int64_t cols = dim / V;
  const int per_block = blockDim.x / group;
  const int lane = threadIdx.x % group;
  const int base = threadIdx.x - lane;  // the group's slots in shared memory
  // The group's barrier: the whole block (one group, see row_grid), or the group's lanes of its warp.
  const unsigned lanes = group >= 32 ? ~0u : ((1u << group) - 1) << (base % 32);
  const auto group_sync = [&] {
    if (group >= 32) __syncthreads();
    else __syncwarp(lanes);
  };
  // Every loop below runs alike on all threads of a group, so they all reach its barriers.
  for (int64_t s = int64_t(blockIdx.x) * per_block + threadIdx.x / group; s < num_segments;
       s += int64_t(gridDim.x) * per_block) {
    const int64_t first = segment_starts[s], last = segment_starts[s + 1];
    // A malformed segment (flagged by check_monotone) gives zeros.
    const int64_t end = 0 <= first && first <= last && last <= bags.n ? last : first;
    for (int64_t c0 = int64_t(blockIdx.y) * group; c0 < cols; c0 += int64_t(gridDim.y) * group) {
      const int64_t c = c0 + lane;
      float acc[V] = {};
      for (int64_t j0 = first; j0 < end; j0 += group) {
        const int count = end - j0 < group ? int(end - j0) : group;
        if (lane < count) {
          const int64_t p = sorted_positions[j0 + lane];
          const int64_t b = 0 <= p && p < bags.n ? bags.bag_of(p) : -1;
          if (b < 0) flag_error(flag, 0 <= p && p < bags.n ? kBadOffsets : kBadIndex);
          slot_row[threadIdx.x] = b < 0 ? -1 : b * grad_stride;
          slot_scale[threadIdx.x] =
              b < 0 ? 0.0f
                    : bags.weight(p) / bags.divisor(int64_t(bags.offsets[b + 1]) - int64_t(bags.offsets[b]));
        }
        group_sync();
        for (int k = 0; k < count; k += kAhead) {
          int64_t row[kAhead];
          Pack<T, V> g[kAhead];
#pragma unroll
          for (int u = 0; u < kAhead; ++u) {
            row[u] = k + u < count && c < cols ? slot_row[base + k + u] : -1;
            if (row[u] >= 0) g[u] = load<T, V>(grad_out + row[u] + c * V);
          }
#pragma unroll
          for (int u = 0; u < kAhead; ++u) {
            if (row[u] < 0) continue;
            const float ws = slot_scale[base + k + u];
#pragma unroll
            for (int e = 0; e < V; ++e) acc[e] += ws * to_float(g[u].v[e]);
          }
        }
        group_sync();  // everyone has read the chunk before the next one overwrites it
      }
      if (c < cols) {
        Pack<T, V> y;
#pragma unroll
        for (int e = 0; e < V; ++e) y.v[e] = from_float<T>(acc[e]);
        store_streaming(grad_segments + s * dim + c * V, y);
      }
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

void sort_positions_by_row_cuda(const TensorView& indices, int64_t rows, const TensorView& sorted_positions,
                                const TensorView& row_starts, const TensorView& workspace,
                                const TensorView& error_flag, void* stream) {
  CudaDeviceGuard guard(indices.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t n = indices.size(0);
  int64_t* starts = row_starts.as<int64_t>();
  LMK_CUDA_CHECK(cudaMemsetAsync(starts, 0, sizeof(int64_t) * size_t(rows + 1), s));
  if (n == 0) return;
  // Rows take bit_width(rows) bits (a bad index sorts as row `rows`), spread evenly over the passes.
  int bits = 0;
  while (bits < 63 && (int64_t(1) << bits) <= rows) ++bits;
  const int passes = std::max(1, (bits + 7) / 8);
  const int width = (bits + passes - 1) / passes;
  const int radix = 1 << width;
  const int64_t num_tiles = ceil_div(n, kSortTile);
  auto* keys = reinterpret_cast<uint64_t*>(workspace.as<int64_t>());
  int64_t* counts = workspace.as<int64_t>() + n;
  auto* out = reinterpret_cast<uint64_t*>(sorted_positions.as<int64_t>());
  // The passes alternate between the workspace and the output, so that the last one writes the output.
  uint64_t* src = passes % 2 ? keys : out;
  uint64_t* dst = passes % 2 ? out : keys;
  dispatch_index(indices.dtype, "indices", [&](auto itag) {
    using I = typename decltype(itag)::type;
    const auto blocks = unsigned(std::min<int64_t>(ceil_div(n, kThreads), 4096));
    sort_pack_kernel<I><<<blocks, kThreads, 0, s>>>(indices.as<const I>(), n, rows, src, starts,
                                                    error_flag.as<int32_t>());
    LMK_CUDA_CHECK(cudaGetLastError());
  });
  exclusive_scan(starts, rows + 1, s);
  for (int pass = 0; pass < passes; ++pass) {
    sort_count_kernel<<<unsigned(num_tiles), kSortThreads, 0, s>>>(src, n, pass * width, radix, counts, num_tiles);
    LMK_CUDA_CHECK(cudaGetLastError());
    exclusive_scan(counts, radix * num_tiles, s);
    sort_scatter_kernel<<<unsigned(num_tiles), kSortThreads, 0, s>>>(src, n, pass * width, radix, counts, num_tiles,
                                                                      dst, pass == passes - 1);
    LMK_CUDA_CHECK(cudaGetLastError());
    std::swap(src, dst);
  }
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
        const RowGrid g = row_grid(num_segments, dim / V, /*group_blocks=*/true);
        backward_table_kernel<T, I, V><<<g.grid, g.threads, 0, s>>>(grad_out.as<const T>(), grad_out.stride(0),
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
