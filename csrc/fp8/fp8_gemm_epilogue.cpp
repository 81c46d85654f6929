#include "fp8/fp8_gemm_epilogue.h"

#include "common/simd.h"
#include "common/vec.h"

namespace lmk::fp8 {
namespace {

// Sixteen columns at a time in vector registers, the rest one by one.
template <typename T>
__attribute__((always_inline)) inline void store_row(T* dst, const float* acc, int64_t columns, float alpha,
                                                     const float* bias) {
  int64_t j = 0;
  for (; j + 16 <= columns; j += 16) {
    vec::f32x8 lo = alpha * vec::load8(acc + j), hi = alpha * vec::load8(acc + j + 8);
    if (bias) {
      lo += vec::load8(bias + j);
      hi += vec::load8(bias + j + 8);
    }
    vec::store8(dst + j, lo);
    vec::store8(dst + j + 8, hi);
  }
  for (; j < columns; ++j) {
    float value = alpha * acc[j];
    if (bias) value = value + bias[j];
    dst[j] = from_float<T>(value);
  }
}

}  // namespace

LMK_SIMD_CLONES void store_output_row(float* dst, const float* acc, int64_t columns, float alpha, const float* bias) {
  store_row(dst, acc, columns, alpha, bias);
}

LMK_SIMD_CLONES void store_output_row(bfloat16* dst, const float* acc, int64_t columns, float alpha,
                                      const float* bias) {
  store_row(dst, acc, columns, alpha, bias);
}

LMK_SIMD_CLONES void store_output_row(float16* dst, const float* acc, int64_t columns, float alpha,
                                      const float* bias) {
  store_row(dst, acc, columns, alpha, bias);
}

}  // namespace lmk::fp8
