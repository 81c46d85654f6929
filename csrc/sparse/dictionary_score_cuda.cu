// Dictionary scoring on CUDA (see dictionary_score.h), in four steps on the caller's stream:
//
// 1. check_kernel: offsets monotone and complete, trigram counts >= 1 (error-flag bits).
// 2. activate_kernel: sigmoid of the logits into the transposed workspace activations[i * Q + q]
//    through 32 x 32 tiles in shared memory, so that the logits are read and the workspace written
//    in whole sectors whatever Q is (a store per query would scatter 4-byte writes Q floats apart).
// 3. totals_kernel (contrast only): S_q, one block per query row, by a fixed-shape block reduction.
// 4. score_kernel: a warp scores 8 consecutive words, one after another, against a group of
//    queries. Its lanes form C columns x G = 32 / C groups: a column owns V adjacent queries (V = 4,
//    one float4 per activations row, when Q % 4 == 0; otherwise 1), and group g takes positions g,
//    g + G, g + 2G, ... of the word's NE indices followed by its E indices. C is the smallest power
//    of two >= Q / V, at most 32 (more queries take several groups, over gridDim.y), so one query
//    spreads a word's indices over all 32 lanes and 64 queries read two 256-byte rows per load.
//    Each lane issues 4 index loads and then 4 row loads before it adds, to keep several gathers
//    from L2 in flight; the groups' partial sums then meet in a fixed xor butterfly. The 8 words'
//    scores go out from the warp's own shared tile as 32-byte runs of each query's row, with no
//    block-wide barrier, so a long word delays only its own warp.
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
constexpr int kUnroll = 4;            // positions a lane loads before it adds: gathers in flight
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

// The V activations of one index for a lane's queries.
template <int V>
__device__ __forceinline__ void load_row(const float* p, float (&a)[V]) {
  if constexpr (V == 4) {
    const float4 x = __ldg(reinterpret_cast<const float4*>(p));
    a[0] = x.x, a[1] = x.y, a[2] = x.z, a[3] = x.w;
  } else {
    a[0] = __ldg(p);
  }
}

// One set's sums s = sum NE + e * sum E for the lane's V queries (a word's two sets, or a row of
// the table as its NE set alone). Each lane sums its group's share of the n positions (n_ne in
// ne_set, then the rest in edge_set), each an entry in [0, bound); then the C = 2^column_bits
// columns' groups meet in a fixed xor butterfly, so that lane `column` of group 0 ends with its
// queries' sums. rows points at the lane's first query in the gathered table's row 0; active = the
// lane has queries. All kUnroll index loads go out before any row load, and all row loads before
// any add. The whole warp must call it.
template <int V>
__device__ __forceinline__ void warp_sums(const int32_t* ne_set, int64_t n_ne, const int32_t* edge_set, int64_t n,
                                          const float* __restrict__ rows, int64_t num_queries, int64_t bound,
                                          float edge_weight, bool active, int column_bits, float (&s)[V],
                                          bool& bad_index) {
  const int groups = 32 >> column_bits, group = (threadIdx.x % 32) >> column_bits;
  for (int64_t p0 = group; p0 < n; p0 += int64_t(kUnroll) * groups) {
    int32_t index[kUnroll];  // -1: no position, or a bad index (skipped)
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t p = p0 + int64_t(u) * groups;
      index[u] = p < n ? __ldg(p < n_ne ? ne_set + p : edge_set + (p - n_ne)) : -1;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const bool in_range = 0 <= index[u] && index[u] < bound;
      bad_index |= p0 + int64_t(u) * groups < n && !in_range;
      if (!in_range) index[u] = -1;
    }
    float a[kUnroll][V];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (active && index[u] >= 0) load_row<V>(rows + int64_t(index[u]) * num_queries, a[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (active && index[u] >= 0) {
        const float weight = p0 + int64_t(u) * groups < n_ne ? 1.f : edge_weight;
#pragma unroll
        for (int j = 0; j < V; ++j) s[j] += weight * a[u][j];
      }
    }
  }
  for (int mask = 1 << column_bits; mask < 32; mask *= 2) {
#pragma unroll
    for (int j = 0; j < V; ++j) s[j] += __shfl_xor_sync(0xffffffffu, s[j], mask);
  }
}

// Warp task t: words [8t, 8t + 8) against each group of C * V queries that its block's y index
// picks; lanes and positions as in the file comment, with C = 2^column_bits. The register bounds
// are the most blocks per SM without spills: 4 (60 registers) for V = 1; 3 for V = 4, whose 16
// row values in flight per lane spill at 64 registers.
template <int V>
__global__ void __launch_bounds__(kThreads, V == 4 ? 3 : 4)
    score_kernel(DeviceWords words, const float* __restrict__ activations, const float* __restrict__ totals,
                 int64_t num_queries, int64_t bound, int64_t vocab, int64_t m, float edge_weight, bool contrast,
                 int column_bits, float* __restrict__ scores, int32_t* __restrict__ flag) {
  // Per warp: [query in group][word in task]; a group has at most 32 * V queries.
  __shared__ float tiles[kWarps][32 * V][kWordsPerWarp + 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int columns = 1 << column_bits;
  const int column = lane & (columns - 1), group = lane >> column_bits;
  const int64_t group_queries = int64_t(columns) * V;
  const int64_t num_words = words.num_words, num_tasks = ceil_div(num_words, kWordsPerWarp);
  float(*tile)[kWordsPerWarp + 1] = tiles[warp];
  bool bad_index = false;  // reported once, at the end

  for (int64_t task = int64_t(blockIdx.x) * kWarps + warp; task < num_tasks; task += int64_t(gridDim.x) * kWarps) {
    const int64_t w0 = task * kWordsPerWarp;
    const int task_words = num_words - w0 < kWordsPerWarp ? int(num_words - w0) : kWordsPerWarp;
    // Lane k <= task_words holds offsets[w0 + k] (where word w0 + k begins and word w0 + k - 1
    // ends), lane k < task_words the trigram count of word w0 + k.
    const bool has_offset = lane <= task_words, has_count = lane < task_words;
    const int32_t ne_offset = has_offset ? words.ne_offsets[w0 + lane] : 0;
    const int32_t edge_offset = has_offset ? words.edge_offsets[w0 + lane] : 0;
    const int32_t count = has_count ? words.counts[w0 + lane] : 1;

    for (int64_t q0 = int64_t(blockIdx.y) * group_queries; q0 < num_queries;
         q0 += int64_t(gridDim.y) * group_queries) {
      const int64_t q = q0 + int64_t(column) * V;  // the lane's first query
      const bool active = q < num_queries;        // then all V are: V = 4 only when Q % 4 == 0
      for (int k = 0; k < task_words; ++k) {
        const int64_t ne_begin = __shfl_sync(0xffffffffu, ne_offset, k);
        const int64_t ne_end = __shfl_sync(0xffffffffu, ne_offset, k + 1);
        const int64_t edge_begin = __shfl_sync(0xffffffffu, edge_offset, k);
        const int64_t edge_end = __shfl_sync(0xffffffffu, edge_offset, k + 1);
        const int64_t slots = m * int64_t(__shfl_sync(0xffffffffu, count, k));
        // A malformed set (flagged by check_kernel) counts as empty.
        const bool ne_ok = 0 <= ne_begin && ne_begin <= ne_end && ne_end <= words.ne_count;
        const bool edge_ok = 0 <= edge_begin && edge_begin <= edge_end && edge_end <= words.edge_count;
        const int64_t n_ne = ne_ok ? ne_end - ne_begin : 0;
        const int64_t n = n_ne + (edge_ok ? edge_end - edge_begin : 0);

        float s[V] = {};
        warp_sums<V>(words.ne_indices + (ne_ok ? ne_begin : 0), n_ne, words.edge_indices + (edge_ok ? edge_begin : 0),
                     n, activations + (active ? q : 0), num_queries, bound, edge_weight, active, column_bits, s,
                     bad_index);
        if (group == 0 && active) {
          const float off_pattern = float(vocab - slots);
#pragma unroll
          for (int j = 0; j < V; ++j) {
            float score = s[j] / float(slots);
            if (contrast && off_pattern > 0.f) score += (s[j] - totals[q + j]) / off_pattern;
            tile[column * V + j][k] = score;
          }
        }
      }
      __syncwarp();
      // Lane t writes word t % 8 of query t / 8: 32-byte runs of the group's rows of scores.
      const int tile_rows = num_queries - q0 < group_queries ? int(num_queries - q0) : int(group_queries);
      for (int t = lane; t < tile_rows * kWordsPerWarp; t += 32) {
        const int qq = t / kWordsPerWarp, ww = t % kWordsPerWarp;
        if (ww < task_words) scores[(q0 + qq) * num_words + w0 + ww] = tile[qq][ww];
      }
      __syncwarp();  // the tile is reused by the next query group
    }
  }
  if (bad_index) flag_error(flag, kDictionaryBadIndex);
}

// Warp task t: rows [8t, 8t + 8) of the table, row_sums[r * Q + q] = sum of activations[i * Q + q]
// over the row's indices i; lanes and gathers as in score_kernel, with the same register bounds.
template <int V>
__global__ void __launch_bounds__(kThreads, V == 4 ? 3 : 4)
    row_sums_kernel(const int32_t* __restrict__ row_indices, const int32_t* __restrict__ row_offsets,
                    int64_t row_count, int64_t num_rows, const float* __restrict__ activations, int64_t num_queries,
                    int64_t vocab, int column_bits, float* __restrict__ row_sums, int32_t* __restrict__ flag) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int columns = 1 << column_bits;
  const int column = lane & (columns - 1), group = lane >> column_bits;
  const int64_t group_queries = int64_t(columns) * V;
  const int64_t num_tasks = ceil_div(num_rows, kWordsPerWarp);
  bool bad_index = false;  // reported once, at the end

  for (int64_t task = int64_t(blockIdx.x) * kWarps + warp; task < num_tasks; task += int64_t(gridDim.x) * kWarps) {
    const int64_t r0 = task * kWordsPerWarp;
    const int task_rows = num_rows - r0 < kWordsPerWarp ? int(num_rows - r0) : kWordsPerWarp;
    const int32_t offset = lane <= task_rows ? row_offsets[r0 + lane] : 0;
    for (int64_t q0 = int64_t(blockIdx.y) * group_queries; q0 < num_queries;
         q0 += int64_t(gridDim.y) * group_queries) {
      const int64_t q = q0 + int64_t(column) * V;
      const bool active = q < num_queries;
      for (int k = 0; k < task_rows; ++k) {
        const int64_t begin = __shfl_sync(0xffffffffu, offset, k), end = __shfl_sync(0xffffffffu, offset, k + 1);
        // A malformed row (flagged by check_row_offsets_kernel) counts as empty.
        const bool ok = 0 <= begin && begin <= end && end <= row_count;
        const int64_t n = ok ? end - begin : 0;
        const int32_t* row = row_indices + (ok ? begin : 0);
        float s[V] = {};
        warp_sums<V>(row, n, row, n, activations + (active ? q : 0), num_queries, vocab, 1.f, active, column_bits, s,
                     bad_index);
        if (group == 0 && active) {
#pragma unroll
          for (int j = 0; j < V; ++j) row_sums[(r0 + k) * num_queries + q + j] = s[j];
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

  // float4 rows need Q % 4 == 0 and a 16-byte aligned workspace (the op's allocations are).
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec4 = num_queries % 4 == 0 && aligned(activations.data) && (!row_sums || aligned(row_sums->data));
  const int64_t lanes_per_row = vec4 ? num_queries / 4 : num_queries;
  int column_bits = 0;
  while (column_bits < 5 && (int64_t(1) << column_bits) < lanes_per_row) ++column_bits;
  const int64_t group_queries = (int64_t(1) << column_bits) * (vec4 ? 4 : 1);
  const auto grid_for = [&](int64_t items) {
    return dim3(unsigned(std::min(ceil_div(ceil_div(items, kWordsPerWarp), kWarps), kMaxGridX)),
                unsigned(std::min(ceil_div(num_queries, group_queries), kMaxGridY)));
  };
  const float* gathered = activations.as<const float>();
  if (dictionary.has_rows() && bound > 0) {
    const auto launch_rows = [&](auto kernel) {
      kernel<<<grid_for(bound), kThreads, 0, s>>>(dictionary.row_indices->as<const int32_t>(),
                                                  dictionary.row_offsets->as<const int32_t>(),
                                                  dictionary.row_indices->size(0), bound, gathered, num_queries,
                                                  vocab, column_bits, row_sums->as<float>(), flag);
      LMK_CUDA_CHECK(cudaGetLastError());
    };
    if (vec4) launch_rows(row_sums_kernel<4>);
    else launch_rows(row_sums_kernel<1>);
  }
  if (dictionary.has_rows()) gathered = row_sums->as<const float>();
  const auto launch = [&](auto kernel) {
    kernel<<<grid_for(num_words), kThreads, 0, s>>>(words, gathered, totals.as<const float>(), num_queries, bound,
                                                    vocab, params.indices_per_trigram, params.edge_weight, contrast,
                                                    column_bits, scores.as<float>(), flag);
    LMK_CUDA_CHECK(cudaGetLastError());
  };
  if (vec4) launch(score_kernel<4>);
  else launch(score_kernel<1>);
}

}  // namespace lmk::sparse
