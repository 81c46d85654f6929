// Dictionary scoring on CUDA (see dictionary_score.h), in three steps on the caller's stream:
//
// 1. check_kernel: offsets monotone and complete, trigram counts >= 1 (error-flag bits).
// 2. activate_kernel: one block per query row: sigmoid of the logits into the transposed
//    workspace activations[i * Q + q], and S_q by a fixed-shape block reduction.
// 3. score_kernel: one warp per word and per group of 32 queries (a query per lane). The warp
//    loads 32 of the word's indices at once, coalesced, and broadcasts them; each index then costs
//    one coalesced read of its activations row. A block's 8 words go out through shared memory
//    as 32-byte runs of each query's row of scores.
//
// Each output is summed by one thread in index order, so results are bitwise reproducible; no
// floating-point atomics. Bad dictionary values set a bit of error_flag and are skipped, so bad
// input never reads or writes out of bounds.
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
constexpr int64_t kMaxGridX = 0x7fffffff;
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ void flag_error(int32_t* flag, int32_t bit) { atomicOr(flag, bit); }

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

// Only for Q = 0, where score_kernel reads no index and so checks none.
__global__ void check_range_kernel(const int32_t* __restrict__ indices, int64_t n, int64_t vocab,
                                   int32_t* __restrict__ flag) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    if (indices[i] < 0 || indices[i] >= vocab) flag_error(flag, kDictionaryBadIndex);
}

// Row q: activations[i * Q + q] = sigmoid(logits[q, i]); totals[q] = their sum, each thread summing
// its strided columns in order, then a fixed butterfly per warp and the warps' sums in order.
template <typename T>
__global__ void activate_kernel(const T* __restrict__ logits, int64_t stride, int64_t num_queries, int64_t vocab,
                                float* __restrict__ activations, float* __restrict__ totals) {
  __shared__ float warp_sums[kWarps];
  for (int64_t q = blockIdx.x; q < num_queries; q += gridDim.x) {
    const T* row = logits + q * stride;
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      const float a = 1.f / (1.f + expf(-to_float(row[i])));
      activations[i * num_queries + q] = a;
      sum += a;
    }
#pragma unroll
    for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.f;
      for (int k = 0; k < kWarps; ++k) total += warp_sums[k];
      totals[q] = total;
    }
    __syncthreads();  // warp_sums is reused by the next row
  }
}

// sum over the positions [begin, end) of indices, in order, of activations[index * Q + q]. The
// warp reads 32 indices at a time (one coalesced load) and broadcasts them lane by lane.
__device__ float gather(const int32_t* __restrict__ indices, int64_t begin, int64_t end,
                        const float* __restrict__ activations, int64_t num_queries, int64_t vocab, int64_t q,
                        int lane, int32_t* __restrict__ flag) {
  float sum = 0.f;
  for (int64_t base = begin; base < end; base += 32) {
    const int count = end - base < 32 ? int(end - base) : 32;
    const int32_t mine = lane < count ? indices[base + lane] : 0;
    if (mine < 0 || mine >= vocab) flag_error(flag, kDictionaryBadIndex);
    for (int k = 0; k < count; ++k) {
      const int32_t i = __shfl_sync(0xffffffffu, mine, k);
      if (i >= 0 && i < vocab && q < num_queries) sum += activations[int64_t(i) * num_queries + q];
    }
  }
  return sum;
}

__global__ void score_kernel(DeviceWords words, const float* __restrict__ activations,
                             const float* __restrict__ totals, int64_t num_queries, int64_t vocab, int64_t m,
                             float edge_weight, bool contrast, float* __restrict__ scores,
                             int32_t* __restrict__ flag) {
  __shared__ float tile[32][kWarps + 1];  // [query in group][word in block]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t w0 = int64_t(blockIdx.x) * kWarps; w0 < words.num_words; w0 += int64_t(gridDim.x) * kWarps) {
    for (int64_t q0 = int64_t(blockIdx.y) * 32; q0 < num_queries; q0 += int64_t(gridDim.y) * 32) {
      const int64_t w = w0 + warp, q = q0 + lane;
      float score = 0.f;
      if (w < words.num_words) {
        const int64_t ne_begin = words.ne_offsets[w], ne_end = words.ne_offsets[w + 1];
        const int64_t edge_begin = words.edge_offsets[w], edge_end = words.edge_offsets[w + 1];
        // A malformed word (flagged by check_kernel) gathers nothing.
        const bool ne_ok = 0 <= ne_begin && ne_begin <= ne_end && ne_end <= words.ne_count;
        const bool edge_ok = 0 <= edge_begin && edge_begin <= edge_end && edge_end <= words.edge_count;
        const float ne = ne_ok ? gather(words.ne_indices, ne_begin, ne_end, activations, num_queries, vocab, q,
                                        lane, flag)
                               : 0.f;
        const float edge = edge_ok ? gather(words.edge_indices, edge_begin, edge_end, activations, num_queries,
                                            vocab, q, lane, flag)
                                   : 0.f;
        const float s = ne + edge_weight * edge;
        const int64_t slots = m * int64_t(words.counts[w]);
        const float off_pattern = float(vocab - slots);
        score = s / float(slots);
        if (contrast && off_pattern > 0.f && q < num_queries) score += (s - totals[q]) / off_pattern;
      }
      tile[lane][warp] = score;
      __syncthreads();
      // Thread t writes word t % kWarps of query t / kWarps: runs of kWarps words per query row.
      for (int t = threadIdx.x; t < 32 * kWarps; t += kThreads) {
        const int64_t qq = q0 + t / kWarps, ww = w0 + t % kWarps;
        if (qq < num_queries && ww < words.num_words) scores[qq * words.num_words + ww] = tile[t / kWarps][t % kWarps];
      }
      __syncthreads();
    }
  }
}

}  // namespace

void dictionary_scores_cuda(const TensorView& logits, const Dictionary& dictionary, const ScoreParams& params,
                            const TensorView& activations, const TensorView& totals, const TensorView& scores,
                            const TensorView& error_flag, void* stream) {
  CudaDeviceGuard guard(logits.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  int32_t* flag = error_flag.as<int32_t>();
  const int64_t num_queries = logits.size(0), vocab = logits.size(1), num_words = dictionary.num_words();
  const DeviceWords words{dictionary.ne_indices.as<const int32_t>(),   dictionary.ne_offsets.as<const int32_t>(),
                          dictionary.edge_indices.as<const int32_t>(), dictionary.edge_offsets.as<const int32_t>(),
                          dictionary.trigram_counts.as<const int32_t>(), dictionary.ne_indices.size(0),
                          dictionary.edge_indices.size(0),              num_words};

  const auto check_blocks = unsigned(std::min<int64_t>(ceil_div(num_words + 1, kThreads), 1024));
  check_kernel<<<check_blocks, kThreads, 0, s>>>(words, flag);
  LMK_CUDA_CHECK(cudaGetLastError());
  if (num_queries == 0) {
    for (const TensorView* indices : {&dictionary.ne_indices, &dictionary.edge_indices}) {
      const int64_t n = indices->size(0);
      if (n == 0) continue;
      const auto blocks = unsigned(std::min<int64_t>(ceil_div(n, kThreads), 1024));
      check_range_kernel<<<blocks, kThreads, 0, s>>>(indices->as<const int32_t>(), n, vocab, flag);
      LMK_CUDA_CHECK(cudaGetLastError());
    }
    return;
  }

  dispatch_float(logits.dtype, "logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto blocks = unsigned(std::min<int64_t>(num_queries, kMaxGridX));
    activate_kernel<T><<<blocks, kThreads, 0, s>>>(logits.as<const T>(), logits.stride(0), num_queries, vocab,
                                                    activations.as<float>(), totals.as<float>());
    LMK_CUDA_CHECK(cudaGetLastError());
  });
  if (num_words == 0) return;

  const dim3 grid(unsigned(std::min(ceil_div(num_words, kWarps), kMaxGridX)),
                  unsigned(std::min(ceil_div(num_queries, 32), kMaxGridY)));
  score_kernel<<<grid, kThreads, 0, s>>>(words, activations.as<const float>(), totals.as<const float>(), num_queries,
                                         vocab, params.indices_per_trigram, params.edge_weight,
                                         params.variant == ScoreVariant::Contrast, scores.as<float>(), flag);
  LMK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace lmk::sparse
