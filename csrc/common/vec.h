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

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace lmk::vec {

typedef float f32x8 __attribute__((vector_size(32)));
// Sixteen lanes: one AVX-512 register, two AVX ones; for loops whose 8-lane form would need twice
// the instructions on AVX-512 and the same registers either way.
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
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

__attribute__((always_inline)) inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

__attribute__((always_inline)) inline void store16(float* out, f32x16 v) { std::memcpy(out, &v, sizeof v); }

// The lane-wise form of to_float(float16) in numeric.h.
__attribute__((always_inline)) inline f32x8 load8(const float16* p) {
  const u32x8 w = widen(&p->bits) << 16;
  const u32x8 sign = w & 0x80000000u, two_w = w + w;
  const f32x8 normal = bitcast<f32x8>((two_w >> 4) + (0xE0u << 23)) * 0x1p-112f;
  const f32x8 subnormal = bitcast<f32x8>((two_w >> 17) | (126u << 23)) - 0.5f;
  const i32x8 is_subnormal = (i32x8)(two_w < (1u << 27));
  return bitcast<f32x8>(sign | (is_subnormal ? bitcast<u32x8>(subnormal) : bitcast<u32x8>(normal)));
}

#if defined(__x86_64__)
// load8(const float16*) by F16C's VCVTPH2PS: the same values (every fp16 is exactly a float), one
// instruction where the portable form takes a dozen. Not inlinable into the SIMD clones' baseline
// level, so only kernels compiled for F16C call it (x86-64-v3 and up, flattened: embedding bag).
__attribute__((target("f16c,avx"))) inline f32x8 load8_f16c(const float16* p) {
  return bitcast<f32x8>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#endif

// Sixteen consecutive values as two 8-lane vectors. fp32 and fp16: elements 0-7 and 8-15. bf16: the
// even and the odd elements, which one load, a shift and a mask produce; store16 puts them back.
// Element-wise arithmetic on the pair is therefore the same for every type.
__attribute__((always_inline)) inline void load16(const float* p, f32x8& a, f32x8& b) {
  a = load8(p);
  b = load8(p + 8);
}

__attribute__((always_inline)) inline void load16(const float16* p, f32x8& a, f32x8& b) {
  a = load8(p);
  b = load8(p + 8);
}

__attribute__((always_inline)) inline void load16(const bfloat16* p, f32x8& a, f32x8& b) {
  u32x8 pairs;
  std::memcpy(&pairs, p, sizeof pairs);
  a = bitcast<f32x8>(pairs << 16);
  b = bitcast<f32x8>(pairs & 0xFFFF0000u);
}

// Eight consecutive values of each storage type, rounded as from_float: fp32 needs no conversion.
__attribute__((always_inline)) inline void store8(float* out, f32x8 v) { std::memcpy(out, &v, sizeof v); }

// The lane-wise form of from_float<bfloat16>, left in the high 16 bits of each lane.
__attribute__((always_inline)) inline u32x8 round_to_bf16_high(f32x8 x) {
  const u32x8 u = bitcast<u32x8>(x);
  const u32x8 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  const u32x8 quiet_nan = (u | 0x00400000u) & 0xFFFF0000u;
  return (i32x8)((u & 0x7FFFFFFFu) > 0x7F800000u) ? quiet_nan : rounded;
}

// Eight consecutive bf16, rounded as from_float<bfloat16>.
__attribute__((always_inline)) inline void store8(bfloat16* out, f32x8 v) {
  const u16x8 halves = __builtin_convertvector(round_to_bf16_high(v) >> 16, u16x8);
  std::memcpy(out, &halves, sizeof halves);
}

// The lane-wise form of from_float<float16>: the float unit rounds to nearest even once the value
// is scaled into the half range; NaN becomes the quiet 0x7E00 with its sign.
__attribute__((always_inline)) inline u16x8 round_to_fp16(f32x8 x) {
  const u32x8 w = bitcast<u32x8>(x);
  const u32x8 shl1_w = w + w;
  const u32x8 sign = w & 0x80000000u;
  // Both scalings are by powers of two, exact short of overflow: a fused multiply-add rounds alike.
  f32x8 base = (bitcast<f32x8>(w & 0x7FFFFFFFu) * 0x1p112f) * 0x1p-110f;
  const u32x8 min_bias = u32x8{} + 0x71000000u;
  u32x8 bias = shl1_w & 0xFF000000u;
  bias = (i32x8)(bias < min_bias) ? min_bias : bias;
  base = bitcast<f32x8>((bias >> 1) + 0x07800000u) + base;
  const u32x8 bits = bitcast<u32x8>(base);
  const u32x8 nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  const u32x8 quiet_nan = u32x8{} + 0x7E00u;
  const u32x8 half = (sign >> 16) | ((i32x8)(shl1_w > 0xFF000000u) ? quiet_nan : nonsign);
  return __builtin_convertvector(half, u16x8);
}

// Eight consecutive fp16, rounded as from_float<float16>.
__attribute__((always_inline)) inline void store8(float16* out, f32x8 v) {
  const u16x8 halves = round_to_fp16(v);
  std::memcpy(out, &halves, sizeof halves);
}

template <typename T>
__attribute__((always_inline)) inline void store16(T* out, f32x8 a, f32x8 b) {
  store8(out, a);
  store8(out + 8, b);
}

template <>
__attribute__((always_inline)) inline void store16(bfloat16* out, f32x8 even, f32x8 odd) {
  const u32x8 pairs = (round_to_bf16_high(even) >> 16) | round_to_bf16_high(odd);
  std::memcpy(out, &pairs, sizeof pairs);
}

}  // namespace lmk::vec
