// FP8 GEMM on CUDA: a portable shared-memory tiled kernel for any architecture (see fp8_gemm.h),
// and the dispatch to the Hopper tensor-core kernel (fp8_gemm_sm90.cu) where it applies.
//
// A block of 32 x 8 threads computes a kTile x kTile output tile; thread (x, y) owns column x and
// rows y, y + 8, y + 16, y + 24 of it. The block walks K in steps of kTile: it decodes a kTile x
// kTile slab of A and of B into fp32 shared memory (zeros past the edges), then every thread adds
// the slab's products to its fp32 accumulators in increasing k. Each output element is thus summed
// by one thread in exactly the CPU's order, with exact products (fmaf rounds once, like an add),
// and alpha and bias are applied with explicitly rounded operations, so the results match the CPU
// kernel bit for bit. No atomics, no split-K.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/numeric.h"
#include "fp8/fp8_gemm.h"
#include "fp8/fp8_gemm_decode.h"

namespace lmk::fp8 {
namespace {

constexpr int kTile = 32;
constexpr int kRowsPerThread = 4;
constexpr int kThreadsY = kTile / kRowsPerThread;
constexpr int64_t kMaxGridX = 0x7fffffff;
constexpr int64_t kMaxGridY = 65535;

template <typename T>
__global__ void gemm_kernel(const uint8_t* __restrict__ a, int64_t a_stride, Format a_format,
                            const uint8_t* __restrict__ b, int64_t b_stride, Format b_format, int64_t m, int64_t n,
                            int64_t k, float alpha, const float* __restrict__ bias, T* __restrict__ out) {
  __shared__ float a_table[256], b_table[256];
  __shared__ float a_slab[kTile][kTile + 1];  // [row][k]; the pad avoids bank conflicts
  __shared__ float b_slab[kTile][kTile + 1];  // [column][k]
  const int tx = threadIdx.x, ty = threadIdx.y, thread = ty * kTile + tx;
  for (int bits = thread; bits < 256; bits += kTile * kThreadsY) {
    a_table[bits] = decode(uint8_t(bits), a_format);
    b_table[bits] = decode(uint8_t(bits), b_format);
  }
  __syncthreads();

  const int64_t tiles_n = (n + kTile - 1) / kTile;
  for (int64_t tile_m = blockIdx.x; tile_m * kTile < m; tile_m += gridDim.x) {
    for (int64_t tile_n = blockIdx.y; tile_n < tiles_n; tile_n += gridDim.y) {
      const int64_t row0 = tile_m * kTile, col0 = tile_n * kTile;
      float acc[kRowsPerThread];
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) acc[r] = 0.f;

      for (int64_t k0 = 0; k0 < k; k0 += kTile) {
        // Thread (tx, ty) loads element k0 + tx of rows ty, ty + 8, ... of both slabs: coalesced along k.
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r) {
          const int local = ty + r * kThreadsY;
          const int64_t kk = k0 + tx, row = row0 + local, col = col0 + local;
          a_slab[local][tx] = (row < m && kk < k) ? a_table[a[row * a_stride + kk]] : 0.f;
          b_slab[local][tx] = (col < n && kk < k) ? b_table[b[col * b_stride + kk]] : 0.f;
        }
        __syncthreads();
        const int depth = k - k0 < kTile ? int(k - k0) : kTile;
        for (int kk = 0; kk < depth; ++kk) {
          const float y = b_slab[tx][kk];
#pragma unroll
          for (int r = 0; r < kRowsPerThread; ++r) acc[r] = __fmaf_rn(a_slab[ty + r * kThreadsY][kk], y, acc[r]);
        }
        __syncthreads();
      }

      const int64_t col = col0 + tx;
      if (col < n) {
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r) {
          const int64_t row = row0 + ty + r * kThreadsY;
          if (row >= m) continue;
          float d = __fmul_rn(alpha, acc[r]);
          if (bias) d = __fadd_rn(d, bias[col]);
          out[row * n + col] = from_float<T>(d);
        }
      }
    }
  }
}

Format format_of(DType dtype) { return dtype == DType::Float8E4M3FN ? Format::E4M3FN : Format::E5M2; }

}  // namespace

void gemm_cuda(const TensorView& a, const TensorView& b, float alpha, const OptionalView& bias,
               const TensorView& out, bool exact_order, void* stream) {
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  if (m == 0 || n == 0) return;
#ifdef LMK_WITH_SM90_GEMM
  if (!exact_order && gemm_sm90(a, b, alpha, bias, out, stream)) return;
#else
  (void)exact_order;
#endif
  CudaDeviceGuard guard(a.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(unsigned(std::min(ceil_div(m, kTile), kMaxGridX)), unsigned(std::min(ceil_div(n, kTile), kMaxGridY)));
  const dim3 block(kTile, kThreadsY);
  dispatch_float(out.dtype, "out", [&](auto tag) {
    using T = typename decltype(tag)::type;
    gemm_kernel<T><<<grid, block, 0, s>>>(a.as<const uint8_t>(), a.stride(0), format_of(a.dtype),
                                          b.as<const uint8_t>(), b.stride(0), format_of(b.dtype), m, n, k, alpha,
                                          bias ? bias->as<const float>() : nullptr, out.as<T>());
    LMK_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace lmk::fp8
