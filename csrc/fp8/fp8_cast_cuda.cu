// fp8 casts on CUDA (see fp8_cast.h and fp8_convert.h for the math). Every output element is
// computed by one thread from its input value and its (seed, index) hash alone, with the same
// integer arithmetic as the CPU kernels, so results equal the CPU's bit for bit.
//   plain:      a grid-stride loop over packs of V adjacent elements of a row (V = 4 when the rows
//               allow 4-element loads and a 4-byte store);
//   transposed: 32 x 32 tiles through shared memory, so that reads of x and writes of out are both
//               along their contiguous dimension.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/numeric.h"
#include "fp8/fp8_cast.h"

namespace lmk::fp8 {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;
constexpr int kTile = 32;
constexpr int kTileRowsPerPass = 8;  // a 32 x 8 block covers a tile in 4 passes
constexpr int64_t kMaxGridY = 65535;

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <Format F, Rounding R>
__device__ __forceinline__ uint8_t encode_at(float x, uint64_t seed, uint64_t index) {
  return encode<F, R>(x, R == Rounding::Stochastic ? random_bits(seed, index) : 0u);
}

template <typename T, int V, Format F, Rounding R>
__global__ void cast_kernel(const T* __restrict__ x, int64_t row_stride, int64_t cols, int64_t total_packs,
                            uint64_t seed, uint8_t* __restrict__ out) {
  const int64_t packs_per_row = cols / V;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total_packs;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = p / packs_per_row, c = (p - r * packs_per_row) * V;
    const Pack<T, V> in = *reinterpret_cast<const Pack<T, V>*>(x + r * row_stride + c);
    const int64_t index = r * cols + c;
    Pack<uint8_t, V> result;
#pragma unroll
    for (int k = 0; k < V; ++k) result.v[k] = encode_at<F, R>(to_float(in.v[k]), seed, uint64_t(index + k));
    *reinterpret_cast<Pack<uint8_t, V>*>(out + index) = result;
  }
}

template <typename T, Format F, Rounding R>
__global__ void cast_transpose_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, int64_t row_stride,
                                      uint64_t seed, uint8_t* __restrict__ out) {
  __shared__ uint8_t tile[kTile][kTile + 4];  // padded against bank conflicts on the transposed read
  const int64_t c0 = int64_t(blockIdx.x) * kTile;
  const int64_t row_tiles = (rows + kTile - 1) / kTile;
  for (int64_t tr = blockIdx.y; tr < row_tiles; tr += gridDim.y) {
    const int64_t r0 = tr * kTile;
    for (int k = threadIdx.y; k < kTile; k += kTileRowsPerPass) {
      const int64_t r = r0 + k, c = c0 + threadIdx.x;
      if (r < rows && c < cols) tile[k][threadIdx.x] = encode_at<F, R>(to_float(x[r * row_stride + c]), seed,
                                                                       uint64_t(r * cols + c));
    }
    __syncthreads();
    for (int k = threadIdx.y; k < kTile; k += kTileRowsPerPass) {
      const int64_t c = c0 + k, r = r0 + threadIdx.x;
      if (r < rows && c < cols) out[c * rows + r] = tile[threadIdx.x][k];
    }
    __syncthreads();  // the tile is refilled for the block's next row tile
  }
}

template <Format F, Rounding R, typename T>
void launch(const T* x, MatrixShape shape, const CastOptions& options, uint8_t* out, cudaStream_t stream) {
  if (options.transpose) {
    const dim3 block(kTile, kTileRowsPerPass);
    const dim3 grid(unsigned(ceil_div(shape.cols, kTile)),
                    unsigned(std::min(ceil_div(shape.rows, kTile), kMaxGridY)));
    cast_transpose_kernel<T, F, R><<<grid, block, 0, stream>>>(x, shape.rows, shape.cols, shape.row_stride,
                                                                options.seed, out);
    return;
  }
  const bool packed = shape.cols % 4 == 0 && shape.row_stride % 4 == 0 &&
                      reinterpret_cast<uintptr_t>(x) % (4 * sizeof(T)) == 0 && reinterpret_cast<uintptr_t>(out) % 4 == 0;
  const int64_t packs = shape.rows * shape.cols / (packed ? 4 : 1);
  const unsigned blocks = unsigned(std::min(ceil_div(packs, kThreads), kMaxBlocks));
  if (packed)
    cast_kernel<T, 4, F, R><<<blocks, kThreads, 0, stream>>>(x, shape.row_stride, shape.cols, packs, options.seed, out);
  else
    cast_kernel<T, 1, F, R><<<blocks, kThreads, 0, stream>>>(x, shape.row_stride, shape.cols, packs, options.seed, out);
}

template <typename T>
void launch_typed(const TensorView& x, const TensorView& out, const CastOptions& options, cudaStream_t stream) {
  const MatrixShape shape = matrix_shape(x);
  const T* in = x.as<const T>();
  uint8_t* o = out.as<uint8_t>();
  const bool e4m3 = out.dtype == DType::Float8E4M3FN;
  const bool nearest = options.rounding == Rounding::Nearest;
  if (e4m3 && nearest) launch<Format::E4M3FN, Rounding::Nearest>(in, shape, options, o, stream);
  else if (e4m3) launch<Format::E4M3FN, Rounding::Stochastic>(in, shape, options, o, stream);
  else if (nearest) launch<Format::E5M2, Rounding::Nearest>(in, shape, options, o, stream);
  else launch<Format::E5M2, Rounding::Stochastic>(in, shape, options, o, stream);
}

}  // namespace

void cast_cuda(const TensorView& x, const TensorView& out, const CastOptions& options, void* stream) {
  if (x.numel() == 0) return;
  CudaDeviceGuard guard(x.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  switch (x.dtype) {
    case DType::BFloat16: launch_typed<bfloat16>(x, out, options, s); break;
    case DType::Float16: launch_typed<float16>(x, out, options, s); break;
    default: launch_typed<float>(x, out, options, s); break;
  }
  LMK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace lmk::fp8
