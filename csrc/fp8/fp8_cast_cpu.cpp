// fp8 casts on the CPU. Each element is converted independently (fp8_convert.h), so chunks write
// disjoint outputs and results never depend on the thread count. The loops are compiled once per
// x86-64 SIMD level (LMK_SIMD_CLONES); the conversion is branch-free integer arithmetic, which the
// compiler vectorises, and the transposed cast goes tile by tile so both sides stay in cache.
#include <algorithm>

#include "common/numeric.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "fp8/fp8_cast.h"

namespace lmk::fp8 {
namespace {

constexpr int64_t kGrainElements = 1 << 15;
constexpr int64_t kTile = 64;

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

// out[c * rows + r] = fp8(x[r * row_stride + c]) for r in [r0, r1), c in [c0, c1): the tile's rows
// are converted along x's contiguous rows by the vectorised run kernel into a small buffer, which
// is then transposed byte by byte.
template <typename T>
void cast_tile(const T* x, MatrixShape shape, int64_t r0, int64_t r1, int64_t c0, int64_t c1, uint8_t* out,
               Format format, const CastOptions& options) {
  uint8_t tile[kTile * kTile];
  for (int64_t r = r0; r < r1; ++r)
    cast_run_simd(x + r * shape.row_stride + c0, c1 - c0, uint64_t(r) * uint64_t(shape.cols) + uint64_t(c0),
                  options.seed, tile + (r - r0) * kTile, format, options.rounding);
  for (int64_t c = c0; c < c1; ++c) {
    uint8_t* out_row = out + c * shape.rows + r0;
    const uint8_t* tile_column = tile + (c - c0);
    const int64_t count = r1 - r0;
    for (int64_t r = 0; r < count; ++r) out_row[r] = tile_column[r * kTile];
  }
}

template <typename T>
void cast_typed(const TensorView& x, const TensorView& out, Format format, const CastOptions& options) {
  const MatrixShape shape = matrix_shape(x);
  const T* in = x.as<const T>();
  uint8_t* o = out.as<uint8_t>();
  if (shape.rows == 0 || shape.cols == 0) return;
  if (options.transpose) {
    // Tiles in x's row-major order: a row of tiles reads one band of x's rows page by page.
    const int64_t row_tiles = (shape.rows + kTile - 1) / kTile;
    parallel_for(0, row_tiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kTile, r1 = std::min(shape.rows, r0 + kTile);
        for (int64_t c0 = 0; c0 < shape.cols; c0 += kTile)
          cast_tile(in, shape, r0, r1, c0, std::min(shape.cols, c0 + kTile), o, format, options);
      }
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
