// Sparse multi-label BCE on CUDA (see multilabel_bce.h): one block per position.
//
// The block's threads stride over the row, each summing softplus(x) of its elements in fp32 and
// writing w * sigmoid(x) as their gradient; after a barrier they go over the row's positives,
// each counted only at its first occurrence in the row (so duplicates count once, and the same
// thread handles a given positive on every run), adding P * softplus(-x) - softplus(x) and
// overwriting the gradient with -w * P * sigmoid(-x). Both sums are reduced across the block in a
// fixed tree (warp shuffles, then the warps' partials in order), so results are bitwise
// reproducible without atomics. Bad indices and offsets set a bit of error_flag and are skipped.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/numeric.h"
#include "sparse/multilabel_bce.h"

namespace lmk::sparse {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = 0x7fffffff;

__device__ __forceinline__ void flag_error(int32_t* flag, int32_t bit) { atomicOr(flag, bit); }

// log(1 + e^x) without overflow.
__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }

// 1 / (1 + e^-x) from e^-|x|, which never overflows.
__device__ __forceinline__ float sigmoid(float x) {
  const float e = expf(-fabsf(x));
  return x >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
}

// The sum of `value` over the block, returned to thread 0: a butterfly within each warp, then
// warp 0 adds the warps' partials in warp order. `partials` holds kWarps floats.
__device__ float block_sum(float value, float* partials) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int m = 16; m > 0; m /= 2) value += __shfl_xor_sync(0xffffffffu, value, m);
  if (lane == 0) partials[warp] = value;
  __syncthreads();
  float total = 0.f;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) total += partials[w];
  __syncthreads();  // partials may be reused by the next call
  return total;
}

template <typename T, typename I>
__global__ void multilabel_bce_kernel(const T* __restrict__ logits, int64_t row_stride, int64_t num_positions,
                                      int64_t v, const I* __restrict__ indices, const I* __restrict__ offsets,
                                      int64_t num_indices, const float* __restrict__ weights, float pos_weight,
                                      float* __restrict__ loss, T* __restrict__ grad, int32_t* __restrict__ flag) {
  __shared__ float partials[kWarps];
  // p is the same across the block, so every thread reaches the barriers in block_sum.
  for (int64_t p = blockIdx.x; p < num_positions; p += gridDim.x) {
    const T* x = logits + p * row_stride;
    T* g = grad ? grad + p * v : nullptr;
    const float w = weights ? weights[p] : 1.f;

    float dense = 0.f;
    for (int64_t i = threadIdx.x; i < v; i += kThreads) {
      const float xi = to_float(x[i]);
      dense += softplus(xi);
      if (g) g[i] = from_float<T>(w * sigmoid(xi));
    }
    __syncthreads();  // the dense gradient is written before positives overwrite it

    const int64_t start = offsets[p], end = offsets[p + 1];
    // A malformed row (flagged by check_offsets_kernel) contributes no positives.
    const bool row_ok = 0 <= start && start <= end && end <= num_indices;
    float correction = 0.f;
    for (int64_t k = start + threadIdx.x; row_ok && k < end; k += kThreads) {
      const int64_t j = indices[k];
      if (j < 0 || j >= v) {
        flag_error(flag, kBceBadIndex);
        continue;
      }
      // Quadratic in the row's positives (about 50 in T-FREE), but needs no scratch memory or sort.
      bool first = true;
      for (int64_t earlier = start; earlier < k && first; ++earlier) first = int64_t(indices[earlier]) != j;
      if (!first) continue;
      const float xj = to_float(x[j]);
      correction += pos_weight * softplus(-xj) - softplus(xj);
      if (g) g[j] = from_float<T>(-w * pos_weight * sigmoid(-xj));
    }

    const float dense_total = block_sum(dense, partials);
    const float correction_total = block_sum(correction, partials);
    if (threadIdx.x == 0) loss[p] = w * (dense_total + correction_total);
  }
}

// offsets[0] = 0, non-decreasing, offsets[num_positions] = num_indices.
template <typename I>
__global__ void check_offsets_kernel(const I* __restrict__ offsets, int64_t count, int64_t num_indices,
                                     int32_t* __restrict__ flag) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = offsets[i];
    bool ok = 0 <= o && o <= num_indices;
    if (i + 1 < count) ok = ok && o <= int64_t(offsets[i + 1]);
    if (i == 0) ok = ok && o == 0;
    if (i == count - 1) ok = ok && o == num_indices;
    if (!ok) flag_error(flag, kBceBadOffsets);
  }
}

// grad_logits[p, i] = grad[p, i] * grad_loss[p], over a grid-stride loop of elements.
template <typename T>
__global__ void scale_rows_kernel(const T* __restrict__ grad, const float* __restrict__ grad_loss, int64_t v,
                                  int64_t numel, T* __restrict__ grad_logits) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < numel; k += int64_t(gridDim.x) * blockDim.x)
    grad_logits[k] = from_float<T>(to_float(grad[k]) * grad_loss[k / v]);
}

}  // namespace

void multilabel_bce_cuda(const TensorView& logits, const MultiLabelTargets& targets, const TensorView& loss,
                         const OptionalView& grad, const TensorView& error_flag, void* stream) {
  CudaDeviceGuard guard(logits.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  int32_t* flag = error_flag.as<int32_t>();
  const int64_t num_positions = targets.num_positions(), v = logits.size(1), n = targets.num_indices();
  dispatch_index(targets.indices.dtype, "pos_indices", [&](auto index_tag) {
    using I = typename decltype(index_tag)::type;
    const I* offsets = targets.offsets.as<const I>();
    const auto check_blocks = unsigned(std::min<int64_t>(ceil_div(num_positions + 1, kThreads), 1024));
    check_offsets_kernel<I><<<check_blocks, kThreads, 0, s>>>(offsets, num_positions + 1, n, flag);
    LMK_CUDA_CHECK(cudaGetLastError());
    if (num_positions == 0) return;
    dispatch_float(logits.dtype, "logits", [&](auto value_tag) {
      using T = typename decltype(value_tag)::type;
      const auto blocks = unsigned(std::min(num_positions, kMaxBlocks));
      multilabel_bce_kernel<T, I><<<blocks, kThreads, 0, s>>>(
          logits.as<const T>(), logits.stride(0), num_positions, v, targets.indices.as<const I>(), offsets, n,
          targets.weights ? targets.weights->as<const float>() : nullptr, targets.pos_weight, loss.as<float>(),
          grad ? grad->as<T>() : nullptr, flag);
      LMK_CUDA_CHECK(cudaGetLastError());
    });
  });
}

void multilabel_bce_backward_cuda(const TensorView& grad, const TensorView& grad_loss, const TensorView& grad_logits,
                                  void* stream) {
  CudaDeviceGuard guard(grad.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t numel = grad.numel();
  if (numel == 0) return;
  dispatch_float(grad.dtype, "grad", [&](auto value_tag) {
    using T = typename decltype(value_tag)::type;
    const auto blocks = unsigned(std::min<int64_t>(ceil_div(numel, kThreads), 65535));
    scale_rows_kernel<T><<<blocks, kThreads, 0, s>>>(grad.as<const T>(), grad_loss.as<const float>(), grad.size(1),
                                                     numel, grad_logits.as<T>());
    LMK_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace lmk::sparse
