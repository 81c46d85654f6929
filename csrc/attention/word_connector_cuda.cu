// Word connectors on CUDA (see word_connector.h for the math).
//
// Word attention forward: one warp per (word, head), split into 32 / L groups of L lanes, where each
// lane owns S = 32 / sizeof(T) of the D head dimensions (32 bytes of a row) and L is the smallest
// power of two with L S >= D (D = 128: L = 8 in 16-bit types, 16 in fp32). Lane r of a group owns
// the dimensions (c L + r) V + e for c < S / V, e < V, so each access of a group reads L V adjacent
// elements: V = 16 / sizeof(T) (16-byte loads) when D is a multiple of V and q, k, v and out start
// on 16-byte boundaries (then so does every row), else V = 1. In each round, group i takes the
// keys base + i and base + i + 32 / L of the word (base advancing by 64 / L), issuing both keys'
// and values' loads before any is used; a score is a sum over the group by log2 L shuffles, and
// each group keeps its own online softmax (running max, sum and weighted values). Rounds are the
// same for the whole warp (a group past the word's end computes on zeros and drops the score), so
// the shuffles never diverge. The groups' states then fold in a fixed tree into group 0 (shuffles
// down by 16, 8, ..., L lanes), which writes the output. Why groups: the work is latency bound
// (words are a few bytes, the longest sets the kernel's time), and a round costs one chain of
// loads and shuffles for 64 / L keys where a warp walking the keys one at a time pays it per key.
//
// Its backward is two kernels so that every output element has one writer: a warp per (word,
// query head) for dq, and a warp per (word, KV head) that walks the word's keys for dk and dv,
// summing over the head group in order; there each lane owns the dimensions lane, lane + 32, ...
// (at most 8) and dot products are warp sums by shuffles. Guide broadcast: one block per byte
// row, finding its word by binary search; its backward is one block per word summing that word's
// rows in order. Every reduction has a fixed order, so results are bitwise reproducible.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

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

// Forward: head dimensions per lane (S in the file comment), the 32 bytes of a row that one lane reads.
template <typename T>
constexpr int kSlice = 32 / sizeof(T);

// V adjacent elements, stored as one 16-byte access when V = 16 / sizeof(T).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// An element as fp32; fp16 by the hardware conversion, one instruction where to_float's portable
// bit manipulation takes several (both are exact).
template <typename T>
__device__ __forceinline__ float widen(T x) {
  if constexpr (std::is_same_v<T, float16>) return __half2float(__ushort_as_half(x.bits));
  else return to_float(x);
}

// One lane's kSlice elements of a row (lane r of a group of `lanes`, see the file comment), kept
// raw: V = 1 as elements, else as 16-byte words, in 32-bit registers (a Pack of 16-bit elements
// would take a register per element).
template <typename T, int V>
struct RowSlice {
  using Word = std::conditional_t<V == 1, T, uint4>;
  static_assert(V == 1 || sizeof(T) * V == sizeof(uint4));
  Word word[kSlice<T> / V];

  // The row at base + offset; zeros past the head dimension, and everywhere when !valid (then the
  // row need not exist, so its address is not formed).
  __device__ __forceinline__ void load(const T* base, int64_t offset, int dim, int lanes, int r, bool valid) {
#pragma unroll
    for (int c = 0; c < kSlice<T> / V; ++c) {
      const int d = (c * lanes + r) * V;
      word[c] = valid && d < dim ? *reinterpret_cast<const Word*>(base + offset + d) : Word{};
    }
  }
  __device__ __forceinline__ float operator[](int i) const {
    if constexpr (V == 1) {
      return widen(word[i]);
    } else {
      const uint4& w = word[i / V];
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};  // i is a constant once unrolled: no local array
      const uint32_t bits = words[(i % V) * sizeof(T) / 4];
      if constexpr (sizeof(T) == 4) return bits_to_float(bits);
      else return widen(T{uint16_t(i % 2 == 0 ? bits : bits >> 16)});  // little-endian halves
    }
  }
};

template <typename T, int V>
__device__ __forceinline__ void store_slice(T* row, const float (&x)[kSlice<T>], float factor, int dim, int lanes,
                                            int r) {
#pragma unroll
  for (int c = 0; c < kSlice<T> / V; ++c) {
    const int d = (c * lanes + r) * V;
    if (d >= dim) continue;
    Pack<T, V> p;
#pragma unroll
    for (int e = 0; e < V; ++e) p.v[e] = from_float<T>(x[c * V + e] * factor);
    *reinterpret_cast<Pack<T, V>*>(row + d) = p;
  }
}

// Sums a and b over an aligned group of `lanes` lanes (a power of two), leaving the same sums in all
// of them; the two in one loop, so that their shuffle chains overlap.
__device__ __forceinline__ void group_sums(float& a, float& b, int lanes) {
  for (int m = lanes / 2; m > 0; m /= 2) {
    a += __shfl_xor_sync(0xffffffffu, a, m);
    b += __shfl_xor_sync(0xffffffffu, b, m);
  }
}

template <typename T, int V>
__device__ __forceinline__ float dot(const RowSlice<T, V>& query, const RowSlice<T, V>& key) {
  float partial = 0.f;
#pragma unroll
  for (int i = 0; i < kSlice<T>; ++i) partial += query[i] * key[i];
  return partial;
}

// e^(old - top), the factor that rescales a softmax state kept against the max `old` to the max
// `top`; 0 for a state that has seen no key yet (old = -inf), where the difference could be NaN.
__device__ __forceinline__ float rescale(float old, float top) {
  return old == -INFINITY ? 0.f : __expf(old - top);
}

// With 16-byte accesses the forward fits 80 registers without spilling, six blocks to an SM; left
// alone, ptxas picks fewer and spills. Scalar accesses hold a register per element: no bound.
constexpr int kForwardBlocksPerSM = 6;

template <typename T, typename I, int V>
__global__ void __launch_bounds__(kThreads, V == 1 ? 1 : kForwardBlocksPerSM)
    forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const I* __restrict__ cu,
                   T* __restrict__ out, float* __restrict__ lse, Shape s, int lanes, int32_t* flag) {
  const int lane = threadIdx.x % kWarp, r = lane % lanes, group = lane / lanes, groups = kWarp / lanes;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; item < s.words * s.q_heads;
       item += warps) {
    const int64_t w = item / s.q_heads, h = item % s.q_heads, g = h / (s.q_heads / s.kv_heads);
    int64_t first, end;
    if (!word_rows(cu, w, s.rows, first, end, flag)) continue;
    // Kept raw and converted where used, so that nothing waits for it before the keys are requested.
    RowSlice<T, V> query;
    query.load(q, item * s.dim, s.dim, lanes, r, true);
    // This group's online softmax: running max, sum of e^(s - most), and those weights times v.
    float most = -INFINITY, sum = 0.f, acc[kSlice<T>] = {};
    for (int64_t base = first; base < end; base += 2 * groups) {
      const int64_t ja = base + group, jb = ja + groups;
      const bool has_a = ja < end, has_b = jb < end;
      RowSlice<T, V> key_a, key_b, value_a, value_b;  // all four loads issued before any is used
      key_a.load(k, (ja * s.kv_heads + g) * s.dim, s.dim, lanes, r, has_a);
      key_b.load(k, (jb * s.kv_heads + g) * s.dim, s.dim, lanes, r, has_b);
      value_a.load(v, (ja * s.kv_heads + g) * s.dim, s.dim, lanes, r, has_a);
      value_b.load(v, (jb * s.kv_heads + g) * s.dim, s.dim, lanes, r, has_b);
      // Summed by every lane before the selects, so that the shuffles are never divergent.
      float dot_a = dot(query, key_a), dot_b = dot(query, key_b);
      group_sums(dot_a, dot_b, lanes);
      const float score_a = has_a ? s.scale * dot_a : -INFINITY, score_b = has_b ? s.scale * dot_b : -INFINITY;
      const float top = fmaxf(most, fmaxf(score_a, score_b));
      const float keep = rescale(most, top);
      const float p_a = has_a ? __expf(score_a - top) : 0.f, p_b = has_b ? __expf(score_b - top) : 0.f;
      sum = sum * keep + p_a + p_b;
#pragma unroll
      for (int i = 0; i < kSlice<T>; ++i) acc[i] = acc[i] * keep + p_a * value_a[i] + p_b * value_b[i];
      most = top;
    }
    // Fold group i + offset / lanes into group i; lanes past the warp's end fold in themselves,
    // harmlessly, as only group 0's state is used.
    for (int offset = kWarp / 2; offset >= lanes; offset /= 2) {
      const float other_most = __shfl_down_sync(0xffffffffu, most, offset);
      const float other_sum = __shfl_down_sync(0xffffffffu, sum, offset);
      const float top = fmaxf(most, other_most);
      const float mine = rescale(most, top), theirs = rescale(other_most, top);
      sum = sum * mine + other_sum * theirs;
#pragma unroll
      for (int i = 0; i < kSlice<T>; ++i) {
        acc[i] = acc[i] * mine + __shfl_down_sync(0xffffffffu, acc[i], offset) * theirs;
      }
      most = top;
    }
    if (group == 0) store_slice<T, V>(out + item * s.dim, acc, end > first ? 1.f / sum : 0.f, s.dim, lanes, r);
    if (lane == 0) lse[item] = end > first ? most + logf(sum) : -INFINITY;
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

// With D a multiple of 16 / sizeof(T), every row of a 16-byte aligned tensor is 16-byte aligned too.
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

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
    int lanes = 1;  // per key group: enough that kSlice dimensions each cover the head
    while (lanes * kSlice<T> < s.dim) lanes *= 2;
    constexpr int V = 16 / sizeof(T);
    const bool vectors = s.dim % V == 0 && aligned16(a.q.data) && aligned16(a.k.data) && aligned16(a.v.data) &&
                         aligned16(a.out.data);
    const auto kernel = vectors ? forward_kernel<T, I, V> : forward_kernel<T, I, 1>;
    kernel<<<warp_grid(s.words * s.q_heads), kThreads, 0, st>>>(a.q.as<T>(), a.k.as<T>(), a.v.as<T>(),
                                                               a.cu_seqlens.as<I>(), a.out.as<T>(),
                                                               a.lse.as<float>(), s, lanes, error_flag.as<int32_t>());
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
