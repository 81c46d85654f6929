// FP8 -> fp32 decoding, exact, on the host and in CUDA device code (used by the fp8_gemm kernels).
//
// float8_e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, S.1111.111 is NaN;
//                subnormals are mantissa * 2^-9.
// float8_e5m2:   the top byte of an IEEE half (bias 15, infinities and NaNs as in IEEE).
#pragma once
#include <cstdint>

#include "common/numeric.h"
#include "fp8/fp8_convert.h"  // Format

namespace lmk::fp8 {

LMK_HD float decode_e4m3fn(uint8_t bits) {
  const uint32_t sign = uint32_t(bits & 0x80u) << 24;
  const uint32_t exponent = (bits >> 3) & 0xFu, mantissa = bits & 0x7u;
  if (exponent == 0xFu && mantissa == 0x7u) return bits_to_float(sign | 0x7FC00000u);
  if (exponent == 0) return bits_to_float(sign | float_to_bits(float(mantissa) * 0x1p-9f));
  return bits_to_float(sign | ((exponent + 120u) << 23) | (mantissa << 20));
}

LMK_HD float decode_e5m2(uint8_t bits) { return to_float(float16{uint16_t(uint16_t(bits) << 8)}); }

LMK_HD float decode(uint8_t bits, Format format) {
  return format == Format::E4M3FN ? decode_e4m3fn(bits) : decode_e5m2(bits);
}

}  // namespace lmk::fp8
