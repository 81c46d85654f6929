// Dictionary scoring on CUDA (see dictionary_score.h), in four steps on the caller's stream:
//
// 1. check_kernel: offsets monotone and complete, trigram counts >= 1 (error-flag bits).
// 2. activate_kernel: sigmoid of the logits into the transposed workspace activations[i * Q + q]
//    through 32 x 32 tiles in shared memory, so that the logits are read and the workspace written
//    in whole sectors whatever Q is (a store per query would scatter 4-byte writes Q floats apart).
// 3. totals_kernel (contrast only): S_q, one block per query row, by a fixed-shape block reduction.
// 4. score_kernel: a warp scores 8 consecutive words, one after another, against a group of
//    queries. Its lanes form C columns x G = 32 / C groups: a column owns V queries, and group g
//    takes positions g, g + G, g + 2G, ... of the word's NE indices and then, from where its own
//    sequence crosses into them, of its E indices. The lane layout by Q:
//      Q % 4 != 0:        V = 1, one float of each activations row;
//      Q % 4 == 0, < 32:  V = 4, one float4 (column c reads float4 c of the group);
//      Q % 4 == 0, >= 32: V = 8, two float4: column c reads float4 c and then c + C of the group,
//                         so each load instruction of a group reads C * 16 contiguous bytes (C = 8
//                         for Q = 64: 4 groups of 8 lanes gather 4 positions at a time, 128 bytes each).
//    C is the smallest power of two that covers Q with V queries a column, at most 32 (16 for
//    V = 8, which keeps the staging tile at 128 queries); more queries take several groups, over
//    gridDim.y. A partial last group leaves whole float4 runs idle (Lane::active).
//    Why V = 8: Nsight Compute on an H200 (Q = 64, v = 32000, 100,000 words of ~60 indices) found
//    the V = 4 kernel (299.7 us of the op's 323 us) bound by integer work per gathered index (ALU
//    pipe 60.8 %, the busiest; L2 at 49.6 %, DRAM 3 %) and by latency at 3 blocks per SM (80
//    registers, 30.5 % achieved occupancy). Eight queries a lane halve the positions each lane
//    walks, and 32-bit positions, separate NE and E loops, one unsigned range compare and one
//    IMAD.WIDE.U32 per row address cut the work per position, so that 4 blocks per SM fit in 64
//    registers: 197 us on the same problem, L2 at 74 % of its peak, the bound now. Each lane
//    issues its index loads and then its row loads (4 float4 in flight for V = 4 and 8) before it
//    adds; the groups' partial sums then meet in a fixed xor butterfly.
//    The 8 words' sums go through the warp's own shared tile (Q or at most 128 queries x 9 floats,
//    dynamic), and all 32 lanes form the scores and write them as 32-byte runs of each query's row,
//    with no block-wide barrier, so a long word delays only its own warp.
//
// With a row table, row_sums_kernel runs between steps 3 and 4: the same lanes and gathers over
// each pattern row's indices, written as row_sums[r * Q + q]; score_kernel then gathers from
// row_sums with the row ids of the words' sets. Most rows' sums serve many words, and the row
// sums of a dictionary (14,000 rows x 64 queries: 3.6 MB) stay in L2.
//
// Every sum has a fixed order (each lane in position order, then the fixed butterfly; the block
// reduction for S_q), so results are bitwise reproducible; no floating-point atomics. Bad dictionary
// values set a bit of error_flag and are skipped, so bad input never reads or writes out of bounds.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/numeric.h"
#include "sparse/dictionary_score.h"

namespace lmk::sparse {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTotalsThreads = 1024;  // one query (a decoding step) is one block: v = 32000 is 31 loads a thread
constexpr int kTile = 32;             // activate_kernel: 32 vocabulary indices x 32 queries
constexpr int kWordsPerWarp = 8;      // 8 floats: a 32-byte sector of each query's row of scores
constexpr int64_t kMaxGridX = 0x7fffffff;
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ void flag_error(int32_t* flag, int32_t bit) { atomicOr(flag, bit); }

template <typename T>
__device__ __forceinline__ float sigmoid(T x) {
  return 1.f / (1.f + expf(-to_float(x)));
}

struct DeviceWords {
  const int32_t* ne_indices;
  const int32_t* ne_offsets;
  const int32_t* edge_indices;
  const int32_t* edge_offsets;
  const int32_t* counts;
  int64_t ne_count;
  int64_t edge_count;
  int64_t num_words;
};

// Offsets: offsets[0] = 0, non-decreasing, offsets[W] = count; counts >= 1.
__global__ void check_kernel(DeviceWords words, int32_t* __restrict__ flag) {
  for (int64_t w = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; w <= words.num_words;
       w += int64_t(gridDim.x) * blockDim.x) {
    bool offsets_ok = true;
    if (w == 0) offsets_ok = words.ne_offsets[0] == 0 && words.edge_offsets[0] == 0;
    if (w == words.num_words) {
      offsets_ok = offsets_ok && words.ne_offsets[w] == words.ne_count && words.edge_offsets[w] == words.edge_count;
    } else {
      offsets_ok = offsets_ok && words.ne_offsets[w] <= words.ne_offsets[w + 1] &&
                   words.edge_offsets[w] <= words.edge_offsets[w + 1];
      if (words.counts[w] < 1) flag_error(flag, kDictionaryBadCount);
    }
    if (!offsets_ok) flag_error(flag, kDictionaryBadOffsets);
  }
}

// Row offsets: offsets[0] = 0, non-decreasing, offsets[R] = count.
__global__ void check_row_offsets_kernel(const int32_t* __restrict__ offsets, int64_t num_rows, int64_t count,
                                         int32_t* __restrict__ flag) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r <= num_rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    const bool ok = (r > 0 || offsets[0] == 0) &&
                    (r == num_rows ? offsets[r] == count : offsets[r] <= offsets[r + 1]);
    if (!ok) flag_error(flag, kDictionaryBadRowOffsets);
  }
}

// Only for Q = 0 or W = 0, where the gathers read no index and so check none.
__global__ void check_range_kernel(const int32_t* __restrict__ indices, int64_t n, int64_t bound, int32_t bit,
                                   int32_t* __restrict__ flag) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (indices[i] < 0 || indices[i] >= bound) flag_error(flag, bit);
}

// activations[i * Q + q] = sigmoid(logits[q, i]) for a tile of 32 indices i0.. x 32 queries q0..: read
// along the logits rows, written back along the workspace rows. The written part of the tile is one
// contiguous run when Q <= 32, else 32-float runs.
template <typename T>
__global__ void activate_kernel(const T* __restrict__ logits, int64_t stride, int64_t num_queries, int64_t vocab,
                                float* __restrict__ activations) {
  __shared__ float tile[kTile][kTile + 1];  // [q - q0][i - i0]
  for (int64_t i0 = int64_t(blockIdx.x) * kTile; i0 < vocab; i0 += int64_t(gridDim.x) * kTile) {
    for (int64_t q0 = int64_t(blockIdx.y) * kTile; q0 < num_queries; q0 += int64_t(gridDim.y) * kTile) {
      const int rows = vocab - i0 < kTile ? int(vocab - i0) : kTile;
      const int cols = num_queries - q0 < kTile ? int(num_queries - q0) : kTile;
      for (int t = threadIdx.x; t < kTile * kTile; t += kThreads) {
        const int q = t / kTile, i = t % kTile;
        if (q < cols && i < rows) tile[q][i] = sigmoid(logits[(q0 + q) * stride + i0 + i]);
      }
      __syncthreads();
      for (int t = threadIdx.x; t < rows * cols; t += kThreads)
        activations[(i0 + t / cols) * num_queries + q0 + t % cols] = tile[t % cols][t / cols];
      __syncthreads();  // the tile is reused by the next step
    }
  }
}

// totals[q] = sum_i sigmoid(logits[q, i]): each thread sums its strided columns in order, then a fixed
// butterfly per warp and the warps' sums in order.
template <typename T>
__global__ void __launch_bounds__(kTotalsThreads)
    totals_kernel(const T* __restrict__ logits, int64_t stride, int64_t num_queries, int64_t vocab,
                  float* __restrict__ totals) {
  __shared__ float warp_sums[kTotalsThreads / 32];
  for (int64_t q = blockIdx.x; q < num_queries; q += gridDim.x) {
    const T* row = logits + q * stride;
    float sum = 0.f;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < vocab; i += kTotalsThreads) sum += sigmoid(row[i]);
#pragma unroll
    for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.f;
      for (int k = 0; k < kTotalsThreads / 32; ++k) total += warp_sums[k];
      totals[q] = total;
    }
    __syncthreads();  // warp_sums is reused by the next row
  }
}

// How a lane's V queries lie in its group of C * V queries: kRuns runs of kWidth adjacent queries
// (a float4 of an activations row; one float when Q % 4 != 0). Run k of column c starts at query
// (c + k * C) * kWidth of the group, so each load instruction of a group's C lanes reads C * kWidth
// contiguous floats of the row (with V = 8 and C = 8: two 128-byte lines per instruction).
template <int V>
struct Lane {
  static constexpr int kRuns = V == 8 ? 2 : 1;
  static constexpr int kWidth = V / kRuns;
  const char* row0[kRuns];  // the run's first query in row 0 of the gathered table
  bool active[kRuns];       // the run holds queries (all kWidth of them, as kWidth = 4 needs Q % 4 == 0)
};

// What every lane of a launch shares about the gathered table.
struct Gather {
  uint32_t row_bytes;  // Q * 4: one table row; the host keeps it within 32 bits (one IMAD.WIDE.U32 an address)
  uint32_t bound;      // entries index rows [0, bound); min(bound, 2^31), so one unsigned compare also rejects < 0
  int column_bits;     // C = 2^column_bits columns, G = 32 / C groups
};

// Positions a lane loads before it adds: gathers in flight. 8 queries take 2 float4 per position, so
// 2 positions keep 4 float4 in flight as 4 do for V = 4; 3 positions spill at 64 registers.
template <int V>
constexpr int kUnroll = V == 8 ? 2 : 4;

template <int W>
__device__ __forceinline__ void load_run(const char* p, float* a) {
  if constexpr (W == 4) {
    const float4 x = __ldg(reinterpret_cast<const float4*>(p));
    a[0] = x.x, a[1] = x.y, a[2] = x.z, a[3] = x.w;
  } else {
    a[0] = __ldg(reinterpret_cast<const float*>(p));
  }
}

// Adds weight * row for the N positions p, p + G, ... of an index array to the lane's sums, in
// position order. kTail: some of the positions may be at or past the set's end. All index loads go
// out before any row load, and all row loads before any add.
template <int V, int N, bool kTail>
__device__ __forceinline__ void gather(const int32_t* indices, uint32_t p, uint32_t end, uint32_t groups,
                                       const Lane<V>& lane, const Gather& g, float weight, float (&s)[V],
                                       bool& bad_index) {
  constexpr int R = Lane<V>::kRuns, W = Lane<V>::kWidth;
  bool valid[N], ok[N];
  int32_t index[N];
#pragma unroll
  for (int u = 0; u < N; ++u) {
    valid[u] = !kTail || p + u * groups < end;
    index[u] = valid[u] ? __ldg(indices + (p + u * groups)) : 0;
  }
#pragma unroll
  for (int u = 0; u < N; ++u) {
    ok[u] = valid[u] && uint32_t(index[u]) < g.bound;
    bad_index |= valid[u] && !ok[u];
  }
  float a[N][V];
#pragma unroll
  for (int u = 0; u < N; ++u) {
#pragma unroll
    for (int k = 0; k < R; ++k) {
      if (lane.active[k] && ok[u])
        load_run<W>(lane.row0[k] + uint64_t(uint32_t(index[u])) * g.row_bytes, &a[u][k * W]);
    }
  }
#pragma unroll
  for (int u = 0; u < N; ++u) {
    if (!ok[u]) continue;
#pragma unroll
    for (int k = 0; k < R; ++k) {
      if (!lane.active[k]) continue;
#pragma unroll
      for (int j = 0; j < W; ++j) s[k * W + j] += weight * a[u][k * W + j];
    }
  }
}

// The lane's positions p, p + G, ... < end of one set, N at a time; fewer than N are left for the
// tail. Positions are absolute, so that the kernel's parameter is the only pointer (no register).
template <int V>
__device__ __forceinline__ void sum_set(const int32_t* indices, uint32_t p, uint32_t end, uint32_t groups,
                                        const Lane<V>& lane, const Gather& g, float weight, float (&s)[V],
                                        bool& bad_index) {
  constexpr int N = kUnroll<V>;
#pragma unroll 1
  for (; p + (N - 1) * groups < end; p += N * groups)
    gather<V, N, false>(indices, p, end, groups, lane, g, weight, s, bad_index);
  if (p < end) gather<V, N, true>(indices, p, end, groups, lane, g, weight, s, bad_index);
}

// One set's sums s = sum NE + e * sum E for the lane's V queries (a word's two sets, or a row of
// the table as an NE set alone). Group g takes positions g, g + G, g + 2G, ... of the NE entries
// followed by the E entries, each an entry in [0, bound); the NE walk and the E walk are separate
// loops (no per-position choice of set and weight), and the E walk starts where the lane's own
// sequence crosses into the E entries, so each lane adds in the same order as one walk over both.
// Then the C columns' groups meet in a fixed xor butterfly, so that lane `column` of group 0 ends
// with its queries' sums. The whole warp must call it.
template <int V>
__device__ __forceinline__ void warp_sums(const int32_t* ne_indices, uint32_t ne_begin, uint32_t ne_end,
                                          const int32_t* edge_indices, uint32_t edge_begin, uint32_t edge_end,
                                          float edge_weight, const Lane<V>& lane, const Gather& g, float (&s)[V],
                                          bool& bad_index) {
  const uint32_t groups = 32u >> g.column_bits, group = (threadIdx.x % 32) >> g.column_bits;
  sum_set<V>(ne_indices, ne_begin + group, ne_end, groups, lane, g, 1.f, s, bad_index);
  // The lane's first position at or past n_ne is n_ne + ((group - n_ne) mod G), G a power of two.
  const uint32_t n_ne = ne_end - ne_begin;
  sum_set<V>(edge_indices, edge_begin + ((group - n_ne) & (groups - 1)), edge_end, groups, lane, g, edge_weight, s,
             bad_index);
  for (int mask = 1 << g.column_bits; mask < 32; mask *= 2) {
#pragma unroll
    for (int j = 0; j < V; ++j) s[j] += __shfl_xor_sync(0xffffffffu, s[j], mask);
  }
}

// The lane's runs in the query group that starts at q0 (see Lane).
template <int V>
__device__ __forceinline__ Lane<V> lane_runs(const float* table, int q0, int column, int columns, int num_queries) {
  Lane<V> lane;
#pragma unroll
  for (int k = 0; k < Lane<V>::kRuns; ++k) {
    const int q = q0 + (column + k * columns) * Lane<V>::kWidth;
    lane.active[k] = q < num_queries;
    lane.row0[k] = reinterpret_cast<const char*>(table + (lane.active[k] ? q : 0));
  }
  return lane;
}

// Warp task t: words [8t, 8t + 8) against each group of C * V queries that its block's y index
// picks; lanes and positions as in the file comment. 4 blocks of 256 threads per SM: <= 64
// registers, and the dynamic tile of tile_rows = min(C * V, Q) queries x 9 floats per warp
// (at most 36.9 KB a block).
template <int V>
__global__ void __launch_bounds__(kThreads, 4)
    score_kernel(DeviceWords words, const float* __restrict__ table, const float* __restrict__ totals,
                 int num_queries, int64_t vocab, int64_t m, float edge_weight, bool contrast, Gather g,
                 int tile_rows, float* __restrict__ scores, int32_t* __restrict__ flag) {
  extern __shared__ float tiles[];  // per warp: [query in group][word in task]
  constexpr int W = Lane<V>::kWidth;
  const int lane_id = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int columns = 1 << g.column_bits;
  const int column = lane_id & (columns - 1), group = lane_id >> g.column_bits;
  const int group_queries = columns * V;
  const int64_t num_words = words.num_words;
  float* tile = tiles + warp * tile_rows * (kWordsPerWarp + 1);
  bool bad_index = false;  // reported once, at the end

  for (int64_t w0 = (int64_t(blockIdx.x) * kWarps + warp) * kWordsPerWarp; w0 < num_words;
       w0 += int64_t(gridDim.x) * kWarps * kWordsPerWarp) {
    const int task_words = num_words - w0 < kWordsPerWarp ? int(num_words - w0) : kWordsPerWarp;
    // Lane k <= task_words holds offsets[w0 + k]: where word w0 + k begins and word w0 + k - 1 ends.
    const bool has_offset = lane_id <= task_words;
    const int32_t ne_offset = has_offset ? words.ne_offsets[w0 + lane_id] : 0;
    const int32_t edge_offset = has_offset ? words.edge_offsets[w0 + lane_id] : 0;

    for (int q0 = int(blockIdx.y) * group_queries; q0 < num_queries; q0 += int(gridDim.y) * group_queries) {
      const Lane<V> lane = lane_runs<V>(table, q0, column, columns, num_queries);
      for (int k = 0; k < task_words; ++k) {
        const int32_t ne_begin = __shfl_sync(0xffffffffu, ne_offset, k);
        const int32_t ne_end = __shfl_sync(0xffffffffu, ne_offset, k + 1);
        const int32_t edge_begin = __shfl_sync(0xffffffffu, edge_offset, k);
        const int32_t edge_end = __shfl_sync(0xffffffffu, edge_offset, k + 1);
        // A malformed set (flagged by check_kernel) counts as empty.
        const bool ne_ok = 0 <= ne_begin && ne_begin <= ne_end && ne_end <= words.ne_count;
        const bool edge_ok = 0 <= edge_begin && edge_begin <= edge_end && edge_end <= words.edge_count;

        float s[V] = {};
        warp_sums<V>(words.ne_indices, ne_ok ? ne_begin : 0, ne_ok ? ne_end : 0, words.edge_indices,
                     edge_ok ? edge_begin : 0, edge_ok ? edge_end : 0, edge_weight, lane, g, s, bad_index);
        if (group == 0) {
#pragma unroll
          for (int r = 0; r < Lane<V>::kRuns; ++r) {
            if (!lane.active[r]) continue;
            const int qq = (column + r * columns) * W;  // the run's first query in the group
#pragma unroll
            for (int j = 0; j < W; ++j) tile[(qq + j) * (kWordsPerWarp + 1) + k] = s[r * W + j];
          }
        }
      }
      __syncwarp();
      // Lane t writes word t % 8 of query t / 8: 32-byte runs of the group's rows of scores. The
      // scores are formed here, by all 32 lanes rather than the C lanes of group 0.
      const int rows = min(num_queries - q0, group_queries);
      const int word = lane_id % kWordsPerWarp;  // the same for every t, as 32 is a multiple of 8
      // The word's trigram count is read here, once per query group, rather than once per task:
      // held across the gathers it would take registers that the 4 blocks per SM do not leave.
      const int64_t slots = m * int64_t(word < task_words ? words.counts[w0 + word] : 1);
      const float off_pattern = float(vocab - slots);
      for (int t = lane_id; t < rows * kWordsPerWarp; t += 32) {
        const int qq = t / kWordsPerWarp;
        if (word < task_words) {
          const float sum = tile[qq * (kWordsPerWarp + 1) + word];
          float score = sum / float(slots);
          if (contrast && off_pattern > 0.f) score += (sum - totals[q0 + qq]) / off_pattern;
          scores[int64_t(q0 + qq) * num_words + w0 + word] = score;
        }
      }
      __syncwarp();  // the tile is reused by the next query group
    }
  }
  if (bad_index) flag_error(flag, kDictionaryBadIndex);
}

// Warp task t: rows [8t, 8t + 8) of the table, row_sums[r * Q + q] = sum of activations[i * Q + q]
// over the row's indices i; lanes, gathers and register bound as in score_kernel.
template <int V>
__global__ void __launch_bounds__(kThreads, 4)
    row_sums_kernel(const int32_t* __restrict__ row_indices, const int32_t* __restrict__ row_offsets,
                    int64_t row_count, int64_t num_rows, const float* __restrict__ activations, int num_queries,
                    Gather g, float* __restrict__ row_sums, int32_t* __restrict__ flag) {
  constexpr int W = Lane<V>::kWidth;
  const int lane_id = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int columns = 1 << g.column_bits;
  const int column = lane_id & (columns - 1), group = lane_id >> g.column_bits;
  const int group_queries = columns * V;
  const int64_t num_tasks = ceil_div(num_rows, kWordsPerWarp);
  bool bad_index = false;  // reported once, at the end

  for (int64_t task = int64_t(blockIdx.x) * kWarps + warp; task < num_tasks; task += int64_t(gridDim.x) * kWarps) {
    const int64_t r0 = task * kWordsPerWarp;
    const int task_rows = num_rows - r0 < kWordsPerWarp ? int(num_rows - r0) : kWordsPerWarp;
    const int32_t offset = lane_id <= task_rows ? row_offsets[r0 + lane_id] : 0;
    for (int q0 = int(blockIdx.y) * group_queries; q0 < num_queries; q0 += int(gridDim.y) * group_queries) {
      const Lane<V> lane = lane_runs<V>(activations, q0, column, columns, num_queries);
      for (int k = 0; k < task_rows; ++k) {
        const int32_t begin = __shfl_sync(0xffffffffu, offset, k), end = __shfl_sync(0xffffffffu, offset, k + 1);
        // A malformed row (flagged by check_row_offsets_kernel) counts as empty.
        const bool ok = 0 <= begin && begin <= end && end <= row_count;
        float s[V] = {};
        warp_sums<V>(row_indices, ok ? begin : 0, ok ? end : 0, row_indices, 0, 0, 1.f, lane, g, s, bad_index);
        if (group == 0) {
#pragma unroll
          for (int r = 0; r < Lane<V>::kRuns; ++r) {
            if (!lane.active[r]) continue;
            float* out = row_sums + (r0 + k) * num_queries + q0 + (column + r * columns) * W;
            if constexpr (W == 4) {
              *reinterpret_cast<float4*>(out) = make_float4(s[r * W], s[r * W + 1], s[r * W + 2], s[r * W + 3]);
            } else {
              *out = s[r];
            }
          }
        }
      }
    }
  }
  if (bad_index) flag_error(flag, kDictionaryBadRowIndex);
}

}  // namespace

void dictionary_scores_cuda(const TensorView& logits, const Dictionary& dictionary, const ScoreParams& params,
                            const TensorView& activations, const TensorView& totals, const OptionalView& row_sums,
                            const TensorView& scores, const TensorView& error_flag, void* stream) {
  CudaDeviceGuard guard(logits.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  int32_t* flag = error_flag.as<int32_t>();
  const int64_t num_queries = logits.size(0), vocab = logits.size(1), num_words = dictionary.num_words();
  // The gathers address a table row as a 32-bit byte count (Gather::row_bytes), and the lanes
  // count queries in int (up to Q + 65535 * 128).
  constexpr int64_t kMaxQueries = int64_t(UINT32_MAX / sizeof(float));
  if (num_queries > kMaxQueries)
    fail(ErrorKind::Value, "logits: at most ", kMaxQueries, " queries on CUDA, got ", num_queries);
  const bool contrast = params.variant == ScoreVariant::Contrast;
  const int64_t bound = dictionary.set_bound(vocab);
  const DeviceWords words{dictionary.ne_indices.as<const int32_t>(),   dictionary.ne_offsets.as<const int32_t>(),
                          dictionary.edge_indices.as<const int32_t>(), dictionary.edge_offsets.as<const int32_t>(),
                          dictionary.trigram_counts.as<const int32_t>(), dictionary.ne_indices.size(0),
                          dictionary.edge_indices.size(0),              num_words};

  const auto check_blocks = unsigned(std::min<int64_t>(ceil_div(num_words + 1, kThreads), 1024));
  check_kernel<<<check_blocks, kThreads, 0, s>>>(words, flag);
  LMK_CUDA_CHECK(cudaGetLastError());
  if (dictionary.has_rows()) {
    const auto blocks = unsigned(std::min<int64_t>(ceil_div(bound + 1, kThreads), 1024));
    check_row_offsets_kernel<<<blocks, kThreads, 0, s>>>(dictionary.row_offsets->as<const int32_t>(), bound,
                                                         dictionary.row_indices->size(0), flag);
    LMK_CUDA_CHECK(cudaGetLastError());
  }
  if (num_queries == 0 || num_words == 0) {  // no gather checks the indices then
    const auto check_range = [&](const TensorView& indices, int64_t limit, int32_t bit) {
      const int64_t n = indices.size(0);
      if (n == 0) return;
      const auto blocks = unsigned(std::min<int64_t>(ceil_div(n, kThreads), 1024));
      check_range_kernel<<<blocks, kThreads, 0, s>>>(indices.as<const int32_t>(), n, limit, bit, flag);
      LMK_CUDA_CHECK(cudaGetLastError());
    };
    check_range(dictionary.ne_indices, bound, kDictionaryBadIndex);
    check_range(dictionary.edge_indices, bound, kDictionaryBadIndex);
    if (dictionary.has_rows()) check_range(*dictionary.row_indices, vocab, kDictionaryBadRowIndex);
    return;
  }

  dispatch_float(logits.dtype, "logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const dim3 tiles(unsigned(std::min(ceil_div(vocab, kTile), kMaxGridX)),
                     unsigned(std::min(ceil_div(num_queries, kTile), kMaxGridY)));
    if (vocab > 0) {  // a grid of 0 blocks is an error; no index is in range then, and S_q = 0
      activate_kernel<T><<<tiles, kThreads, 0, s>>>(logits.as<const T>(), logits.stride(0), num_queries, vocab,
                                                     activations.as<float>());
      LMK_CUDA_CHECK(cudaGetLastError());
    }
    if (contrast) {
      const auto rows = unsigned(std::min<int64_t>(num_queries, kMaxGridX));
      totals_kernel<T><<<rows, kTotalsThreads, 0, s>>>(logits.as<const T>(), logits.stride(0), num_queries, vocab,
                                                       totals.as<float>());
      LMK_CUDA_CHECK(cudaGetLastError());
    }
  });

  // Lanes (file comment): float4 runs need Q % 4 == 0 and a 16-byte aligned workspace (the op's
  // allocations are); two runs a lane from Q = 32, where they fill at least 4 lanes a group and
  // halve the positions each lane walks, for more butterfly shuffles than Q < 32 would repay.
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec4 = num_queries % 4 == 0 && aligned(activations.data) && (!row_sums || aligned(row_sums->data));
  const int v = !vec4 ? 1 : num_queries >= 32 ? 8 : 4;
  const int64_t lanes_per_row = vec4 ? ceil_div(num_queries / 4, int64_t(v / 4)) : num_queries;
  // At most 128 queries a group (16 columns of 8), so that the score tile stays 36.9 KB a block.
  const int max_column_bits = v == 8 ? 4 : 5;
  int column_bits = 0;
  while (column_bits < max_column_bits && (int64_t(1) << column_bits) < lanes_per_row) ++column_bits;
  const int64_t group_queries = (int64_t(1) << column_bits) * v;
  const auto grid_for = [&](int64_t items) {
    return dim3(unsigned(std::min(ceil_div(ceil_div(items, kWordsPerWarp), kWarps), kMaxGridX)),
                unsigned(std::min(ceil_div(num_queries, group_queries), kMaxGridY)));
  };
  const auto gather_for = [&](int64_t table_rows) {
    return Gather{uint32_t(num_queries * int64_t(sizeof(float))),
                  uint32_t(std::min<int64_t>(table_rows, int64_t(1) << 31)), column_bits};
  };
  const float* table = activations.as<const float>();
  if (dictionary.has_rows() && bound > 0) {
    const auto launch_rows = [&](auto kernel) {
      kernel<<<grid_for(bound), kThreads, 0, s>>>(dictionary.row_indices->as<const int32_t>(),
                                                  dictionary.row_offsets->as<const int32_t>(),
                                                  dictionary.row_indices->size(0), bound, table, int(num_queries),
                                                  gather_for(vocab), row_sums->as<float>(), flag);
      LMK_CUDA_CHECK(cudaGetLastError());
    };
    if (v == 8) launch_rows(row_sums_kernel<8>);
    else if (v == 4) launch_rows(row_sums_kernel<4>);
    else launch_rows(row_sums_kernel<1>);
  }
  if (dictionary.has_rows()) table = row_sums->as<const float>();
  const int tile_rows = int(std::min(group_queries, num_queries));
  const size_t tile_bytes = size_t(kWarps) * tile_rows * (kWordsPerWarp + 1) * sizeof(float);
  const auto launch = [&](auto kernel) {
    kernel<<<grid_for(num_words), kThreads, tile_bytes, s>>>(
        words, table, totals.as<const float>(), int(num_queries), vocab, params.indices_per_trigram, params.edge_weight,
        contrast, gather_for(bound), tile_rows, scores.as<float>(), flag);
    LMK_CUDA_CHECK(cudaGetLastError());
  };
  if (v == 8) launch(score_kernel<8>);
  else if (v == 4) launch(score_kernel<4>);
  else launch(score_kernel<1>);
}

}  // namespace lmk::sparse
