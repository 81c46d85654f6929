// int8 absmax quantisation on CUDA: one block per row (see int8_absmax.h for the math).
//
// A block takes the max of its row's magnitudes as integer bit patterns (exact and independent of
// the reduction order, with inf and NaN above every finite value, so the same max detects
// non-finite rows), then quantises the row. Every output element is written by one thread, and
// no floating-point value is reduced across threads, so results are bitwise reproducible and
// equal to the CPU kernels': the same IEEE division, rounding (half to even) and products.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/numeric.h"
#include "quant/int8_absmax.h"

namespace lmk::quant {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kMaxWarps = kMaxThreads / 32;
constexpr int64_t kMaxGridX = 0x7fffffff;
constexpr uint32_t kMagnitudeMask = 0x7FFFFFFFu;
constexpr uint32_t kInfinityBits = 0x7F800000u;

// V adjacent elements, loaded and stored as one access when the rows are aligned for it.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// round_half_even(clamp(x / divisor, -127, 127)), the same value the CPU kernels compute, +0 included:
// rintf would keep the sign of a negative value that rounds to zero, and W' = -0 * scale would then be
// -0 where the header (and the int8 round trip) give +0. Adding and subtracting 1.5 * 2^23 rounds
// |v| <= 127 to an integer exactly (round half to even) and turns a zero result into +0.
__device__ __forceinline__ float quantize_value(float x, float divisor) {
  constexpr float kRoundingMagic = 0x1.8p23f;
  const float v = fminf(fmaxf(__fdiv_rn(x, divisor), -127.f), 127.f);
  return __fsub_rn(__fadd_rn(v, kRoundingMagic), kRoundingMagic);
}

// The max over the block's threads of `bits`; every thread gets the result.
__device__ uint32_t block_max(uint32_t bits) {
  __shared__ uint32_t warp_max[kMaxWarps];
  for (int m = 16; m > 0; m /= 2) bits = max(bits, __shfl_xor_sync(0xffffffffu, bits, m));
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  if (threadIdx.x % 32 == 0) warp_max[warp] = bits;
  __syncthreads();
  uint32_t most = 0;
  for (int w = 0; w < warps; ++w) most = max(most, warp_max[w]);
  __syncthreads();  // warp_max is reused by the block's next row
  return most;
}

// Row r's scale and divisor, computed by the whole block; false (and the flag set) for a non-finite row.
template <typename T, int V>
__device__ bool row_scale(const T* __restrict__ row, int64_t packs, float& scale, float& divisor,
                          int32_t* __restrict__ flag) {
  uint32_t bits = 0;
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    const Pack<T, V> x = *reinterpret_cast<const Pack<T, V>*>(row + p * V);
#pragma unroll
    for (int k = 0; k < V; ++k) bits = max(bits, __float_as_uint(to_float(x.v[k])) & kMagnitudeMask);
  }
  const uint32_t most = block_max(bits);
  if (most >= kInfinityBits) {
    if (threadIdx.x == 0) atomicOr(flag, kNonFinite);
    return false;
  }
  scale = __fdiv_rn(__uint_as_float(most), 127.f);
  divisor = scale == 0.f ? 1.f : scale;
  return true;
}

template <typename T, int V>
__global__ void quantize_kernel(const T* __restrict__ weight, int64_t weight_stride, int8_t* __restrict__ q,
                                int64_t q_stride, float* __restrict__ scales, int64_t rows, int64_t packs,
                                int32_t* __restrict__ flag) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = weight + r * weight_stride;
    float scale, divisor;
    if (!row_scale<T, V>(row, packs, scale, divisor, flag)) continue;
    if (threadIdx.x == 0) scales[r] = scale;
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> x = *reinterpret_cast<const Pack<T, V>*>(row + p * V);
      Pack<int8_t, V> y;
#pragma unroll
      for (int k = 0; k < V; ++k) y.v[k] = int8_t(quantize_value(to_float(x.v[k]), divisor));
      *reinterpret_cast<Pack<int8_t, V>*>(q + r * q_stride + p * V) = y;
    }
  }
}

// out may be weight itself: every element is read and then written by the same thread, and the
// block has read the whole row (for its max) before any of it is written.
template <typename T, int V>
__global__ void fake_quantize_kernel(const T* weight, int64_t weight_stride, T* out, int64_t out_stride,
                                     float* __restrict__ scales, int64_t rows, int64_t packs,
                                     int32_t* __restrict__ flag) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = weight + r * weight_stride;
    float scale, divisor;
    if (!row_scale<T, V>(row, packs, scale, divisor, flag)) continue;
    if (threadIdx.x == 0) scales[r] = scale;
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> x = *reinterpret_cast<const Pack<T, V>*>(row + p * V);
      Pack<T, V> y;
#pragma unroll
      for (int k = 0; k < V; ++k) y.v[k] = from_float<T>(__fmul_rn(quantize_value(to_float(x.v[k]), divisor), scale));
      *reinterpret_cast<Pack<T, V>*>(out + r * out_stride + p * V) = y;
    }
  }
}

template <typename T, int V>
__global__ void dequantize_kernel(const int8_t* __restrict__ q, int64_t q_stride, const float* __restrict__ scales,
                                  T* __restrict__ out, int64_t out_stride, int64_t rows, int64_t packs) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float scale = scales[r];
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<int8_t, V> x = *reinterpret_cast<const Pack<int8_t, V>*>(q + r * q_stride + p * V);
      Pack<T, V> y;
#pragma unroll
      for (int k = 0; k < V; ++k) y.v[k] = from_float<T>(__fmul_rn(float(x.v[k]), scale));
      *reinterpret_cast<Pack<T, V>*>(out + r * out_stride + p * V) = y;
    }
  }
}

// Whether every row of t starts on a boundary of `bytes`.
bool rows_aligned(const TensorView& t, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(t.data) % uintptr_t(bytes) == 0 &&
         (t.size(0) <= 1 || (t.stride(0) * dtype_itemsize(t.dtype)) % bytes == 0);
}

// Packs of 16 bytes of T when cols and every row of every matrix allow it, else single elements.
template <typename T, typename F>
void with_pack_width(int64_t cols, std::initializer_list<const TensorView*> matrices, F&& f) {
  constexpr int V = 16 / int(sizeof(T));
  bool ok = cols % V == 0;
  for (const TensorView* t : matrices) ok = ok && rows_aligned(*t, int64_t(V) * dtype_itemsize(t->dtype));
  if (ok) f(std::integral_constant<int, V>{});
  else f(std::integral_constant<int, 1>{});
}

// Whole warps, enough to give each thread at least one pack where the row is short.
int block_threads(int64_t packs) {
  return int(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, ceil_div(packs, 32) * 32)));
}

unsigned grid_rows(int64_t rows) { return unsigned(std::min(rows, kMaxGridX)); }

}  // namespace

void quantize_cuda(const TensorView& weight, const TensorView& q, const TensorView& scale,
                   const TensorView& error_flag, void* stream) {
  const int64_t rows = weight.size(0), cols = weight.size(1);
  if (rows == 0) return;
  CudaDeviceGuard guard(weight.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_float(weight.dtype, "weight", [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(cols, {&weight, &q}, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      const int64_t packs = cols / V;
      quantize_kernel<T, V><<<grid_rows(rows), block_threads(packs), 0, s>>>(
          weight.as<const T>(), weight.stride(0), q.as<int8_t>(), q.stride(0), scale.as<float>(), rows, packs,
          error_flag.as<int32_t>());
      LMK_CUDA_CHECK(cudaGetLastError());
    });
  });
}

void dequantize_cuda(const TensorView& q, const TensorView& scale, const TensorView& out, void* stream) {
  const int64_t rows = q.size(0), cols = q.size(1);
  if (rows == 0) return;
  CudaDeviceGuard guard(q.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_float(out.dtype, "out", [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(cols, {&q, &out}, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      const int64_t packs = cols / V;
      dequantize_kernel<T, V><<<grid_rows(rows), block_threads(packs), 0, s>>>(
          q.as<const int8_t>(), q.stride(0), scale.as<const float>(), out.as<T>(), out.stride(0), rows, packs);
      LMK_CUDA_CHECK(cudaGetLastError());
    });
  });
}

void fake_quantize_cuda(const TensorView& weight, const TensorView& out, const TensorView& scale,
                        const TensorView& error_flag, void* stream) {
  const int64_t rows = weight.size(0), cols = weight.size(1);
  if (rows == 0) return;
  CudaDeviceGuard guard(weight.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_float(weight.dtype, "weight", [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_pack_width<T>(cols, {&weight, &out}, [&](auto vtag) {
      constexpr int V = decltype(vtag)::value;
      const int64_t packs = cols / V;
      fake_quantize_kernel<T, V><<<grid_rows(rows), block_threads(packs), 0, s>>>(
          weight.as<const T>(), weight.stride(0), out.as<T>(), out.stride(0), scale.as<float>(), rows, packs,
          error_flag.as<int32_t>());
      LMK_CUDA_CHECK(cudaGetLastError());
    });
  });
}

}  // namespace lmk::quant
