// FP8 operands decoded to bf16 pairs for the x86 bf16 dot-product instructions (VDPBF16PS and AMX's
// TDPBF16PS), shared by the AVX512_BF16 and AMX kernels of the FP8 GEMM.
//
// Every FP8 value is exactly a bf16 value (at most 4 significant bits, exponents far inside bf16's
// range), so decoding loses nothing. A Word holds the bf16 values of k and k + 1 (K is padded to
// even with +0). Which half holds k is the kernel's choice: VDPBF16PS adds the odd element's
// product first, so the sequential kernel stores x[k] high (`PairOrder::KHigh`); AMX reads its B
// tiles in the VNNI layout, x[k] low (`PairOrder::KLow`).
#pragma once
#if defined(__x86_64__) && defined(__GNUC__)
#define LMK_HAVE_BF16_PAIRS 1
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "fp8/fp8_gemm_decode.h"

namespace lmk::fp8 {

enum class PairOrder { KHigh, KLow };

using Bf16Word = uint32_t;

// Each FP8 bit pattern's bf16 bits.
inline const std::array<uint16_t, 256>& bf16_table(DType dtype) {
  const auto make = [](Format format) {
    std::array<uint16_t, 256> t{};
    for (int bits = 0; bits < 256; ++bits) {
      uint32_t word;
      const float x = decode(uint8_t(bits), format);
      std::memcpy(&word, &x, sizeof word);
      t[bits] = uint16_t(word >> 16);  // exact: an FP8 value has at most 4 significant bits
    }
    return t;
  };
  static const std::array<uint16_t, 256> e4m3 = make(Format::E4M3FN), e5m2 = make(Format::E5M2);
  return dtype == DType::Float8E4M3FN ? e4m3 : e5m2;
}

inline Bf16Word bf16_word(uint16_t k, uint16_t k_plus_1, PairOrder order) {
  return order == PairOrder::KHigh ? Bf16Word(k) << 16 | k_plus_1 : Bf16Word(k_plus_1) << 16 | k;
}

// The 16 words of 32 consecutive k of an FP8 row, decoded arithmetically, x[k] low (exact): an E5M2
// byte is the top byte of its fp16 bit pattern, converted through fp32; an E4M3 byte's
// normal value is its bits shifted into place with the exponent rebiased (7 -> 127), its 7
// subnormals come from a table and S.1111.111 is NaN (integer instructions only: about twice as
// fast as through fp16). For KHigh each word's halves are then swapped.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512i decode_32(bool e4m3, __m256i bytes,
                                                                                 PairOrder order) {
  const __m512i wide = _mm512_cvtepu8_epi16(bytes);
  __m512i words;
  if (e4m3) {
    const __m512i magnitude = _mm512_and_si512(wide, _mm512_set1_epi16(0x7F));
    const __m512i sign = _mm512_and_si512(_mm512_slli_epi16(wide, 8), _mm512_set1_epi16(int16_t(0x8000)));
    const __m512i subnormals = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                0x3C60, 0x3C40, 0x3C20, 0x3C00, 0x3BC0, 0x3B80, 0x3B00, 0);
    words = _mm512_add_epi16(_mm512_slli_epi16(magnitude, 4), _mm512_set1_epi16(0x3C00));
    words = _mm512_mask_permutexvar_epi16(words, _mm512_cmplt_epu16_mask(magnitude, _mm512_set1_epi16(8)), magnitude,
                                          subnormals);
    words = _mm512_or_si512(words, sign);
    words = _mm512_mask_mov_epi16(words, _mm512_cmpeq_epi16_mask(magnitude, _mm512_set1_epi16(0x7F)),
                                  _mm512_set1_epi16(0x7FC0));
  } else {
    const __m512i half_bits = _mm512_slli_epi16(wide, 8);
    const __m512 low = _mm512_cvtph_ps(_mm512_castsi512_si256(half_bits));
    const __m512 high = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(half_bits, 1));
    words = (__m512i)_mm512_cvtne2ps_pbh(high, low);
  }
  return order == PairOrder::KHigh ? _mm512_rol_epi32(words, 16) : words;
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512i decode_32(bool e4m3, const uint8_t* bytes,
                                                                                 PairOrder order) {
  return decode_32(e4m3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes)), order);
}

// r[i][j] -> r[j][i] for a 16 x 16 matrix of 32-bit words, one row per register.
__attribute__((target("avx512f"))) inline void transpose_16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lanes: even ones of a pair of registers, then odd ones
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xDD);
  }
}

// Panel [steps][width] of words (steps >= ceil(k / 2)) of `rows` FP8 rows (stride `row_stride`
// bytes) of K = k; zeros past `rows` and past k. 32 k of 16 rows at a time: decoded, transposed in
// registers, stored as 16 steps of 16 words, so the panel is written in whole vectors (strided
// single-word stores cost 1.7 ms per 2048 x 2048 operand, half of it for this). The last k % 32
// through the table.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void decode_pair_panel(
    DType dtype, const uint8_t* first_row, int64_t row_stride, int64_t rows, int64_t k, int64_t steps,
    Bf16Word* dst, int64_t width, PairOrder order) {
  const bool e4m3 = dtype == DType::Float8E4M3FN;
  const int64_t vector_k = k / 32 * 32;
  for (int64_t h = 0; h < width; h += 16) {
    const int64_t lanes = std::min<int64_t>(16, width - h), live = std::clamp<int64_t>(rows - h, 0, lanes);
    const __mmask16 mask = __mmask16((1u << lanes) - 1);
    for (int64_t j = 0; j < vector_k; j += 32) {
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i)
        r[i] = i < live ? decode_32(e4m3, first_row + (h + i) * row_stride + j, order) : _mm512_setzero_si512();
      transpose_16x16(r);
      for (int q = 0; q < 16; ++q) _mm512_mask_storeu_epi32(dst + (j / 2 + q) * width + h, mask, r[q]);
    }
  }
  const std::array<uint16_t, 256>& bf16 = bf16_table(dtype);
  for (int64_t j = vector_k; j < 2 * steps; j += 2)  // padding with +0 adds +0 products, which change no sum
    for (int64_t w = 0; w < width; ++w) {
      uint16_t x = 0, y = 0;
      if (w < rows) {
        const uint8_t* row = first_row + w * row_stride;
        x = j < k ? bf16[row[j]] : 0;
        y = j + 1 < k ? bf16[row[j + 1]] : 0;
      }
      dst[j / 2 * width + w] = bf16_word(x, y, order);
    }
}

// decode_32 of the bytes that `mask` selects (KLow order); the others, not read, decode to +0.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline __m512i decode_32_masked(bool e4m3,
                                                                                                const uint8_t* bytes,
                                                                                                __mmask32 mask) {
  return mask ? decode_32(e4m3, _mm256_maskz_loadu_epi8(mask, bytes), PairOrder::KLow) : _mm512_setzero_si512();
}

// The same panel from an operand stored transposed: the panel's `rows` rows are consecutive bytes
// (from `first`) of each of the k memory rows (stride `k_stride` bytes). Words pair memory rows
// k and k + 1, so 32 rows at a time: two rows of 32 bytes decoded, then their bf16 interleaved.
// Masked loads read nothing past `rows`.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void decode_pair_panel_transposed(
    DType dtype, const uint8_t* first, int64_t k_stride, int64_t rows, int64_t k, int64_t steps, Bf16Word* dst,
    int64_t width, PairOrder order) {
  const bool e4m3 = dtype == DType::Float8E4M3FN;
  alignas(64) static constexpr uint16_t kInterleave[2][32] = {
      {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39, 8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47},
      {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
       24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63}};
  const __m512i first_half = _mm512_load_si512(kInterleave[0]), second_half = _mm512_load_si512(kInterleave[1]);
  for (int64_t h = 0; h < width; h += 32) {
    const int64_t live = std::clamp<int64_t>(rows - h, 0, 32), lanes = std::min<int64_t>(32, width - h);
    const __mmask32 load_mask = live == 32 ? ~__mmask32(0) : __mmask32((1u << live) - 1);
    const __mmask32 store_mask = lanes == 32 ? ~__mmask32(0) : __mmask32((1u << lanes) - 1);
    for (int64_t s = 0; s < steps; ++s) {
      const __m512i x = 2 * s < k ? decode_32_masked(e4m3, first + 2 * s * k_stride + h, load_mask) : __m512i{};
      const __m512i y =
          2 * s + 1 < k ? decode_32_masked(e4m3, first + (2 * s + 1) * k_stride + h, load_mask) : __m512i{};
      const __m512i lo = order == PairOrder::KLow ? x : y, hi = order == PairOrder::KLow ? y : x;
      Bf16Word* out = dst + s * width + h;
      _mm512_mask_storeu_epi32(out, __mmask16(store_mask), _mm512_permutex2var_epi16(lo, first_half, hi));
      _mm512_mask_storeu_epi32(out + 16, __mmask16(store_mask >> 16), _mm512_permutex2var_epi16(lo, second_half, hi));
    }
  }
}

}  // namespace lmk::fp8
#endif
