// FP8 GEMM on Intel AMX (AMX-BF16 tile units, Sapphire Rapids and later): the CPU path's default
// where the CPU has them, as the tensor-core kernel is on Hopper (fp8_gemm.h).
//
// Every FP8 value is exactly a bf16 value, so both operands are decoded once to bf16 and TDPBF16PS
// multiplies 16 x 32 by 32 x 16 bf16 tiles into 16 x 16 fp32 accumulator tiles. The products are
// exact in fp32 (they are FP8 products), but the tile unit adds a 32-deep step's products into the
// accumulator in its own order, not one k at a time: results are deterministic (any thread count)
// and as accurate as the sequential fp32 sum (tests/ops/test_fp8_gemm.py bounds both by K u
// sum |alpha a b|; measured, the largest errors of the two are alike), but not bitwise equal to it.
// `exact_order` callers get the sequential kernels of fp8_gemm_cpu.cpp.
//
// Layouts: A in panels of 32 rows, [K / 32][2 tiles of 16 rows x 32 bf16], each tile contiguous;
// B in panels of 32 columns, [K / 2][32] words of (x[k] low, x[k + 1] high), the VNNI layout of a
// B tile (16 k pairs x 16 columns at a stride of 128 bytes). K is padded to 32, rows and columns to
// 32, with +0, whose products change no sum. The output is cut into tiles of 128 or 256 rows x
// kTileN computed in parallel; a tile walks K in blocks whose A and B slices stay in L2, each 32 x 32
// sub-block (2 x 2 accumulator tiles, 2 A and 2 B tiles: all 8 tile registers) adding its block's
// products to the tile's fp32 accumulators in memory. Tile loads that miss L2 stall the tile unit
// for several times their work, so each sub-block prefetches into L2 what a later one will need.
// Where M has at least 4 row strips per thread, a thread takes a whole strip of 256 (or 128) rows:
// it decodes the strip's A panels into its own block, which stays in L2 for all the strip's tiles,
// instead of reading A panels decoded up front from L3. B is decoded up front.
//
// Tuned on 2 cores of an Emerald Rapids VM (docs/benchmarks.md): sub-blocks over all of K up to 2048
// beat shorter K blocks (the accumulators' round trips through memory cost more than the L1 reuse
// they buy); tiles of 128 x 256 beat 64, 128 or 512 rows when A comes from L3. A B panel's first
// pass (the strip's first row of sub-blocks) runs about 2.5x slower than the others, its tile loads
// missing L2: 256-row strips halve how often that happens. Prefetch hints (T0 / T1 / T2 / none)
// and prefetching B's first pass a few steps ahead measured alike. The epilogue, a tenth or more of
// the time, gained nothing from running between the next tile's sub-blocks, nor from each sub-block's
// sums going out through an L1 block right after it (slower), nor from streaming stores.
#include "fp8/fp8_gemm_bf16_pairs.h"
#ifdef LMK_HAVE_BF16_PAIRS
#include <sys/syscall.h>
#include <unistd.h>

#include <cpuid.h>

#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

#include "common/dispatch.h"
#include "common/index_math.h"
#include "common/parallel.h"
#include "common/scratch.h"
#include "fp8/fp8_gemm.h"
#include "fp8/fp8_gemm_epilogue.h"
#include "fp8/fp8_gemm_panels.h"

namespace lmk::fp8 {
namespace {

constexpr int64_t kSub = 32;          // rows and columns of a sub-block: 2 x 2 tiles of 16
constexpr int64_t kStepK = 32;        // k per TDPBF16PS
constexpr int64_t kATile = 16 * kStepK;  // bf16 of an A tile
constexpr int64_t kAStep = 2 * kATile;    // bf16 of an A panel's step: two tiles
constexpr int64_t kBStep = kStepK / 2 * kSub;  // words of a B panel's step
constexpr int64_t kTileN = 256;
constexpr int64_t kTileMSmall = 128, kTileMLarge = 256;  // see gemm_tiles
constexpr int64_t kBlockK = 2048;  // a tile's A block (512 KiB) and B block (1 MiB) stay in L2 (2 MiB)

// The tile register shapes (palette 1): tiles 0-3 accumulators, 4-5 A, 6-7 B; all 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};
// A constant in memory: GCC 12 drops the stores to a local configuration, as it does not see that
// _tile_loadconfig reads them.
constexpr TileConfig kTileConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

__attribute__((target("amx-tile"))) void configure_tiles() { _tile_loadconfig(&kTileConfig); }

__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }

// acc[0:32, 0:32] (row stride kTileN floats) += A[0:32, k block] B[k block, 0:32] over `steps` steps
// of 32 k (acc taken as zeros in the first block); `a` the A panel and `b` the B panel at the
// block's first step. Meanwhile `prefetch_lines` cache lines per step from address `prefetch` on
// are fetched into L2: data of a later call that is not there yet (tile loads that miss L2 stall
// the tile unit for several times their work). An address, not a pointer: the last lines may lie
// past the scratch block, which a prefetch may touch but a pointer may not point to.
__attribute__((target("amx-tile,amx-bf16"))) void multiply_32x32(const uint16_t* a, const Bf16Word* b, int64_t steps,
                                                                   bool first_block, float* acc, uintptr_t prefetch,
                                                                   int64_t prefetch_lines) {
  constexpr int64_t acc_bytes = kTileN * sizeof(float), a_bytes = kStepK * sizeof(uint16_t),
                    b_bytes = kSub * sizeof(Bf16Word);
  if (first_block) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, acc, acc_bytes);
    _tile_loadd(1, acc + 16, acc_bytes);
    _tile_loadd(2, acc + 16 * kTileN, acc_bytes);
    _tile_loadd(3, acc + 16 * kTileN + 16, acc_bytes);
  }
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t l = 0; l < prefetch_lines; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(prefetch + uintptr_t(s * prefetch_lines + l) * 64), _MM_HINT_T1);
    // Each load right before its first use, so that loads overlap the previous products.
    _tile_loadd(4, a + s * kAStep, a_bytes);
    _tile_loadd(6, b + s * kBStep, b_bytes);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b + s * kBStep + 16, b_bytes);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a + s * kAStep + kATile, a_bytes);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, acc, acc_bytes);
  _tile_stored(1, acc + 16, acc_bytes);
  _tile_stored(2, acc + 16 * kTileN, acc_bytes);
  _tile_stored(3, acc + 16 * kTileN + 16, acc_bytes);
}

// An A panel: `rows` (<= 32) FP8 rows of K = k (row stride `row_stride` bytes) as `steps` pairs of A
// tiles (16 rows x 32 bf16 each, rows 0-15 then 16-31), each tile contiguous, zeros past `rows` and
// k. (Row-major bf16 with a power-of-two row stride would put a tile's 16 rows in one L1 set.)
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void decode_a_panel(DType dtype, const uint8_t* first_row,
                                                                            int64_t row_stride, int64_t rows,
                                                                            int64_t k, int64_t steps,
                                                                            uint16_t* dst) {
  const bool e4m3 = dtype == DType::Float8E4M3FN;
  const int64_t vector_steps = k / kStepK;
  const std::array<uint16_t, 256>& bf16 = bf16_table(dtype);
  for (int64_t r = 0; r < kSub; ++r) {  // rows outer: each row is read in order
    uint16_t* out = dst + r * kStepK;       // rows 16-31 land in a step's second tile
    if (r >= rows) {
      for (int64_t s = 0; s < steps; ++s) _mm512_storeu_si512(out + s * kAStep, _mm512_setzero_si512());
      continue;
    }
    const uint8_t* row = first_row + r * row_stride;
    for (int64_t s = 0; s < vector_steps; ++s)
      _mm512_storeu_si512(out + s * kAStep, decode_32(e4m3, row + s * kStepK, PairOrder::KLow));
    for (int64_t s = vector_steps; s < steps; ++s)
      for (int64_t j = 0; j < kStepK; ++j) out[s * kAStep + j] = s * kStepK + j < k ? bf16[row[s * kStepK + j]] : 0;
  }
}

// The same A panel from an operand stored transposed: row r's k-th value at first[k * k_stride + r].
// A step's 32 k: memory rows k and k + 1 decoded and interleaved into words (k, k + 1) for 32 rows,
// then each 16 x 16 block of words transposed into 16 tile rows of 16 words (32 k).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void decode_a_panel_transposed(
    DType dtype, const uint8_t* first, int64_t k_stride, int64_t rows, int64_t k, int64_t steps, uint16_t* dst) {
  alignas(64) Bf16Word pairs[kStepK / 2][kSub];
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t k0 = s * kStepK, live_k = std::clamp<int64_t>(k - k0, 0, kStepK);
    decode_pair_panel_transposed(dtype, live_k > 0 ? first + k0 * k_stride : first, k_stride, rows, live_k,
                                 kStepK / 2, &pairs[0][0], kSub, PairOrder::KLow);
    for (int64_t half = 0; half < 2; ++half) {  // rows 0-15 (the step's first tile), then 16-31
      __m512i r[16];
      for (int q = 0; q < 16; ++q) r[q] = _mm512_load_si512(&pairs[q][16 * half]);
      transpose_16x16(r);
      for (int q = 0; q < 16; ++q) _mm512_storeu_si512(dst + s * kAStep + half * kATile + q * kStepK, r[q]);
    }
  }
}

// dst[j] = bf16(fl(fl(alpha * acc[j]) + bias[j])) for j < columns (no bias: no addition), as
// store_output_row computes it: two roundings, no fused multiply-add; to bf16 by rounding the bits to
// nearest even, NaN made quiet (VCVTNEPS2BF16 would flush subnormals). 16 lanes at a time, where
// store_output_row's portable vectors take 8: at 2048^3 the epilogue is 12-20% of the call (its
// acc reads and output writes run far below L2 speed beside the tile loads), and this one made the
// call 1-7% faster.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void store_bf16_row(bfloat16* dst, const float* acc,
                                                                         int64_t columns, float alpha,
                                                                         const float* bias) {
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512 scale = _mm512_set1_ps(alpha);
  for (int64_t j = 0; j < columns; j += 16) {
    const __mmask16 mask = columns - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (columns - j)) - 1);
    __m512 x = _mm512_mul_round_ps(_mm512_maskz_loadu_ps(mask, acc + j), scale, kNearest);
    if (bias) x = _mm512_add_round_ps(x, _mm512_maskz_loadu_ps(mask, bias + j), kNearest);
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i bits = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                                  _mm512_set1_epi32(0x7F800000));
    bits = _mm512_mask_or_epi32(bits, nan, u, _mm512_set1_epi32(0x00400000));
    _mm256_mask_storeu_epi16(dst + j, mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
  }
}

template <typename T>
void store_tile_row(T* dst, const float* acc, int64_t columns, float alpha, const float* bias) {
  if constexpr (std::is_same_v<T, bfloat16>)
    store_bf16_row(dst, acc, columns, alpha, bias);
  else
    store_output_row(dst, acc, columns, alpha, bias);
}

template <typename T>
void gemm_tiles(const TensorView& a, const TensorView& b, float alpha, const float* bias, T* result) {
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  const int64_t padded_k = round_up(std::max<int64_t>(k, 1), kStepK), steps = padded_k / kStepK;
  const int64_t padded_m = round_up(m, kSub), padded_n = round_up(n, kSub);

  const int64_t a_panel = steps * kAStep, panel_words = padded_k / 2 * kSub;
  auto decode_a = [&](bool transposed, const uint8_t* first, int64_t stride, int64_t live, uint16_t* dst) {
    if (transposed) return decode_a_panel_transposed(a.dtype, first, stride, live, k, steps, dst);
    decode_a_panel(a.dtype, first, stride, live, k, steps, dst);
  };
  // Row strips of A decoded by the thread that multiplies them, into its own block that stays in L2,
  // where there are enough strips to share out (else A is decoded up front, as B always is).
  const int64_t threads = num_threads();
  const int64_t strip_m = ceil_div(m, kTileMLarge) >= 4 * threads   ? kTileMLarge
                          : ceil_div(m, kTileMSmall) >= 4 * threads ? kTileMSmall
                                                                    : 0;
  const Scratch a_scratch = strip_m ? Scratch(nullptr, ScratchRelease{0})
                                    : decode_operand_panels<uint16_t>(a, kSub, a_panel, decode_a);
  const Scratch b_scratch = decode_operand_panels<Bf16Word>(
      b, kSub, panel_words, [&](bool transposed, const uint8_t* first, int64_t stride, int64_t live, Bf16Word* dst) {
        if (transposed) return decode_pair_panel_transposed(b.dtype, first, stride, live, k, padded_k / 2, dst, kSub,
                                                            PairOrder::KLow);
        decode_pair_panel(b.dtype, first, stride, live, k, padded_k / 2, dst, kSub, PairOrder::KLow);
      });
  const auto* b_panels = reinterpret_cast<const Bf16Word*>(b_scratch.get());
  const int64_t panels = padded_n / kSub;

  // The output tile [row0, row0 + tile_m) x [col0, col0 + kTileN), `a_rows` the A panel of row0.
  // `a_in_l2`: the A panels were decoded by this thread just before (else they are fetched from L3).
  auto tile = [&](const uint16_t* a_rows, int64_t row0, int64_t col0, int64_t tile_m, bool a_in_l2, float* acc) {
    const int64_t rows = std::min(tile_m, padded_m - row0), cols = std::min(kTileN, padded_n - col0);
    for (int64_t s0 = 0; s0 < steps; s0 += kBlockK / kStepK) {
      const int64_t block = std::min(kBlockK / kStepK, steps - s0);
      // Columns outer: a B slice is read from L2 once per row. Into L2 meanwhile: during the first
      // column, the next A slice (unless decoded here); throughout, a share of the next B slice.
      const int64_t b_prefetch_lines = ceil_div(block * kBStep * int64_t(sizeof(Bf16Word)) / 64, rows / kSub);
      for (int64_t j = 0; j < cols; j += kSub)
        for (int64_t i = 0; i < rows; i += kSub) {
          const uint16_t* a_block = a_rows + i / kSub * a_panel + s0 * kAStep;
          const Bf16Word* b_block = b_panels + (col0 + j) / kSub * panel_words + s0 * kBStep;
          const bool next_a = !a_in_l2 && j == 0 && i + kSub < rows;
          const bool next_b = (col0 + j) / kSub + 1 < panels;
          const uintptr_t prefetch =
              next_a ? reinterpret_cast<uintptr_t>(a_block + a_panel)
                     : reinterpret_cast<uintptr_t>(b_block) + uintptr_t(panel_words) * sizeof(Bf16Word) +
                           uintptr_t(i / kSub * b_prefetch_lines) * 64;
          const int64_t lines = next_a   ? kAStep * int64_t(sizeof(uint16_t)) / 64
                                : next_b ? ceil_div(b_prefetch_lines, block)
                                         : 0;
          multiply_32x32(a_block, b_block, block, s0 == 0, acc + i * kTileN + j, prefetch, lines);
        }
    }
    for (int64_t i = 0; i < std::min(tile_m, m - row0); ++i)
      store_tile_row(result + (row0 + i) * n + col0, acc + i * kTileN, std::min(kTileN, n - col0), alpha,
                       bias ? bias + col0 : nullptr);
  };

  const int64_t tiles_n = ceil_div(n, kTileN), tiles_m = ceil_div(m, kTileMSmall);
  const int64_t units = strip_m ? ceil_div(m, strip_m) : tiles_m * tiles_n;
  parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    configure_tiles();
    // Every element written before it is read; 64-byte aligned for the tile stores.
    const std::unique_ptr<float, decltype(&std::free)> acc(
        static_cast<float*>(std::aligned_alloc(64, kTileMLarge * kTileN * sizeof(float))), &std::free);
    if (!acc) throw std::bad_alloc();
    if (!strip_m) {
      const auto* a_tiles = reinterpret_cast<const uint16_t*>(a_scratch.get());
      for (int64_t t = begin; t < end; ++t) {
        const int64_t row0 = (t / tiles_n) * kTileMSmall;
        tile(a_tiles + row0 / kSub * a_panel, row0, (t % tiles_n) * kTileN, kTileMSmall, false, acc.get());
      }
    } else {
      const Scratch strip = acquire_scratch(size_t(strip_m / kSub * a_panel) * sizeof(uint16_t));
      auto* a_strip = reinterpret_cast<uint16_t*>(strip.get());
      const bool transposed = stored_transposed(a);
      const auto* bytes = a.as<const uint8_t>();
      const int64_t row_step = transposed ? 1 : a.stride(0), stride = transposed ? a.stride(1) : a.stride(0);
      for (int64_t u = begin; u < end; ++u) {
        const int64_t row0 = u * strip_m;
        for (int64_t r = 0; r < std::min(strip_m, m - row0); r += kSub)
          decode_a(transposed, bytes + (row0 + r) * row_step, stride, std::min(kSub, m - row0 - r),
                   a_strip + r / kSub * a_panel);
        for (int64_t col0 = 0; col0 < n; col0 += kTileN) tile(a_strip, row0, col0, strip_m, true, acc.get());
      }
    }
    release_tiles();
  });
}

}  // namespace

bool cpu_has_amx() {
  static const bool has = [] {
    unsigned eax, ebx, ecx, edx;
    constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24;  // CPUID.(7, 0).EDX
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx & kAmxBf16) || !(edx & kAmxTile)) return false;
    if (!cpu_has_bf16_pairs()) return false;  // the decoding's AVX512_BF16
    // Linux hands out the 8 KiB of tile state only to processes that ask (ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA); a kernel that refuses, or predates the request, means no AMX.
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return has;
}

void gemm_amx(const TensorView& a, const TensorView& b, float alpha, const float* bias, const TensorView& out) {
  dispatch_float(out.dtype, "out", [&](auto tag) {
    using T = typename decltype(tag)::type;
    gemm_tiles<T>(a, b, alpha, bias, out.as<T>());
  });
}

}  // namespace lmk::fp8
#endif
