// fp8 casts on CUDA (see fp8_cast.h and fp8_convert.h for the math). Every output element is
// computed by one thread from its input value and its (seed, index) hash alone, with the same
// rounding as the CPU kernels, so results equal the CPU's bit for bit.
//   plain:      each row of x (a contiguous x is one long row) goes in units of one 16-byte load
//               (4 or 8 elements) and one 4- or 8-byte store, one unit per thread. One load per
//               thread keeps them all in flight: with two or more, ptxas was seen to issue the
//               next only after the math on the first. The few elements before and after the
//               units, and rows where out is not aligned like x, go element by element.
//   transposed: 64 x 64 tiles through shared memory. Threads read 4 adjacent elements of a row of
//               x and store their 4 fp8 bytes as one word; then each thread takes a 4 x 4 byte
//               block, transposes it in registers and writes 4 bytes to each of 4 rows of out.
// Round to nearest even lets the fp32 adder do the rounding (encode_nearest), about half the
// instructions of fp8_convert.h's encode(); stochastic rounding uses encode() itself.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/numeric.h"
#include "fp8/fp8_cast.h"

namespace lmk::fp8 {
namespace {

constexpr int kThreads = 256;
template <typename T>
constexpr int kUnit = 16 / sizeof(T);      // plain cast: elements per 16-byte load, a multiple of 4
constexpr int kTile = 64;                  // transposed: a kTile x kTile tile of x per block
constexpr int kGroup = 4;                  // transposed: adjacent elements per load and per fp8 word
constexpr int kTileWords = kTile / kGroup;  // fp8 words per tile row
constexpr int kLoadsPerThread = kTile * kTileWords / kThreads;
constexpr int64_t kMaxGridX = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxGridY = 65535;
static_assert(kLoadsPerThread * kThreads == kTile * kTileWords && kTileWords * kTileWords == kThreads,
              "the read phase covers the tile in whole passes, the write phase in one 4 x 4 block per thread");

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Round to nearest even: encode<F, Rounding::Nearest> bit for bit, for every fp32 bit pattern u.
// With t = max(floor(log2 |x|), e_min) as in fp8_convert.h, |x| < 2^(t+1) and the fp8 spacing at
// |x| is 2^(t - m). Adding 2^(t + 23 - m) lifts |x| into the binade whose fp32 spacing is exactly
// that, so the adder's round-half-to-even leaves n = round(|x| / 2^(t - m)) in the sum's low bits
// (the magic number's own mantissa is 0, so the parity the tie sees is n's). |x| is clamped at
// 2^(e_max + 1), which saturates like any larger value and keeps the magic number finite; an fp32
// subnormal |x|, flushed or not, is far below half the smallest fp8 step and gives n = 0 either way.
template <Format F>
LMK_HD uint8_t encode_nearest(uint32_t u) {
  constexpr uint32_t m = F == Format::E4M3FN ? 3 : 2;
  constexpr uint32_t min_exponent_bits = uint32_t(127 + (F == Format::E4M3FN ? -6 : -14)) << 23;
  constexpr uint32_t saturating_bits = uint32_t(127 + (F == Format::E4M3FN ? 9 : 16)) << 23;  // 2^(e_max+1)
  constexpr uint32_t max_code = F == Format::E4M3FN ? 0x7Eu : 0x7Bu;
  const uint32_t magnitude = u & 0x7FFFFFFFu;
  const uint32_t clamped = magnitude < saturating_bits ? magnitude : saturating_bits;
  const uint32_t exponent_bits = std::max(clamped & 0x7F800000u, min_exponent_bits);  // 2^t
  const uint32_t magic = exponent_bits + ((23 - m) << 23);                             // 2^(t + 23 - m)
  const uint32_t n = float_to_bits(bits_to_float(clamped) + bits_to_float(magic)) - magic;
  // (t - e_min) * 2^m + n, as in encode().
  uint32_t code = (exponent_bits >> (23 - m)) - (min_exponent_bits >> (23 - m)) + n;
  code = code < max_code ? code : max_code;
  if (magnitude > 0x7F800000u) code = kNanCode;
  return uint8_t(((u >> 24) & 0x80u) | code);
}

// The fp32 bits of an input element. fp16 is widened by the hardware without its sign (exact,
// subnormals included) and the sign put back, so a NaN keeps its sign whatever NaN the hardware makes.
__device__ __forceinline__ uint32_t fp32_bits(float x) { return float_to_bits(x); }
__device__ __forceinline__ uint32_t fp32_bits(bfloat16 x) { return uint32_t(x.bits) << 16; }
__device__ __forceinline__ uint32_t fp32_bits(float16 x) {
  const uint32_t widened = float_to_bits(__half2float(__ushort_as_half(uint16_t(x.bits & 0x7FFFu))));
  return (widened & 0x7FFFFFFFu) | (uint32_t(x.bits & 0x8000u) << 16);
}

template <Format F, Rounding R, typename T>
__device__ __forceinline__ uint8_t encode_element(T x, uint64_t seed, uint64_t index) {
  if constexpr (R == Rounding::Nearest) return encode_nearest<F>(fp32_bits(x));
  else return encode<F, R>(bits_to_float(fp32_bits(x)), random_bits(seed, index));
}

// The fp8 bytes of x[0..3], x[k] in byte k, for the row-major indices index...index + 3.
template <Format F, Rounding R, typename T>
__device__ __forceinline__ uint32_t encode_word(const T* x, uint64_t seed, uint64_t index) {
  uint32_t word = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) word |= uint32_t(encode_element<F, R>(x[k], seed, index + k)) << (8 * k);
  return word;
}

// One unit of the plain cast: x 16-byte aligned, out aligned to the unit's kUnit bytes.
template <typename T, Format F, Rounding R>
__device__ __forceinline__ void cast_unit(const T* x, uint64_t seed, uint64_t index, uint8_t* out) {
  constexpr int kWords = kUnit<T> / 4;
  const Pack<T, kUnit<T>> in = *reinterpret_cast<const Pack<T, kUnit<T>>*>(x);
  Pack<uint32_t, kWords> words;
#pragma unroll
  for (int w = 0; w < kWords; ++w) words.v[w] = encode_word<F, R>(&in.v[4 * w], seed, index + uint64_t(4 * w));
  *reinterpret_cast<Pack<uint32_t, kWords>*>(out) = words;
}

// Row r of x (blockIdx.y and up by gridDim.y) is [units, then the head and tail elements] to the
// threads of blockIdx.x's row of blocks, looping where a row has more than the grid covers.
template <typename T, Format F, Rounding R>
__global__ void __launch_bounds__(kThreads)
    cast_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, int64_t row_stride, uint64_t seed,
                uint8_t* __restrict__ out) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* x_row = x + r * row_stride;
    uint8_t* out_row = out + r * cols;
    const uint64_t first = uint64_t(r) * uint64_t(cols);
    // Units start where x_row reaches a 16-byte boundary; if out_row is not aligned to a unit
    // there, the whole row goes element by element.
    int64_t head = std::min(int64_t((16 - reinterpret_cast<uintptr_t>(x_row) % 16) % 16 / sizeof(T)), cols);
    if (reinterpret_cast<uintptr_t>(x_row + head) % 16 != 0 ||
        reinterpret_cast<uintptr_t>(out_row + head) % kUnit<T> != 0)
      head = cols;
    const int64_t units = (cols - head) / kUnit<T>;
    const int64_t work = cols - units * (kUnit<T> - 1);  // units, then each element outside them
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < work; i += int64_t(gridDim.x) * blockDim.x) {
      if (i < units) {
        const int64_t c = head + i * kUnit<T>;
        cast_unit<T, F, R>(x_row + c, seed, first + uint64_t(c), out_row + c);
      } else {
        int64_t c = i - units;
        if (c >= head) c += units * kUnit<T>;  // past the head: the tail after the units
        out_row[c] = encode_element<F, R>(x_row[c], seed, first + uint64_t(c));
      }
    }
  }
}

// Byte j of each of block[0..3], in that order: row j of the transposed 4 x 4 byte block.
__device__ __forceinline__ uint32_t block_column(const uint32_t (&block)[4], uint32_t j) {
  const uint32_t pair = j | (j + 4) << 4;  // byte j of the first operand, then byte j of the second
  return __byte_perm(__byte_perm(block[0], block[1], pair), __byte_perm(block[2], block[3], pair), 0x5410);
}

// kVector: rows, cols and row_stride are multiples of kGroup, x is aligned to a group and out to 4
// bytes, so every group and every 4 x 4 block lies wholly inside or wholly outside the matrix and
// moves as one load or store; otherwise each element is bounds-checked and moved alone.
template <typename T, Format F, Rounding R, bool kVector>
__global__ void __launch_bounds__(kThreads)
    cast_transpose_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, int64_t row_stride, uint64_t seed,
                          uint8_t* __restrict__ out) {
  __shared__ uint32_t tile[kTile][kTileWords + 1];  // fp8 words; the pad spreads the write phase over the banks
  // Write phase: this thread's block is tile rows 4 * rg.. and words cg. A warp takes 8 row groups x
  // 4 words, so with the pitch of 17 words its 32 shared loads hit 32 different banks.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rg = lane % 8 + 8 * (warp % 2), cg = lane / 8 + 4 * (warp / 2);
  for (int64_t c0 = blockIdx.x * int64_t(kTile); c0 < cols; c0 += int64_t(gridDim.x) * kTile) {
    for (int64_t r0 = blockIdx.y * int64_t(kTile); r0 < rows; r0 += int64_t(gridDim.y) * kTile) {
      // Read phase: a warp reads 2 rows x 64 adjacent elements; all loads go out before any math.
      Pack<T, kGroup> in[kLoadsPerThread] = {};
#pragma unroll
      for (int k = 0; k < kLoadsPerThread; ++k) {
        const int g = threadIdx.x + k * kThreads;
        const int64_t r = r0 + g / kTileWords, c = c0 + g % kTileWords * kGroup;
        const T* src = x + r * row_stride + c;
        if constexpr (kVector) {
          if (r < rows && c < cols) in[k] = *reinterpret_cast<const Pack<T, kGroup>*>(src);
        } else {
#pragma unroll
          for (int e = 0; e < kGroup; ++e)
            if (r < rows && c + e < cols) in[k].v[e] = src[e];
        }
      }
#pragma unroll
      for (int k = 0; k < kLoadsPerThread; ++k) {
        const int g = threadIdx.x + k * kThreads;
        const int64_t r = r0 + g / kTileWords, c = c0 + g % kTileWords * kGroup;
        // Elements past the last column encode whatever `in` holds; their bytes are never written.
        if (r < rows && c < cols)
          tile[g / kTileWords][g % kTileWords] =
              encode_word<F, R>(in[k].v, seed, uint64_t(r) * uint64_t(cols) + uint64_t(c));
      }
      __syncthreads();
      const int64_t r = r0 + 4 * rg;
      if (r < rows) {
        uint32_t block[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) block[i] = tile[4 * rg + i][cg];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t c = c0 + 4 * cg + j;
          if (c >= cols) break;
          const uint32_t column = block_column(block, j);
          uint8_t* dst = out + c * rows + r;
          if constexpr (kVector) {
            *reinterpret_cast<uint32_t*>(dst) = column;
          } else {
#pragma unroll
            for (int i = 0; i < 4; ++i)
              if (r + i < rows) dst[i] = uint8_t(column >> (8 * i));
          }
        }
      }
      __syncthreads();  // the tile is refilled for the block's next tile
    }
  }
}

template <Format F, Rounding R, typename T>
void launch(const T* x, MatrixShape shape, const CastOptions& options, uint8_t* out, cudaStream_t stream) {
  if (options.transpose) {
    const bool vector = shape.rows % kGroup == 0 && shape.cols % kGroup == 0 && shape.row_stride % kGroup == 0 &&
                        reinterpret_cast<uintptr_t>(x) % sizeof(Pack<T, kGroup>) == 0 &&
                        reinterpret_cast<uintptr_t>(out) % 4 == 0;
    const dim3 grid(unsigned(std::min(ceil_div(shape.cols, kTile), kMaxGridX)),
                    unsigned(std::min(ceil_div(shape.rows, kTile), kMaxGridY)));
    if (vector)
      cast_transpose_kernel<T, F, R, true><<<grid, kThreads, 0, stream>>>(x, shape.rows, shape.cols, shape.row_stride,
                                                                          options.seed, out);
    else
      cast_transpose_kernel<T, F, R, false><<<grid, kThreads, 0, stream>>>(x, shape.rows, shape.cols, shape.row_stride,
                                                                           options.seed, out);
    return;
  }
  // Rows that follow each other in x (and always do in out) are one long row.
  int64_t rows = shape.rows, cols = shape.cols;
  if (rows == 1 || shape.row_stride == cols) {
    cols *= rows;
    rows = 1;
  }
  // One unit per thread where x and out are 16-byte aligned and cols a multiple of the unit;
  // elsewhere a few threads loop over the elements outside the units. Short rows get smaller
  // blocks so that fewer threads idle.
  const int64_t work = ceil_div(cols, kUnit<T>);
  const int threads = int(std::min(round_up(work, 32), int64_t(kThreads)));
  const dim3 grid(unsigned(std::min(ceil_div(work, threads), kMaxGridX)), unsigned(std::min(rows, kMaxGridY)));
  cast_kernel<T, F, R><<<grid, threads, 0, stream>>>(x, rows, cols, shape.row_stride, options.seed, out);
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
