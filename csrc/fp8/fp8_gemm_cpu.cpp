// FP8 GEMM on the CPU (see fp8_gemm.h for the math and the summation order).
//
// First both operands are decoded once, in parallel, into scratch panels laid out k-major for the
// micro-kernel (A in panels of its rows, B in panels of its columns, zero rows and columns past M
// and N), so that each byte is decoded once rather than once per output tile. The panels live in
// reused scratch blocks (common/scratch.h): fresh ones cost a page fault per page on every call.
// Then the output is cut into kTileM x kTileN tiles, which the threads take one at a time; a tile
// walks K in blocks (each micro-panel of a block is read from L2), and the micro-kernel adds the
// block's products to the tile's fp32 accumulators in increasing k. The accumulators persist across
// K blocks in fp32, so every element is summed in increasing k exactly as in the math, whatever the
// tiling, the micro-kernel or the thread count.
//
// Two micro-kernels, chosen at run time, give bitwise the same results (on CPUs with AMX-BF16 a
// default call runs the tile kernel of fp8_gemm_amx.cpp instead, which sums in its own order):
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
#include "fp8/fp8_gemm_bf16_pairs.h"
#include "fp8/fp8_gemm_decode.h"
#include "fp8/fp8_gemm_epilogue.h"
#include "fp8/fp8_gemm_panels.h"

namespace lmk::fp8 {
namespace {

constexpr int64_t kTileN = 64;  // columns of an output tile: a multiple of both kernels' panels

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

  static const std::array<float, 256>& table(DType dtype) {
    const auto make = [](Format format) {
      std::array<float, 256> t{};
      for (int bits = 0; bits < 256; ++bits) t[bits] = decode(uint8_t(bits), format);
      return t;
    };
    static const std::array<float, 256> e4m3 = make(Format::E4M3FN), e5m2 = make(Format::E5M2);
    return dtype == DType::Float8E4M3FN ? e4m3 : e5m2;
  }
  // Panel [steps = k][width] of `rows` rows of K = k, row w's k-th byte at first[w * row_step +
  // k * k_step]; zeros past `rows`.
  static void decode_strided(DType dtype, const uint8_t* first, int64_t row_step, int64_t k_step, int64_t rows,
                             int64_t k, Word* dst, int64_t width) {
    const std::array<float, 256>& values = table(dtype);
    for (int64_t s = 0; s < k; ++s)
      for (int64_t w = 0; w < width; ++w)
        dst[s * width + w] = w < rows ? values[first[w * row_step + s * k_step]] : 0.f;
  }
  // Row-major rows (stride `row_stride` bytes), or an operand stored transposed (k stride `k_stride`).
  static void decode_panel(DType dtype, const uint8_t* first_row, int64_t row_stride, int64_t rows, int64_t k,
                           Word* dst, int64_t width) {
    decode_strided(dtype, first_row, row_stride, 1, rows, k, dst, width);
  }
  static void decode_panel_transposed(DType dtype, const uint8_t* first, int64_t k_stride, int64_t rows, int64_t k,
                                      Word* dst, int64_t width) {
    decode_strided(dtype, first, 1, k_stride, rows, k, dst, width);
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
  using Word = Bf16Word;  // PairOrder::KHigh: bf16(x[k]) in the high half, bf16(x[k + 1]) in the low half
  static constexpr int kRows = 12;   // 24 accumulators + 2 B + 1 broadcast A of the 32 registers
  static constexpr int kPanel = 32;  // two 16-lane vectors
  static constexpr int kDepth = 2;
  static constexpr int64_t kTileM = 192;  // 16 row panels read each B panel in turn
  // 2048 of K: a B panel 128 KiB and an A panel 48 KiB, read from L2. Zen 4, 2048^3 on 2 threads: 4%
  // faster than 512 of K (B panels in L1), as each tile reloads its accumulators and its A and B
  // blocks from L3 once rather than four times.
  static constexpr int64_t kBlockSteps = 1024;

  static void decode_panel(DType dtype, const uint8_t* first_row, int64_t row_stride, int64_t rows, int64_t k,
                           Word* dst, int64_t width) {
    decode_pair_panel(dtype, first_row, row_stride, rows, k, ceil_div(k, kDepth), dst, width, PairOrder::KHigh);
  }
  static void decode_panel_transposed(DType dtype, const uint8_t* first, int64_t k_stride, int64_t rows, int64_t k,
                                      Word* dst, int64_t width) {
    decode_pair_panel_transposed(dtype, first, k_stride, rows, k, ceil_div(k, kDepth), dst, width, PairOrder::KHigh);
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

#endif

// ---- the driver, for either policy --------------------------------------------------------------

// Operand `t` [rows, K] as panels [padded_rows / width][steps][width] (zeros past `rows`).
template <typename Kernel>
Scratch decode_panels(const TensorView& t, int64_t width, int64_t steps) {
  using Word = typename Kernel::Word;
  return decode_operand_panels<Word>(
      t, width, steps * width, [&](bool transposed, const uint8_t* first, int64_t stride, int64_t live, Word* dst) {
        if (transposed) return Kernel::decode_panel_transposed(t.dtype, first, stride, live, t.size(1), dst, width);
        Kernel::decode_panel(t.dtype, first, stride, live, t.size(1), dst, width);
      });
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
  parallel_tasks(tiles_m * tiles_n, [&](int64_t t) {
    thread_local std::vector<float> acc;
    acc.assign(Kernel::kTileM * kTileN, 0.f);
    const int64_t row0 = (t / tiles_n) * Kernel::kTileM, col0 = (t % tiles_n) * kTileN;
    const int64_t rows = std::min(Kernel::kTileM, padded_m - row0);
    const int64_t cols = std::min(kTileN, padded_n - col0);
    for (int64_t s0 = 0; s0 < steps; s0 += Kernel::kBlockSteps) {
      const int64_t block = std::min(Kernel::kBlockSteps, steps - s0);
      for (int64_t j = 0; j < cols; j += Kernel::kPanel)  // one B panel is read by every row panel in turn
        for (int64_t i = 0; i < rows; i += Kernel::kRows)
          Kernel::multiply(a_panels + ((row0 + i) * steps + s0 * Kernel::kRows),
                           b_panels + ((col0 + j) * steps + s0 * Kernel::kPanel), block, acc.data() + i * kTileN + j);
    }
    for (int64_t i = 0; i < std::min(Kernel::kTileM, m - row0); ++i)
      store_output_row(result + (row0 + i) * n + col0, acc.data() + i * kTileN, std::min(kTileN, n - col0), alpha,
                       bias ? bias + col0 : nullptr);
  });
}

bool fp32_forced() {
  const char* choice = std::getenv("LMK_FP8_GEMM_CPU");
  return choice && std::strcmp(choice, "fp32") == 0;
}

}  // namespace

#ifdef LMK_HAVE_BF16_PAIRS
bool cpu_has_bf16_pairs() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  }();
  return has;
}
#endif

CpuKernel cpu_kernel(bool exact_order) {
  if (fp32_forced()) return CpuKernel::Fp32;
#ifdef LMK_HAVE_BF16_PAIRS
  if (!exact_order && cpu_has_amx()) return CpuKernel::Amx;
  if (cpu_has_bf16_pairs()) return CpuKernel::Avx512Bf16;
#else
  (void)exact_order;
#endif
  return CpuKernel::Fp32;
}

const char* cpu_kernel_name(bool exact_order) {
  switch (cpu_kernel(exact_order)) {
    case CpuKernel::Amx: return "amx";
    case CpuKernel::Avx512Bf16: return "avx512_bf16";
    case CpuKernel::Fp32: break;
  }
  return "fp32";
}

void gemm_cpu(const TensorView& a, const TensorView& b, float alpha, const OptionalView& bias,
              const TensorView& out, bool exact_order) {
  if (a.size(0) == 0 || b.size(0) == 0) return;
  const float* bias_values = bias ? bias->as<const float>() : nullptr;
  const CpuKernel kernel = cpu_kernel(exact_order);
#ifdef LMK_HAVE_BF16_PAIRS
  if (kernel == CpuKernel::Amx) return gemm_amx(a, b, alpha, bias_values, out);
#endif
  dispatch_float(out.dtype, "out", [&](auto tag) {
    using T = typename decltype(tag)::type;
#ifdef LMK_HAVE_BF16_PAIRS
    if (kernel == CpuKernel::Avx512Bf16) return gemm_tiles<Bf16Pairs>(a, b, alpha, bias_values, out.as<T>());
#endif
    gemm_tiles<Fp32>(a, b, alpha, bias_values, out.as<T>());
  });
}

}  // namespace lmk::fp8
