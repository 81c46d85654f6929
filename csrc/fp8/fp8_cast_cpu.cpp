// fp8 casts on the CPU. Each element is converted independently (fp8_convert.h), so chunks write
// disjoint outputs and results never depend on the thread count. The loops are compiled once per
// x86-64 SIMD level (LMK_SIMD_CLONES); the conversion is branch-free integer arithmetic, which the
// compiler vectorises, and the transposed cast goes band by band so both sides stay in cache.
#include <algorithm>
#include <cstring>

#include "common/numeric.h"
#include "common/parallel.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "common/stream_store.h"
#include "fp8/fp8_cast.h"

namespace lmk::fp8 {
namespace {

constexpr int64_t kGrainElements = 1 << 15;
// A transposed cast goes in bands of x's rows, kBandCols columns at a time (128 KiB of fp8 per band):
// 64 rows fill one 64-byte line of each output row.
constexpr int64_t kBandRows = 64, kBandCols = 2048;

template <Format F, Rounding R, typename T>
inline void cast_run(const T* x, int64_t count, uint64_t first_index, uint64_t seed, uint8_t* out) {
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t random = R == Rounding::Stochastic ? random_bits(seed, first_index + uint64_t(i)) : 0u;
    out[i] = encode<F, R>(to_float(x[i]), random);
  }
}

template <typename Body>
inline void with_mode(Format format, Rounding rounding, const Body& body) {
  if (format == Format::E4M3FN) {
    if (rounding == Rounding::Nearest) return body.template operator()<Format::E4M3FN, Rounding::Nearest>();
    return body.template operator()<Format::E4M3FN, Rounding::Stochastic>();
  }
  if (rounding == Rounding::Nearest) return body.template operator()<Format::E5M2, Rounding::Nearest>();
  body.template operator()<Format::E5M2, Rounding::Stochastic>();
}

template <typename T>
struct RunBody {
  const T* x; int64_t count; uint64_t first_index, seed; uint8_t* out;
  template <Format F, Rounding R> void operator()() const { cast_run<F, R>(x, count, first_index, seed, out); }
};

// The SIMD-cloned entry points, one per input type, and overloads that pick them.
#define LMK_DEFINE_KERNELS(T, SUFFIX)                                                                          \
  LMK_SIMD_CLONES void cast_run_##SUFFIX(const T* x, int64_t count, uint64_t first_index, uint64_t seed,       \
                                         uint8_t* out, Format format, Rounding rounding) {                     \
    with_mode(format, rounding, RunBody<T>{x, count, first_index, seed, out});                                 \
  }                                                                                                            \
  inline void cast_run_simd(const T* x, int64_t count, uint64_t first_index, uint64_t seed, uint8_t* out,      \
                            Format format, Rounding rounding) {                                                \
    cast_run_##SUFFIX(x, count, first_index, seed, out, format, rounding);                                     \
  }

LMK_DEFINE_KERNELS(float, f32)
LMK_DEFINE_KERNELS(bfloat16, bf16)
LMK_DEFINE_KERNELS(float16, f16)
#undef LMK_DEFINE_KERNELS

// Transposes the 8 x 8 bytes of rows[0..7] (row i's byte j is element (i, j)) in place, so that row j
// holds column j: three rounds that swap ever smaller blocks between row pairs (4 bytes between
// rows i and i + 4, 2 between i and i + 2, 1 between i and i + 1).
template <int kDistance>
__attribute__((always_inline)) inline void swap_blocks(uint64_t (&rows)[8]) {
  constexpr uint64_t kMask = kDistance == 4 ? 0x00000000FFFFFFFFull
                             : kDistance == 2 ? 0x0000FFFF0000FFFFull : 0x00FF00FF00FF00FFull;
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
    if ((i & kDistance) == 0) {
      const uint64_t t = ((rows[i] >> (8 * kDistance)) ^ rows[i + kDistance]) & kMask;
      rows[i] ^= t << (8 * kDistance);
      rows[i + kDistance] ^= t;
    }
}

__attribute__((always_inline)) inline void transpose_8x8_bytes(uint64_t (&rows)[8]) {
  swap_blocks<4>(rows);
  swap_blocks<2>(rows);
  swap_blocks<1>(rows);
}

// out[c * out_stride + r] = band[r * kBandCols + c] for r < rows (at most kBandRows), c < cols. Each
// 8-column group is transposed in 8 x 8 blocks into whole output lines (rows bytes of each of its 8
// output rows), which go out in one piece: with streaming stores where a band is a whole 64-byte line
// of every output row (aligned), so that no line is read from memory to be overwritten.
void transpose_band(const uint8_t* band, int64_t rows, int64_t cols, uint8_t* out, int64_t out_stride) {
  const int64_t full_rows = rows / 8 * 8, full_cols = cols / 8 * 8;
  const bool stream = full_rows == kBandRows && vec::streamable(out, out_stride);
  for (int64_t c = 0; c < full_cols; c += 8) {
    uint64_t lines[8][kBandRows / 8];  // lines[j]: output row c + j, rows [0, full_rows)
    for (int64_t r = 0; r < full_rows; r += 8) {
      uint64_t block[8];
      for (int i = 0; i < 8; ++i) std::memcpy(&block[i], band + (r + i) * kBandCols + c, 8);
      transpose_8x8_bytes(block);
      for (int j = 0; j < 8; ++j) lines[j][r / 8] = block[j];
    }
    for (int j = 0; j < 8; ++j) {
      uint8_t* line = out + (c + j) * out_stride;
      if (stream) {
        vec::stream32_bytes(line, &lines[j][0]);
        vec::stream32_bytes(line + 32, &lines[j][4]);
      } else {
        std::memcpy(line, lines[j], size_t(full_rows));
      }
      for (int64_t r = full_rows; r < rows; ++r) line[r] = band[r * kBandCols + c + j];
    }
  }
  for (int64_t c = full_cols; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) out[c * out_stride + r] = band[r * kBandCols + c];
}

// The transposed cast of x's rows [r0, r1) (at most kBandRows): out[c * rows + r] = fp8(x[r][c]). Each
// row is converted by the vectorised run kernel, kBandCols columns at a time, into a band that
// stays in L2, and the band then goes out transposed (transpose_band). (Converting 64 x 64 tiles row by
// row and transposing them byte by byte took 18-19 ms for 4096 x 4096 bf16 on one Zen 4 core; this,
// 12.6 ms, of which the conversion is 8.)
template <typename T>
void cast_band_transposed(const T* x, MatrixShape shape, int64_t r0, int64_t r1, uint8_t* band, uint8_t* out,
                          Format format, const CastOptions& options) {
  for (int64_t c0 = 0; c0 < shape.cols; c0 += kBandCols) {
    const int64_t width = std::min(kBandCols, shape.cols - c0);
    for (int64_t r = r0; r < r1; ++r)
      cast_run_simd(x + r * shape.row_stride + c0, width, uint64_t(r) * uint64_t(shape.cols) + uint64_t(c0),
                    options.seed, band + (r - r0) * kBandCols, format, options.rounding);
    transpose_band(band, r1 - r0, width, out + c0 * shape.rows + r0, shape.rows);
  }
}

template <typename T>
void cast_typed(const TensorView& x, const TensorView& out, Format format, const CastOptions& options) {
  const MatrixShape shape = matrix_shape(x);
  const T* in = x.as<const T>();
  uint8_t* o = out.as<uint8_t>();
  if (shape.rows == 0 || shape.cols == 0) return;
  if (options.transpose) {
    const int64_t bands = (shape.rows + kBandRows - 1) / kBandRows;
    parallel_for(0, bands, 1, [&](int64_t b0, int64_t b1) {
      const Scratch band = acquire_scratch(size_t(kBandRows * kBandCols));
      uint8_t* band_bytes = reinterpret_cast<uint8_t*>(band.get());
      for (int64_t b = b0; b < b1; ++b)
        cast_band_transposed(in, shape, b * kBandRows, std::min(shape.rows, (b + 1) * kBandRows), band_bytes, o,
                             format, options);
      vec::stream_fence();  // before the caller (another thread) returns the output
    });
    return;
  }
  // Chunks of the row-major element range, cut at row ends where rows are not adjacent in x.
  parallel_for(0, shape.rows * shape.cols, kGrainElements, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t r = i / shape.cols, c = i % shape.cols;
      const int64_t count = shape.row_stride == shape.cols ? end - i : std::min(end - i, shape.cols - c);
      cast_run_simd(in + r * shape.row_stride + c, count, uint64_t(i), options.seed, o + i, format,
                    options.rounding);
      i += count;
    }
  });
}

}  // namespace

void cast_cpu(const TensorView& x, const TensorView& out, const CastOptions& options) {
  const Format format = out.dtype == DType::Float8E4M3FN ? Format::E4M3FN : Format::E5M2;
  switch (x.dtype) {
    case DType::BFloat16: return cast_typed<bfloat16>(x, out, format, options);
    case DType::Float16: return cast_typed<float16>(x, out, format, options);
    default: return cast_typed<float>(x, out, format, options);
  }
}

}  // namespace lmk::fp8
