// int8 absmax quantisation on the CPU: rows in parallel, each row in two passes (absmax, then
// quantise), sixteen values at a time in fp32 vectors. A row of a Llama matrix (4096 values) fits
// in L1/L2, so the second pass re-reads it from cache and the matrix crosses memory once each way.
//
// Bitwise agreement with the torch composition, at every SIMD level and for the scalar tails:
//  * the absmax is a max over the magnitudes' bit patterns as integers, which orders finite values
//    like their magnitudes, puts inf above them and NaN above inf (so one max also detects
//    non-finite rows), and is exact and order-independent;
//  * round-half-even of a value clamped to [-127, 127] is (v + 1.5 * 2^23) - 1.5 * 2^23: the add
//    rounds to an integer in the default rounding mode, exactly, since |v| < 2^22. Clamping before
//    rounding equals clamping after it, because rounding is monotone and fixes -127 and 127. The
//    result of a value that rounds to zero is +0, as the int8 round trip gives.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/dispatch.h"
#include "common/memory.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/vec.h"
#include "quant/int8_absmax.h"

namespace lmk::quant {
namespace {

constexpr uint32_t kMagnitudeMask = 0x7FFFFFFFu;
constexpr uint32_t kInfinityBits = 0x7F800000u;
constexpr float kRoundingMagic = 0x1.8p23f;
constexpr float kLevels = 127.f;

// Whether 16-element vectors of T hold elements 0-7 and 8-15 (false: bf16's even and odd elements).
template <typename T>
constexpr bool kSequentialLanes = !std::is_same_v<T, bfloat16>;

// The largest |W[r, c]| as fp32 bits (above kInfinityBits - 1 when the row is not finite).
template <typename T>
__attribute__((always_inline)) inline uint32_t absmax_bits(const T* __restrict row, int64_t cols) {
  vec::u32x8 most_a = {}, most_b = {};
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    vec::f32x8 a, b;
    vec::load16(row + c, a, b);
    const vec::u32x8 ma = vec::bitcast<vec::u32x8>(a) & kMagnitudeMask;
    const vec::u32x8 mb = vec::bitcast<vec::u32x8>(b) & kMagnitudeMask;
    most_a = ma > most_a ? ma : most_a;
    most_b = mb > most_b ? mb : most_b;
  }
  uint32_t most = 0;
  for (int k = 0; k < 8; ++k) most = std::max({most, uint32_t(most_a[k]), uint32_t(most_b[k])});
  for (; c < cols; ++c) most = std::max(most, float_to_bits(to_float(row[c])) & kMagnitudeMask);
  return most;
}

// round_half_even(clamp(x / divisor, -127, 127)), lane-wise and for one value.
__attribute__((always_inline)) inline vec::f32x8 quantize_lanes(vec::f32x8 x, float divisor) {
  const vec::f32x8 high = vec::f32x8{} + kLevels, low = -high;
  vec::f32x8 v = x / divisor;
  v = v < low ? low : v;
  v = v > high ? high : v;
  return (v + kRoundingMagic) - kRoundingMagic;
}

__attribute__((always_inline)) inline float quantize_value(float x, float divisor) {
  float v = x / divisor;
  v = v < -kLevels ? -kLevels : v;
  v = v > kLevels ? kLevels : v;
  return (v + kRoundingMagic) - kRoundingMagic;
}

typedef int8_t i8x8 __attribute__((vector_size(8)));
typedef int8_t i8x16 __attribute__((vector_size(16)));

// Integral values in [-127, 127] as int8, in element order (undoing bf16's even/odd split).
template <typename T>
__attribute__((always_inline)) inline void store16_int8(int8_t* __restrict out, vec::f32x8 a, vec::f32x8 b) {
  const i8x8 na = __builtin_convertvector(__builtin_convertvector(a, vec::i32x8), i8x8);
  const i8x8 nb = __builtin_convertvector(__builtin_convertvector(b, vec::i32x8), i8x8);
  i8x16 joined;
  if constexpr (kSequentialLanes<T>)
    joined = __builtin_shufflevector(na, nb, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  else
    joined = __builtin_shufflevector(na, nb, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  std::memcpy(out, &joined, sizeof joined);
}

// Sixteen int8 values as fp32 vectors in the lane order of T (so that store16<T> writes them back in order).
template <typename T>
__attribute__((always_inline)) inline void load16_int8(const int8_t* __restrict in, vec::f32x8& a, vec::f32x8& b) {
  i8x16 all;
  std::memcpy(&all, in, sizeof all);
  i8x8 first, second;
  if constexpr (kSequentialLanes<T>) {
    first = __builtin_shufflevector(all, all, 0, 1, 2, 3, 4, 5, 6, 7);
    second = __builtin_shufflevector(all, all, 8, 9, 10, 11, 12, 13, 14, 15);
  } else {
    first = __builtin_shufflevector(all, all, 0, 2, 4, 6, 8, 10, 12, 14);
    second = __builtin_shufflevector(all, all, 1, 3, 5, 7, 9, 11, 13, 15);
  }
  a = __builtin_convertvector(__builtin_convertvector(first, vec::i32x8), vec::f32x8);
  b = __builtin_convertvector(__builtin_convertvector(second, vec::i32x8), vec::f32x8);
}

// The scale of a row and the divisor its values are quantised with; false for a non-finite row.
template <typename T>
__attribute__((always_inline)) inline bool row_scale(const T* row, int64_t cols, float& scale, float& divisor) {
  const uint32_t most = absmax_bits(row, cols);
  if (most >= kInfinityBits) return false;
  scale = bits_to_float(most) / kLevels;
  divisor = scale == 0.f ? 1.f : scale;
  return true;
}

template <typename T>
__attribute__((always_inline)) inline bool quantize_row(const T* __restrict row, int64_t cols, int8_t* __restrict q,
                                                        float& scale) {
  float divisor;
  if (!row_scale(row, cols, scale, divisor)) return false;
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    vec::f32x8 a, b;
    vec::load16(row + c, a, b);
    store16_int8<T>(q + c, quantize_lanes(a, divisor), quantize_lanes(b, divisor));
  }
  for (; c < cols; ++c) q[c] = int8_t(quantize_value(to_float(row[c]), divisor));
  return true;
}

template <typename T>
__attribute__((always_inline)) inline void dequantize_row(const int8_t* __restrict q, float scale, int64_t cols,
                                                          T* __restrict out) {
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    vec::f32x8 a, b;
    load16_int8<T>(q + c, a, b);
    vec::store16(out + c, a * scale, b * scale);
  }
  for (; c < cols; ++c) out[c] = from_float<T>(float(q[c]) * scale);
}

// out may be row itself: each 16 values are read before they are written.
template <typename T>
__attribute__((always_inline)) inline bool fake_quantize_row(const T* row, int64_t cols, T* out, float& scale) {
  float divisor;
  if (!row_scale(row, cols, scale, divisor)) return false;
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    vec::f32x8 a, b;
    vec::load16(row + c, a, b);
    vec::store16(out + c, quantize_lanes(a, divisor) * scale, quantize_lanes(b, divisor) * scale);
  }
  for (; c < cols; ++c) out[c] = from_float<T>(quantize_value(to_float(row[c]), divisor) * scale);
  return true;
}

// The SIMD-cloned entry points, one per value type, and overloads that pick them.
#define LMK_DEFINE_KERNELS(T, SUFFIX)                                                                         \
  LMK_SIMD_CLONES bool quantize_row_##SUFFIX(const T* row, int64_t cols, int8_t* q, float& scale) {           \
    return quantize_row(row, cols, q, scale);                                                                 \
  }                                                                                                           \
  LMK_SIMD_CLONES void dequantize_row_##SUFFIX(const int8_t* q, float scale, int64_t cols, T* out) {          \
    dequantize_row(q, scale, cols, out);                                                                      \
  }                                                                                                           \
  LMK_SIMD_CLONES bool fake_quantize_row_##SUFFIX(const T* row, int64_t cols, T* out, float& scale) {         \
    return fake_quantize_row(row, cols, out, scale);                                                          \
  }                                                                                                           \
  inline bool quantize_row_simd(const T* row, int64_t cols, int8_t* q, float& scale) {                       \
    return quantize_row_##SUFFIX(row, cols, q, scale);                                                        \
  }                                                                                                           \
  inline void dequantize_row_simd(const int8_t* q, float scale, int64_t cols, T* out) {                      \
    dequantize_row_##SUFFIX(q, scale, cols, out);                                                             \
  }                                                                                                           \
  inline bool fake_quantize_row_simd(const T* row, int64_t cols, T* out, float& scale) {                     \
    return fake_quantize_row_##SUFFIX(row, cols, out, scale);                                                 \
  }
LMK_DEFINE_KERNELS(float, f32)
LMK_DEFINE_KERNELS(bfloat16, bf16)
LMK_DEFINE_KERNELS(float16, f16)
#undef LMK_DEFINE_KERNELS

// A fresh output matrix of Llama size costs more in 4 KiB page faults than the kernel takes.
void advise_output(const TensorView& t) {
  if (t.numel() == 0) return;
  const int64_t elements = (t.size(0) - 1) * t.stride(0) + t.size(1);
  advise_huge_pages(t.data, size_t(elements) * size_t(dtype_itemsize(t.dtype)));
}

// About 64 KiB of row reads per chunk, so small matrices stay on one thread.
int64_t row_grain(int64_t cols, int64_t itemsize) {
  return std::max<int64_t>(1, (int64_t(64) << 10) / std::max<int64_t>(1, cols * itemsize));
}

// Runs row_fn(r) -> bool for every row in parallel; raises for the first row that returned false.
template <typename RowFn>
void for_each_row(int64_t rows, int64_t cols, int64_t itemsize, RowFn row_fn) {
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  parallel_for(0, rows, row_grain(cols, itemsize), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      if (row_fn(r)) continue;
      int64_t seen = first_bad.load();
      while (r < seen && !first_bad.compare_exchange_weak(seen, r)) {}
    }
  });
  if (const int64_t r = first_bad.load(); r != std::numeric_limits<int64_t>::max())
    fail(ErrorKind::Value, "weight: row ", r,
         " holds a non-finite value (inf or NaN); int8 absmax quantisation needs finite weights");
}

}  // namespace

void quantize_cpu(const TensorView& weight, const TensorView& q, const TensorView& scale) {
  dispatch_float(weight.dtype, "weight", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t cols = weight.size(1);
    advise_output(q);
    for_each_row(weight.size(0), cols, sizeof(T), [&](int64_t r) {
      return quantize_row_simd(weight.as<const T>() + r * weight.stride(0), cols, q.as<int8_t>() + r * q.stride(0),
                               scale.as<float>()[r]);
    });
  });
}

void dequantize_cpu(const TensorView& q, const TensorView& scale, const TensorView& out) {
  dispatch_float(out.dtype, "out", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t cols = q.size(1);
    advise_output(out);
    parallel_for(0, q.size(0), row_grain(cols, 1), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        dequantize_row_simd(q.as<const int8_t>() + r * q.stride(0), scale.as<const float>()[r], cols,
                            out.as<T>() + r * out.stride(0));
    });
  });
}

void fake_quantize_cpu(const TensorView& weight, const TensorView& out, const TensorView& scale) {
  dispatch_float(weight.dtype, "weight", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t cols = weight.size(1);
    if (out.data != weight.data) advise_output(out);
    for_each_row(weight.size(0), cols, sizeof(T), [&](int64_t r) {
      return fake_quantize_row_simd(weight.as<const T>() + r * weight.stride(0), cols,
                                    out.as<T>() + r * out.stride(0), scale.as<float>()[r]);
    });
  });
}

}  // namespace lmk::quant
