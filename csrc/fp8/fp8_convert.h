// Scalar fp32 -> fp8 conversions shared by the CPU and CUDA kernels (LMK_HD: host and device).
//
// Formats (OCP 8-bit floating point): E4M3FN (bias 7, no infinities, max 448 = 0x7E, NaN 0x7F) and
// E5M2 (bias 15, max 57344 = 0x7B, infinities 0x7C, NaNs above). Every finite |x| is written as
// n * 2^(t - m) with t = max(floor(log2 |x|), e_min), m the mantissa bits and e_min the smallest
// normal exponent; the fp8 magnitude code is then (t - e_min) * 2^m + n, which covers subnormals
// (t = e_min, n < 2^m), normals (n in [2^m, 2^(m+1))) and the carry of a rounding up (n = 2^(m+1))
// with one formula. n is rounded from the exact fixed-point value of x:
//   nearest:    round half to even;
//   stochastic: floor(|x| / 2^(t - m) + u), u = r / 2^32 with r a 32-bit hash of (seed, index), so
//               n rounds up with probability equal to the fractional part (quantised to 2^-32; an
//               |x| more than 2^12 below the fp8 subnormal quantum loses the bits past 2^-32).
// Codes above the format's max saturate to it (so do infinities); NaN becomes sign | 0x7F, a NaN in
// both formats (and torch's choice); the sign is kept, also for zeros and values rounding to zero.
#pragma once
#include <cstdint>

#include "common/numeric.h"

namespace lmk::fp8 {

enum class Format : int { E4M3FN = 0, E5M2 = 1 };
enum class Rounding : int { Nearest = 0, Stochastic = 1 };

struct FormatTraits {
  int mantissa_bits;
  int min_normal_exponent;
  uint32_t max_code;  // the magnitude code of the largest finite value
};

constexpr uint8_t kNanCode = 0x7F;

// splitmix64's finaliser over seed + (index + 1) * golden ratio: 32 uniform bits per (seed, index),
// the same on every device, thread count and schedule.
LMK_HD uint32_t random_bits(uint64_t seed, uint64_t index) {
  uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return uint32_t(z >> 32);
}

// The fp8 bits of x; `random` is only read for stochastic rounding.
template <Format F, Rounding R>
LMK_HD uint8_t encode(float x, uint32_t random) {
  constexpr FormatTraits tr = F == Format::E4M3FN ? FormatTraits{3, -6, 0x7Eu} : FormatTraits{2, -14, 0x7Bu};
  const uint32_t u = float_to_bits(x);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t magnitude = u & 0x7FFFFFFFu;
  const int32_t biased = int32_t(magnitude >> 23);
  const int32_t exponent = biased > 0 ? biased : 1;  // fp32 subnormals share exponent 1 - 127
  const uint32_t significand = (magnitude & 0x7FFFFFu) | (biased > 0 ? 0x800000u : 0u);
  const int32_t target = exponent - 127 > tr.min_normal_exponent ? exponent - 127 : tr.min_normal_exponent;
  // |x| / 2^(target - m) = significand / 2^shift, shift >= 23 - m.
  const int32_t shift = 150 + target - tr.mantissa_bits - exponent;
  uint32_t n;
  if (R == Rounding::Nearest) {
    const int32_t s = shift < 25 ? shift : 25;  // past 25 every significand rounds to 0 alike
    n = (significand + (1u << (s - 1)) - 1u + ((significand >> s) & 1u)) >> s;
  } else {
    const int32_t s = shift < 63 ? shift : 63;
    const uint64_t fixed = s <= 32 ? uint64_t(significand) << (32 - s) : uint64_t(significand) >> (s - 32);
    n = uint32_t((fixed + random) >> 32);
  }
  uint32_t code = (uint32_t(target - tr.min_normal_exponent) << tr.mantissa_bits) + n;
  code = code < tr.max_code ? code : tr.max_code;
  if (magnitude > 0x7F800000u) code = kNanCode;
  return uint8_t(sign | code);
}

}  // namespace lmk::fp8
