// Word connectors on CUDA (see word_connector.h for the math).
//
// Word attention: one warp per (word, head); each lane owns the head dimensions lane, lane + 32, ...
// (at most 8), the dot products are warp sums by shuffles, and the softmax runs online over the
// word's keys. Its backward is two kernels so that every output element has one writer: a warp per
// (word, query head) for dq, and a warp per (word, KV head) that walks the word's keys for dk and
// dv, summing over the head group in order. Guide broadcast: one block per byte row, finding its
// word by binary search; its backward is one block per word summing that word's rows in order.
// Every reduction has a fixed order, so results are bitwise reproducible.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "attention/word_connector.h"
#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/numeric.h"

namespace lmk::attention {
namespace {

constexpr int kWarp = 32;
constexpr int kLanesDims = kMaxHeadDim / kWarp;  // head dimensions per lane
constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = 128;
constexpr int64_t kMaxGrid = 0x7fffffff;

__device__ __forceinline__ float warp_sum(float x) {
  for (int m = kWarp / 2; m > 0; m /= 2) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

// A head-dimension vector spread over a warp: element lane + 32 i in slot i.
struct Lanes {
  float x[kLanesDims];

  template <typename T>
  __device__ __forceinline__ void load(const T* row, int dim) {
#pragma unroll
    for (int i = 0; i < kLanesDims; ++i) {
      const int d = threadIdx.x % kWarp + i * kWarp;
      x[i] = d < dim ? to_float(row[d]) : 0.f;
    }
  }
  template <typename T>
  __device__ __forceinline__ void store(T* row, int dim, float factor = 1.f) const {
#pragma unroll
    for (int i = 0; i < kLanesDims; ++i) {
      const int d = threadIdx.x % kWarp + i * kWarp;
      if (d < dim) row[d] = from_float<T>(x[i] * factor);
    }
  }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < kLanesDims; ++i) x[i] = 0.f;
  }
  template <typename T>
  __device__ __forceinline__ float dot(const T* row, int dim) const {
    float partial = 0.f;
#pragma unroll
    for (int i = 0; i < kLanesDims; ++i) {
      const int d = threadIdx.x % kWarp + i * kWarp;
      if (d < dim) partial += x[i] * to_float(row[d]);
    }
    return warp_sum(partial);
  }
  // this = this * keep + alpha * row
  template <typename T>
  __device__ __forceinline__ void scale_add(float keep, float alpha, const T* row, int dim) {
#pragma unroll
    for (int i = 0; i < kLanesDims; ++i) {
      const int d = threadIdx.x % kWarp + i * kWarp;
      x[i] = x[i] * keep + (d < dim ? alpha * to_float(row[d]) : 0.f);
    }
  }
  __device__ __forceinline__ void add(float alpha, const Lanes& other) {
#pragma unroll
    for (int i = 0; i < kLanesDims; ++i) x[i] += alpha * other.x[i];
  }
};

struct Shape {
  int64_t words, rows, q_heads, kv_heads;
  int dim;
  float scale;
};

// The word's byte rows, or false (and the flag set) when cu_seqlens are out of order or range.
template <typename I>
__device__ __forceinline__ bool word_rows(const I* cu, int64_t w, int64_t rows, int64_t& first, int64_t& end,
                                          int32_t* flag) {
  first = cu[w];
  end = cu[w + 1];
  if (first < 0 || end < first || end > rows) {
    if (threadIdx.x % kWarp == 0) atomicOr(flag, kBadSeqlens);
    return false;
  }
  return true;
}

template <typename T, typename I>
__global__ void forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               const I* __restrict__ cu, T* __restrict__ out, float* __restrict__ lse, Shape s,
                               int32_t* flag) {
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; item < s.words * s.q_heads;
       item += warps) {
    const int64_t w = item / s.q_heads, h = item % s.q_heads, g = h / (s.q_heads / s.kv_heads);
    int64_t first, end;
    if (!word_rows(cu, w, s.rows, first, end, flag)) continue;
    Lanes query, acc;
    query.load(q + item * s.dim, s.dim);
    acc.zero();
    float most = -INFINITY, sum = 0.f;
    for (int64_t j = first; j < end; ++j) {
      const int64_t key = (j * s.kv_heads + g) * s.dim;
      const float score = s.scale * query.dot(k + key, s.dim);
      const float new_most = fmaxf(most, score);
      const float keep = most == -INFINITY ? 0.f : __expf(most - new_most);
      const float p = __expf(score - new_most);
      sum = sum * keep + p;
      acc.scale_add(keep, p, v + key, s.dim);
      most = new_most;
    }
    acc.store(out + item * s.dim, s.dim, end > first ? 1.f / sum : 0.f);
    if (threadIdx.x % kWarp == 0) lse[item] = end > first ? most + logf(sum) : -INFINITY;
  }
}

// dq and delta = sum_j p_j dout . v_j, in two passes over the word's keys.
template <typename T, typename I>
__global__ void grad_q_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const I* __restrict__ cu, const float* __restrict__ lse, const T* __restrict__ grad_out,
                              T* __restrict__ grad_q, float* __restrict__ delta_out, Shape s, int32_t* flag) {
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; item < s.words * s.q_heads;
       item += warps) {
    const int64_t w = item / s.q_heads, h = item % s.q_heads, g = h / (s.q_heads / s.kv_heads);
    int64_t first, end;
    if (!word_rows(cu, w, s.rows, first, end, flag)) continue;
    Lanes query, grad_o, acc;
    query.load(q + item * s.dim, s.dim);
    grad_o.load(grad_out + item * s.dim, s.dim);
    acc.zero();
    float delta = 0.f;
    for (int64_t j = first; j < end; ++j) {
      const int64_t key = (j * s.kv_heads + g) * s.dim;
      delta += __expf(s.scale * query.dot(k + key, s.dim) - lse[item]) * grad_o.dot(v + key, s.dim);
    }
    for (int64_t j = first; j < end; ++j) {
      const int64_t key = (j * s.kv_heads + g) * s.dim;
      const float p = __expf(s.scale * query.dot(k + key, s.dim) - lse[item]);
      const float grad_score = p * (grad_o.dot(v + key, s.dim) - delta);
      acc.scale_add(1.f, s.scale * grad_score, k + key, s.dim);
    }
    acc.store(grad_q + item * s.dim, s.dim);
    if (threadIdx.x % kWarp == 0) delta_out[item] = delta;
  }
}

// dk and dv, reading the delta that grad_q_kernel wrote (launched after it on the same stream).
template <typename T, typename I>
__global__ void grad_kv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               const I* __restrict__ cu, const float* __restrict__ lse, const T* __restrict__ grad_out,
                               const float* __restrict__ delta, T* __restrict__ grad_k, T* __restrict__ grad_v,
                               Shape s, int32_t* flag) {
  const int64_t group = s.q_heads / s.kv_heads;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; item < s.words * s.kv_heads;
       item += warps) {
    const int64_t w = item / s.kv_heads, g = item % s.kv_heads;
    int64_t first, end;
    if (!word_rows(cu, w, s.rows, first, end, flag)) continue;
    for (int64_t j = first; j < end; ++j) {
      const int64_t key = (j * s.kv_heads + g) * s.dim;
      Lanes grad_key, grad_value;
      grad_key.zero();
      grad_value.zero();
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const int64_t row = w * s.q_heads + h;
        Lanes query, grad_o;
        query.load(q + row * s.dim, s.dim);
        grad_o.load(grad_out + row * s.dim, s.dim);
        const float p = __expf(s.scale * query.dot(k + key, s.dim) - lse[row]);
        const float grad_score = p * (grad_o.dot(v + key, s.dim) - delta[row]);
        grad_key.add(s.scale * grad_score, query);
        grad_value.add(p, grad_o);
      }
      grad_key.store(grad_k + key, s.dim);
      grad_value.store(grad_v + key, s.dim);
    }
  }
}

// Zeroes the [rows, width] rows outside [cu[0], cu[words]), which no word owns.
template <typename T, typename I>
__global__ void zero_outside_kernel(T* __restrict__ t, const I* __restrict__ cu, int64_t words, int64_t rows,
                                    int64_t width) {
  const int64_t lo = cu[0], hi = cu[words];
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * width;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / width;
    if (r < lo || r >= hi) t[e] = from_float<T>(0.f);
  }
}

template <typename I>
__global__ void check_seqlens_kernel(const I* __restrict__ cu, int64_t words, int64_t rows, int32_t* flag) {
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (first == 0 && (cu[0] < 0 || cu[words] > rows)) atomicOr(flag, kBadSeqlens);
  for (int64_t w = first; w < words; w += int64_t(gridDim.x) * blockDim.x)
    if (cu[w + 1] < cu[w]) atomicOr(flag, kBadSeqlens);
}

// The word that holds row t: the last w with cu[w] <= t (cu checked by check_seqlens_kernel).
template <typename I>
__device__ __forceinline__ int64_t word_of(const I* cu, int64_t words, int64_t t) {
  int64_t lo = 0, hi = words;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (cu[mid] <= t) lo = mid;
    else hi = mid;
  }
  return lo;
}

template <typename T, typename I>
__global__ void broadcast_kernel(const T* __restrict__ x, const T* __restrict__ guide, const I* __restrict__ cu,
                                 T* __restrict__ out, int64_t words, int64_t rows, int64_t width) {
  const int64_t lo = cu[0], hi = cu[words];
  for (int64_t t = blockIdx.x; t < rows; t += gridDim.x) {
    const bool inside = t >= lo && t < hi;
    const int64_t w = inside ? word_of(cu, words, t) : 0;
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
      const float add = inside ? to_float(guide[w * width + c]) : 0.f;
      out[t * width + c] = from_float<T>(to_float(x[t * width + c]) + add);
    }
  }
}

template <typename T, typename I>
__global__ void broadcast_backward_kernel(const T* __restrict__ grad_out, const I* __restrict__ cu,
                                          T* __restrict__ grad_guide, int64_t words, int64_t rows, int64_t width,
                                          int32_t* flag) {
  for (int64_t w = blockIdx.x; w < words; w += gridDim.x) {
    int64_t first, end;
    if (!word_rows(cu, w, rows, first, end, flag)) continue;
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
      float sum = 0.f;
      for (int64_t t = first; t < end; ++t) sum += to_float(grad_out[t * width + c]);
      grad_guide[w * width + c] = from_float<T>(sum);
    }
  }
}

unsigned warp_grid(int64_t items) {
  return unsigned(std::min<int64_t>(std::max<int64_t>(ceil_div(items, kWarpsPerBlock), 1), kMaxGrid));
}

unsigned element_grid(int64_t elements) {
  return unsigned(std::min<int64_t>(std::max<int64_t>(ceil_div(elements, kThreads), 1), int64_t(1) << 16));
}

Shape shape_of(const TensorView& q, const TensorView& k, float scale) {
  return Shape{q.size(0), k.size(0), q.size(1), k.size(1), int(q.size(2)), scale};
}

}  // namespace

void word_attention_cuda(const WordAttentionForward& a, const TensorView& error_flag, void* stream) {
  CudaDeviceGuard guard(a.q.device_index);
  const auto st = static_cast<cudaStream_t>(stream);
  const Shape s = shape_of(a.q, a.k, a.scale);
  dispatch_float_index(a.q.dtype, "q", a.cu_seqlens.dtype, "cu_seqlens", [&](auto value_tag, auto index_tag) {
    using T = typename decltype(value_tag)::type;
    using I = typename decltype(index_tag)::type;
    if (a.q.numel() == 0) {  // no warp runs to check its word, so check the table alone
      check_seqlens_kernel<I><<<element_grid(s.words), kThreads, 0, st>>>(a.cu_seqlens.as<I>(), s.words, s.rows,
                                                                          error_flag.as<int32_t>());
      return;
    }
    forward_kernel<T, I><<<warp_grid(s.words * s.q_heads), kThreads, 0, st>>>(
        a.q.as<T>(), a.k.as<T>(), a.v.as<T>(), a.cu_seqlens.as<I>(), a.out.as<T>(), a.lse.as<float>(), s,
        error_flag.as<int32_t>());
  });
  LMK_CUDA_CHECK(cudaGetLastError());
}

void word_attention_backward_cuda(const WordAttentionBackward& a, const TensorView& error_flag, void* stream) {
  CudaDeviceGuard guard(a.q.device_index);
  const auto st = static_cast<cudaStream_t>(stream);
  const Shape s = shape_of(a.q, a.k, a.scale);
  const int64_t width = a.k.size(1) * a.k.size(2);
  dispatch_float_index(a.q.dtype, "q", a.cu_seqlens.dtype, "cu_seqlens", [&](auto value_tag, auto index_tag) {
    using T = typename decltype(value_tag)::type;
    using I = typename decltype(index_tag)::type;
    const I* cu = a.cu_seqlens.as<I>();
    int32_t* flag = error_flag.as<int32_t>();
    check_seqlens_kernel<I><<<element_grid(s.words), kThreads, 0, st>>>(cu, s.words, s.rows, flag);
    if (s.rows > 0 && width > 0) {
      zero_outside_kernel<T, I><<<element_grid(s.rows * width), kThreads, 0, st>>>(a.grad_k.as<T>(), cu, s.words,
                                                                                 s.rows, width);
      zero_outside_kernel<T, I><<<element_grid(s.rows * width), kThreads, 0, st>>>(a.grad_v.as<T>(), cu, s.words,
                                                                                 s.rows, width);
    }
    if (a.q.numel() == 0) return;
    grad_q_kernel<T, I><<<warp_grid(s.words * s.q_heads), kThreads, 0, st>>>(
        a.q.as<T>(), a.k.as<T>(), a.v.as<T>(), cu, a.lse.as<float>(), a.grad_out.as<T>(), a.grad_q.as<T>(),
        a.delta.as<float>(), s, flag);
    grad_kv_kernel<T, I><<<warp_grid(s.words * s.kv_heads), kThreads, 0, st>>>(
        a.q.as<T>(), a.k.as<T>(), a.v.as<T>(), cu, a.lse.as<float>(), a.grad_out.as<T>(), a.delta.as<float>(),
        a.grad_k.as<T>(), a.grad_v.as<T>(), s, flag);
  });
  LMK_CUDA_CHECK(cudaGetLastError());
}

void guide_broadcast_cuda(const GuideBroadcast& a, const TensorView& error_flag, void* stream) {
  const int64_t words = a.guide.size(0), rows = a.x.size(0), width = a.x.size(1);
  CudaDeviceGuard guard(a.x.device_index);
  const auto st = static_cast<cudaStream_t>(stream);
  dispatch_float_index(a.x.dtype, "x", a.cu_seqlens.dtype, "cu_seqlens", [&](auto value_tag, auto index_tag) {
    using T = typename decltype(value_tag)::type;
    using I = typename decltype(index_tag)::type;
    const I* cu = a.cu_seqlens.as<I>();
    check_seqlens_kernel<I><<<element_grid(words), kThreads, 0, st>>>(cu, words, rows, error_flag.as<int32_t>());
    if (rows == 0 || width == 0) return;
    broadcast_kernel<T, I><<<unsigned(std::min<int64_t>(rows, kMaxGrid)), kThreads, 0, st>>>(
        a.x.as<T>(), a.guide.as<T>(), cu, a.out.as<T>(), words, rows, width);
  });
  LMK_CUDA_CHECK(cudaGetLastError());
}

void guide_broadcast_backward_cuda(const GuideBroadcastBackward& a, const TensorView& error_flag, void* stream) {
  const int64_t words = a.grad_guide.size(0), rows = a.grad_out.size(0), width = a.grad_out.size(1);
  CudaDeviceGuard guard(a.grad_out.device_index);
  const auto st = static_cast<cudaStream_t>(stream);
  dispatch_float_index(a.grad_out.dtype, "grad_out", a.cu_seqlens.dtype, "cu_seqlens",
                       [&](auto value_tag, auto index_tag) {
    using T = typename decltype(value_tag)::type;
    using I = typename decltype(index_tag)::type;
    if (words == 0 || width == 0) {  // no block runs to check its word, so check the table alone
      check_seqlens_kernel<I><<<element_grid(words), kThreads, 0, st>>>(a.cu_seqlens.as<I>(), words, rows,
                                                                        error_flag.as<int32_t>());
      return;
    }
    broadcast_backward_kernel<T, I><<<unsigned(std::min<int64_t>(words, kMaxGrid)), kThreads, 0, st>>>(
        a.grad_out.as<T>(), a.cu_seqlens.as<I>(), a.grad_guide.as<T>(), words, rows, width,
        error_flag.as<int32_t>());
  });
  LMK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace lmk::attention
