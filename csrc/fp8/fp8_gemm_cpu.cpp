// FP8 GEMM on the CPU (see fp8_gemm.h for the math and the summation order).
//
// First both operands are decoded once, in parallel, through 256-entry tables into scratch panels
// laid out k-major for the micro-kernel (A in panels of its rows, B in panels of its columns, zero
// rows and columns past M and N), so that each byte is decoded once rather than once per output
// tile. Then the output is cut into kTileM x kTileN tiles, computed in parallel; a tile walks K in
// blocks (the block's slices of A and B stay in L2), and the micro-kernel adds the block's products
// to the tile's fp32 accumulators in increasing k. The accumulators persist across K blocks in
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
#include <memory>
#include <vector>

#include "common/dispatch.h"
#include "common/index_math.h"
#include "common/memory.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/vec.h"
#include "fp8/fp8_gemm.h"
#include "fp8/fp8_gemm_decode.h"

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
  // dst[s * stride] = the word of step s of `row`, for every step (= k).
  static void decode_row(DType dtype, const uint8_t* row, int64_t k, Word* dst, int64_t stride) {
    const Table<float>& values = table(dtype);
    for (int64_t s = 0; s < k; ++s) dst[s * stride] = values[row[s]];
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
  // dst[s * stride] = the word of step s of `row`, for every step (= ceil(k / 2)): 32 bytes at a
  // time decoded arithmetically (an FP8 byte is an fp16 bit pattern shifted, for E4M3 scaled by
  // 2^8), the tail through the table.
  __attribute__((target("avx512f,avx512bw,avx512bf16"))) static void decode_row(DType dtype, const uint8_t* row,
                                                                                 int64_t k, Word* dst,
                                                                                 int64_t stride) {
    const bool e4m3 = dtype == DType::Float8E4M3FN;
    alignas(64) Word words[16];
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
      const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + j)));
      const __m512i magnitude = _mm512_and_si512(bytes, _mm512_set1_epi16(0x7F));
      const __m512i half_bits =
          e4m3 ? _mm512_or_si512(_mm512_slli_epi16(magnitude, 7),
                                 _mm512_slli_epi16(_mm512_and_si512(bytes, _mm512_set1_epi16(0x80)), 8))
               : _mm512_slli_epi16(bytes, 8);
      __m512 low = _mm512_cvtph_ps(_mm512_castsi512_si256(half_bits));
      __m512 high = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(half_bits, 1));
      if (e4m3) {  // x 2^8 is exact; S.1111.111 is NaN
        const __mmask32 nan = _mm512_cmpeq_epi16_mask(magnitude, _mm512_set1_epi16(0x7F));
        const __m512 quiet_nan = _mm512_set1_ps(__builtin_nanf(""));
        low = _mm512_mask_blend_ps(__mmask16(nan), _mm512_mul_ps(low, _mm512_set1_ps(256.f)), quiet_nan);
        high = _mm512_mask_blend_ps(__mmask16(nan >> 16), _mm512_mul_ps(high, _mm512_set1_ps(256.f)), quiet_nan);
      }
      // 32 bf16 in k order (exact), then each word's halves swapped: x[k] high, x[k + 1] low.
      const __m512i pairs = _mm512_rol_epi32((__m512i)_mm512_cvtne2ps_pbh(high, low), 16);
      _mm512_store_si512(words, pairs);
      for (int q = 0; q < 16; ++q) dst[(j / 2 + q) * stride] = words[q];
    }
    const Table<uint16_t>& bf16 = table(dtype);
    for (; j < k; j += 2)  // K is padded to even with +0, and adding a +0 product changes no sum
      dst[j / 2 * stride] = Word(bf16[row[j]]) << 16 | (j + 1 < k ? Word(bf16[row[j + 1]]) : 0u);
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
std::unique_ptr<typename Kernel::Word[]> decode_panels(const TensorView& t, int64_t width, int64_t steps) {
  using Word = typename Kernel::Word;
  const int64_t rows = t.size(0), k = t.size(1), panels = ceil_div(rows, width);
  std::unique_ptr<Word[]> result(new Word[panels * steps * width]);  // every word is written below
  advise_huge_pages(result.get(), panels * steps * width * sizeof(Word));
  const auto* bytes = t.as<const uint8_t>();
  parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      Word* dst = result.get() + p * steps * width;
      const int64_t valid = std::min(width, rows - p * width);
      for (int64_t w = 0; w < valid; ++w)
        Kernel::decode_row(t.dtype, bytes + (p * width + w) * t.stride(0), k, dst + w, width);
      for (int64_t w = valid; w < width; ++w)
        for (int64_t s = 0; s < steps; ++s) dst[s * width + w] = Word(0);
    }
  });
  return result;
}

template <typename Kernel, typename T>
void gemm_tiles(const TensorView& a, const TensorView& b, float alpha, const float* bias, T* result) {
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  const int64_t steps = ceil_div(k, Kernel::kDepth);
  const auto a_panels = decode_panels<Kernel>(a, Kernel::kRows, steps);
  const auto b_panels = decode_panels<Kernel>(b, Kernel::kPanel, steps);
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
            Kernel::multiply(a_panels.get() + ((row0 + i) * steps + s0 * Kernel::kRows),
                             b_panels.get() + ((col0 + j) * steps + s0 * Kernel::kPanel), block,
                             acc.data() + i * kTileN + j);
      }
      for (int64_t i = 0; i < std::min(Kernel::kTileM, m - row0); ++i) {
        T* dst = result + (row0 + i) * n + col0;
        for (int64_t j = 0; j < std::min(kTileN, n - col0); ++j) {
          float value = alpha * acc[i * kTileN + j];
          if (bias) value = value + bias[col0 + j];
          dst[j] = from_float<T>(value);
        }
      }
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
