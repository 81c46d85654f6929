// Eight fp32 lanes as a GCC/Clang vector type, with loads from fp32, bf16 and fp16 storage.
//
// Inside an LMK_SIMD_CLONES function these compile to one AVX register (AVX-512 and AVX2 clones)
// or two SSE registers (baseline), and stay in registers: plain loops over float arrays do not
// reliably (GCC splits a 16-float accumulator into odd pieces). Every helper is inlined into its
// caller, so the vector calling convention never crosses a function boundary.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/numeric.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors are only passed between inlined helpers
#endif

namespace lmk::vec {

typedef float f32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));

template <typename To, typename From>
__attribute__((always_inline)) inline To bitcast(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To t;
  std::memcpy(&t, &v, sizeof t);
  return t;
}

__attribute__((always_inline)) inline u32x8 widen(const uint16_t* p) {
  u16x8 h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, u32x8);
}

__attribute__((always_inline)) inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

typedef uint16_t u16x16 __attribute__((vector_size(32)));

// bf16 -> fp32 is the 16 bits placed above 16 zero bits: one interleave with zeros.
__attribute__((always_inline)) inline f32x8 load8(const bfloat16* p) {
  u16x8 h;
  std::memcpy(&h, p, sizeof h);
  const u16x8 zero = {};
  return bitcast<f32x8>(__builtin_shufflevector(zero, h, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15));
}

// The lane-wise form of to_float(float16) in numeric.h.
__attribute__((always_inline)) inline f32x8 load8(const float16* p) {
  const u32x8 w = widen(&p->bits) << 16;
  const u32x8 sign = w & 0x80000000u, two_w = w + w;
  const f32x8 normal = bitcast<f32x8>((two_w >> 4) + (0xE0u << 23)) * 0x1p-112f;
  const f32x8 subnormal = bitcast<f32x8>((two_w >> 17) | (126u << 23)) - 0.5f;
  const i32x8 is_subnormal = (i32x8)(two_w < (1u << 27));
  return bitcast<f32x8>(sign | (is_subnormal ? bitcast<u32x8>(subnormal) : bitcast<u32x8>(normal)));
}

template <typename T>
__attribute__((always_inline)) inline void store8(T* out, f32x8 v) {
  float lanes[8];
  std::memcpy(lanes, &v, sizeof lanes);
  for (int k = 0; k < 8; ++k) out[k] = from_float<T>(lanes[k]);
}

}  // namespace lmk::vec
