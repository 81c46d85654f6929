// 16-bit floating-point storage types and their conversions to and from fp32, usable on the host
// and in CUDA device code. The conversions are branch-free bit manipulation so that CPU loops
// over them vectorise; rounding to 16 bits is round-to-nearest-even, and NaN stays NaN.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LMK_HD __host__ __device__ __forceinline__
#else
#define LMK_HD inline
#endif

namespace lmk {

struct bfloat16 { uint16_t bits; };
struct float16 { uint16_t bits; };

LMK_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

LMK_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

LMK_HD float to_float(float x) { return x; }
LMK_HD float to_float(bfloat16 x) { return bits_to_float(uint32_t(x.bits) << 16); }

// IEEE half -> float: rebias the exponent by multiplication (exact for normals, infinities and
// NaNs after the shift), and rebuild subnormals by subtracting the implicit bit from a magic number.
LMK_HD float to_float(float16 x) {
  const uint32_t w = uint32_t(x.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normal = bits_to_float((two_w >> 4) + (0xE0u << 23)) * bits_to_float(0x7800000u);  // * 2^-112
  const float subnormal = bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? float_to_bits(subnormal) : float_to_bits(normal);
  return bits_to_float(sign | magnitude);
}

template <typename T>
LMK_HD T from_float(float f);

template <>
LMK_HD float from_float<float>(float f) { return f; }

template <>
LMK_HD bfloat16 from_float<bfloat16>(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bfloat16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  return bfloat16{uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}

// float -> IEEE half with round-to-nearest-even: scale into the half range so the float unit
// rounds the mantissa for us, then reassemble the bits.
template <>
LMK_HD float16 from_float<float16>(float f) {
  const uint32_t w = float_to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  float base = (bits_to_float(w & 0x7FFFFFFFu) * bits_to_float(0x77800000u)) * bits_to_float(0x08800000u);
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = bits_to_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_to_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return float16{uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}

}  // namespace lmk
