// FP8 GEMM on the CPU (see fp8_gemm.h for the math and the summation order).
//
// First both operands are decoded once, in parallel, into scratch panels laid out k-major for the
// micro-kernel (A in panels of its rows, B in panels of its columns, zero rows and columns past M
// and N), so that each byte is decoded once rather than once per output tile. The panels live in
// reused scratch blocks (common/scratch.h): fresh ones cost a page fault per page on every call.
// Then the output is cut into kTileM x kTileN tiles, computed in parallel; a tile walks K in blocks
// (the block's slices of A and B stay in L2), and the micro-kernel adds the block's products to
// the tile's fp32 accumulators in increasing k. The accumulators persist across K blocks in
// fp32, so every element is summed in increasing k exactly as in the math, whatever the tiling,
// the micro-kernel or the thread count.
//
// Two micro-kernels, chosen at run time, give bitwise the same results:
// - Bf16Pairs (CPUs with AVX512_BF16): every FP8 value is exactly a bf16 value, and VDPBF16PS
//   adds two bf16 products to an fp32 lane as two rounded additions, the odd element first
//   (measured on the CPUs we run, and as Intel documents it). So A and B are stored as bf16 pairs
//   (k + 1, k) in each 32-bit word, and one instruction adds the products of k and then k + 1:
//   twice the multiply-adds of an fp32 FMA per instruction. DAZ/FTZ cannot bite: FP8 values and
//   their products are normal numbers in fp32 (the smallest product is 2^-25), and so is every
//   nonzero partial sum.
// - Fp32 (any CPU): operands decoded to fp32, a 6 x 16 kernel of 8-lane FMAs.
// LMK_FP8_GEMM_CPU=fp32 forces the second (for tests and comparisons).
#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/dispatch.h"
#include "common/index_math.h"
#include "common/parallel.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "common/vec.h"
#include "fp8/fp8_gemm.h"
#include "fp8/fp8_gemm_decode.h"
#include "fp8/fp8_gemm_epilogue.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LMK_HAVE_BF16_PAIRS 1
#endif

namespace lmk::fp8 {
namespace {

constexpr int64_t kTileN = 64;  // columns of an output tile: a multiple of both kernels' panels

template <typename T>
using Table = std::array<T, 256>;

// Each FP8 bit pattern's value, converted by `convert` from its exact fp32 value.
template <typename T, typename Convert>
const Table<T>& table_of(DType dtype, Convert convert) {
  const auto make = [&](Format format) {
    Table<T> t{};
    for (int bits = 0; bits < 256; ++bits) t[bits] = convert(decode(uint8_t(bits), format));
    return t;
  };
  static const Table<T> e4m3 = make(Format::E4M3FN), e5m2 = make(Format::E5M2);
  return dtype == DType::Float8E4M3FN ? e4m3 : e5m2;
}

// ---- micro-kernel policies --------------------------------------------------------------------
// Each stores an operand as panels [rows / kRows or columns / kPanel][steps][width] of Word, one
// step covering kDepth consecutive k, and offers multiply(a_panel, b_panel, steps, acc): acc rows
// (stride kTileN) += the products of `steps` steps, in increasing k.

struct Fp32 {
  using Word = float;
  static constexpr int kRows = 6;    // 12 accumulators + 2 B + 1 A registers
  static constexpr int kPanel = 16;  // two 8-lane vectors
  static constexpr int kDepth = 1;
  static constexpr int64_t kTileM = 96;
  static constexpr int64_t kBlockSteps = 256;  // a tile's A block (96 KiB) and B block (64 KiB) stay in L2

  static const Table<float>& table(DType dtype) {
    return table_of<float>(dtype, [](float x) { return x; });
  }
  // Panel [steps = k][width] of `rows` rows (stride `row_stride` bytes) of K = k; zeros past `rows`.
  static void decode_panel(DType dtype, const uint8_t* first_row, int64_t row_stride, int64_t rows, int64_t k,
                           Word* dst, int64_t width) {
    const Table<float>& values = table(dtype);
    for (int64_t s = 0; s < k; ++s)
      for (int64_t w = 0; w < width; ++w) dst[s * width + w] = w < rows ? values[first_row[w * row_stride + s]] : 0.f;
  }

  LMK_SIMD_CLONES static void multiply(const Word* a, const Word* b, int64_t steps, float* acc) {
    vec::f32x8 c[kRows][2];
    for (int i = 0; i < kRows; ++i) {
      c[i][0] = vec::load8(acc + i * kTileN);
      c[i][1] = vec::load8(acc + i * kTileN + 8);
    }
    for (int64_t s = 0; s < steps; ++s) {
      const vec::f32x8 b0 = vec::load8(b + s * kPanel), b1 = vec::load8(b + s * kPanel + 8);
      for (int i = 0; i < kRows; ++i) {
        const float x = a[s * kRows + i];
        // Products of FP8 values are exact, so a fused or separate multiply-add rounds the same.
        c[i][0] += x * b0;
        c[i][1] += x * b1;
      }
    }
    for (int i = 0; i < kRows; ++i) {
      vec::store8(acc + i * kTileN, c[i][0]);
      vec::store8(acc + i * kTileN + 8, c[i][1]);
    }
  }
};

#ifdef LMK_HAVE_BF16_PAIRS
struct Bf16Pairs {
  using Word = uint32_t;  // bf16(x[k]) in the high half, bf16(x[k + 1]) in the low half
  static constexpr int kRows = 12;   // 24 accumulators + 2 B + 1 broadcast A of the 32 registers
  static constexpr int kPanel = 32;  // two 16-lane vectors
  static constexpr int kDepth = 2;
  static constexpr int64_t kTileM = 192;  // 16 row panels share each B panel from L1
  static constexpr int64_t kBlockSteps = 256;  // 512 of K: a B panel 32 KiB, an A panel 12 KiB (measured best)

  static const Table<uint16_t>& table(DType dtype) {
    return table_of<uint16_t>(dtype, [](float x) {
      uint32_t bits;
      std::memcpy(&bits, &x, sizeof bits);
      return uint16_t(bits >> 16);  // exact: an FP8 value has at most 4 significant bits
    });
  }
  // The words of 32 consecutive k of an FP8 row, decoded arithmetically: an FP8 byte is an fp16
  // bit pattern shifted (for E4M3 then scaled by 2^8, which is exact; S.1111.111 is NaN); 32 bf16
  // in k order (exact), then each word's halves swapped: x[k] high, x[k + 1] low.
  __attribute__((target("avx512f,avx512bw,avx512bf16"))) static __m512i decode_32(bool e4m3, const uint8_t* bytes) {
    const __m512i wide = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes)));
    const __m512i magnitude = _mm512_and_si512(wide, _mm512_set1_epi16(0x7F));
    const __m512i half_bits =
        e4m3 ? _mm512_or_si512(_mm512_slli_epi16(magnitude, 7),
                               _mm512_slli_epi16(_mm512_and_si512(wide, _mm512_set1_epi16(0x80)), 8))
             : _mm512_slli_epi16(wide, 8);
    __m512 low = _mm512_cvtph_ps(_mm512_castsi512_si256(half_bits));
    __m512 high = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(half_bits, 1));
    if (e4m3) {
      const __mmask32 nan = _mm512_cmpeq_epi16_mask(magnitude, _mm512_set1_epi16(0x7F));
      const __m512 quiet_nan = _mm512_set1_ps(__builtin_nanf(""));
      low = _mm512_mask_blend_ps(__mmask16(nan), _mm512_mul_ps(low, _mm512_set1_ps(256.f)), quiet_nan);
      high = _mm512_mask_blend_ps(__mmask16(nan >> 16), _mm512_mul_ps(high, _mm512_set1_ps(256.f)), quiet_nan);
    }
    return _mm512_rol_epi32((__m512i)_mm512_cvtne2ps_pbh(high, low), 16);
  }

  // r[i][j] -> r[j][i] for a 16 x 16 matrix of 32-bit words, one row per register.
  __attribute__((target("avx512f"))) static void transpose_16x16(__m512i r[16]) {
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

  // Panel [steps = ceil(k / 2)][width] of `rows` rows (stride `row_stride` bytes); zeros past `rows`.
  // 32 k of 16 rows at a time: decoded, transposed in registers, stored as 16 steps of 16 words,
  // so the panel is written in whole vectors (strided single-word stores cost 1.7 ms per 2048 x
  // 2048 operand, half of it for this). The last k % 32 through the table.
  __attribute__((target("avx512f,avx512bw,avx512bf16"))) static void decode_panel(DType dtype,
                                                                                   const uint8_t* first_row,
                                                                                   int64_t row_stride, int64_t rows,
                                                                                   int64_t k, Word* dst,
                                                                                   int64_t width) {
    const bool e4m3 = dtype == DType::Float8E4M3FN;
    const int64_t vector_k = k / 32 * 32;
    for (int64_t h = 0; h < width; h += 16) {
      const int64_t lanes = std::min<int64_t>(16, width - h), live = std::clamp<int64_t>(rows - h, 0, lanes);
      const __mmask16 mask = __mmask16((1u << lanes) - 1);
      for (int64_t j = 0; j < vector_k; j += 32) {
        __m512i r[16];
        for (int64_t i = 0; i < 16; ++i)
          r[i] = i < live ? decode_32(e4m3, first_row + (h + i) * row_stride + j) : _mm512_setzero_si512();
        transpose_16x16(r);
        for (int q = 0; q < 16; ++q) _mm512_mask_storeu_epi32(dst + (j / 2 + q) * width + h, mask, r[q]);
      }
    }
    const Table<uint16_t>& bf16 = table(dtype);
    for (int64_t j = vector_k; j < k; j += 2)  // K is padded to even with +0, and adding a +0 product changes no sum
      for (int64_t w = 0; w < width; ++w) {
        Word word = 0;
        if (w < rows) {
          const uint8_t* row = first_row + w * row_stride;
          word = Word(bf16[row[j]]) << 16 | (j + 1 < k ? Word(bf16[row[j + 1]]) : 0u);
        }
        dst[j / 2 * width + w] = word;
      }
  }

  __attribute__((target("avx512f,avx512bf16"))) static void multiply(const Word* a, const Word* b, int64_t steps,
                                                                     float* acc) {
    __m512 c[kRows][2];
    for (int i = 0; i < kRows; ++i) {
      c[i][0] = _mm512_loadu_ps(acc + i * kTileN);
      c[i][1] = _mm512_loadu_ps(acc + i * kTileN + 16);
    }
    for (int64_t s = 0; s < steps; ++s) {
      const auto b0 = (__m512bh)_mm512_loadu_si512(b + s * kPanel);
      const auto b1 = (__m512bh)_mm512_loadu_si512(b + s * kPanel + 16);
      for (int i = 0; i < kRows; ++i) {
        const auto x = (__m512bh)_mm512_set1_epi32(int(a[s * kRows + i]));
        c[i][0] = _mm512_dpbf16_ps(c[i][0], x, b0);
        c[i][1] = _mm512_dpbf16_ps(c[i][1], x, b1);
      }
    }
    for (int i = 0; i < kRows; ++i) {
      _mm512_storeu_ps(acc + i * kTileN, c[i][0]);
      _mm512_storeu_ps(acc + i * kTileN + 16, c[i][1]);
    }
  }
};

bool cpu_has_bf16_pairs() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return has;
}
#endif

// ---- the driver, for either policy --------------------------------------------------------------

// Operand `t` [rows, K] as panels [padded_rows / width][steps][width] (zeros past `rows`), one
// panel per task so that each writes whole cache lines of its own.
template <typename Kernel>
Scratch decode_panels(const TensorView& t, int64_t width, int64_t steps) {
  using Word = typename Kernel::Word;
  const int64_t rows = t.size(0), panels = ceil_div(rows, width);
  Scratch result = acquire_scratch(size_t(panels * steps * width) * sizeof(Word));  // every word is written below
  auto* words = reinterpret_cast<Word*>(result.get());
  const auto* bytes = t.as<const uint8_t>();
  parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      Kernel::decode_panel(t.dtype, bytes + p * width * t.stride(0), t.stride(0), std::min(width, rows - p * width),
                           t.size(1), words + p * steps * width, width);
  });
  return result;
}

template <typename Kernel, typename T>
void gemm_tiles(const TensorView& a, const TensorView& b, float alpha, const float* bias, T* result) {
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  const int64_t steps = ceil_div(k, Kernel::kDepth);
  using Word = typename Kernel::Word;
  const Scratch a_scratch = decode_panels<Kernel>(a, Kernel::kRows, steps);
  const Scratch b_scratch = decode_panels<Kernel>(b, Kernel::kPanel, steps);
  const auto* a_panels = reinterpret_cast<const Word*>(a_scratch.get());
  const auto* b_panels = reinterpret_cast<const Word*>(b_scratch.get());
  const int64_t padded_m = round_up(m, Kernel::kRows), padded_n = round_up(n, Kernel::kPanel);
  const int64_t tiles_m = ceil_div(m, Kernel::kTileM), tiles_n = ceil_div(n, kTileN);
  parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(Kernel::kTileM * kTileN);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row0 = (t / tiles_n) * Kernel::kTileM, col0 = (t % tiles_n) * kTileN;
      const int64_t rows = std::min(Kernel::kTileM, padded_m - row0);
      const int64_t cols = std::min(kTileN, padded_n - col0);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t s0 = 0; s0 < steps; s0 += Kernel::kBlockSteps) {
        const int64_t block = std::min(Kernel::kBlockSteps, steps - s0);
        for (int64_t j = 0; j < cols; j += Kernel::kPanel)  // one B panel stays in L1 across the rows
          for (int64_t i = 0; i < rows; i += Kernel::kRows)
            Kernel::multiply(a_panels + ((row0 + i) * steps + s0 * Kernel::kRows),
                             b_panels + ((col0 + j) * steps + s0 * Kernel::kPanel), block,
                             acc.data() + i * kTileN + j);
      }
      for (int64_t i = 0; i < std::min(Kernel::kTileM, m - row0); ++i)
        store_output_row(result + (row0 + i) * n + col0, acc.data() + i * kTileN, std::min(kTileN, n - col0), alpha,
                         bias ? bias + col0 : nullptr);
    }
  });
}

bool fp32_forced() {
  const char* choice = std::getenv("LMK_FP8_GEMM_CPU");
  return choice && std::strcmp(choice, "fp32") == 0;
}

}  // namespace

void gemm_cpu(const TensorView& a, const TensorView& b, float alpha, const OptionalView& bias,
              const TensorView& out) {
  if (a.size(0) == 0 || b.size(0) == 0) return;
  const float* bias_values = bias ? bias->as<const float>() : nullptr;
  dispatch_float(out.dtype, "out", [&](auto tag) {
    using T = typename decltype(tag)::type;
#ifdef LMK_HAVE_BF16_PAIRS
    if (cpu_has_bf16_pairs() && !fp32_forced())
      return gemm_tiles<Bf16Pairs>(a, b, alpha, bias_values, out.as<T>());
#endif
    gemm_tiles<Fp32>(a, b, alpha, bias_values, out.as<T>());
  });
}

}  // namespace lmk::fp8
