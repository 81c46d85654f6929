// FP8 GEMM on the CPU (see fp8_gemm.h for the math and the summation order).
//
// First both operands are decoded once, in parallel, through 256-entry tables into fp32 scratch
// buffers: A as rows padded with zero rows to a multiple of kRowsPerKernel, B as panels of kPanel
// columns laid out k-major (zero columns past N), so that each byte is decoded once rather than
// once per output tile. Then the output is cut into kTileM x kTileN tiles, computed in parallel;
// a tile walks K in blocks of kBlockK (the block's slices of A and B stay in L2), and a 6 x 16
// micro-kernel adds the block's products to the tile's fp32 accumulators one k at a time. The
// accumulators persist across K blocks in fp32, so every element is summed in increasing k
// exactly as in the math, whatever the tiling or the thread count.
#include <algorithm>
#include <array>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/vec.h"
#include "fp8/fp8_gemm.h"
#include "fp8/fp8_gemm_decode.h"

namespace lmk::fp8 {
namespace {

constexpr int kRowsPerKernel = 6;  // rows of the micro-kernel: 12 accumulators + 2 B + 1 A registers
constexpr int kPanel = 16;         // columns of the micro-kernel: two 8-lane vectors
constexpr int64_t kTileM = 96;     // a multiple of kRowsPerKernel
constexpr int64_t kTileN = 64;     // a multiple of kPanel
constexpr int64_t kBlockK = 256;   // a tile's A block (96 KiB) and B block (64 KiB) stay in L2

using Table = std::array<float, 256>;

Table make_table(Format format) {
  Table t{};
  for (int bits = 0; bits < 256; ++bits) t[bits] = decode(uint8_t(bits), format);
  return t;
}

const Table& table_of(DType dtype) {
  static const Table e4m3 = make_table(Format::E4M3FN), e5m2 = make_table(Format::E5M2);
  return dtype == DType::Float8E4M3FN ? e4m3 : e5m2;
}

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// acc[i][0..16) += sum over k < depth, in increasing k, of a[i][k] * b[k][0..16) for 6 rows i of A
// (row stride a_stride) and one k-major panel b.
__attribute__((always_inline)) inline void micro_kernel(const float* a, int64_t a_stride, const float* b,
                                                        int64_t depth, float* acc) {
  vec::f32x8 c[kRowsPerKernel][2];
  for (int i = 0; i < kRowsPerKernel; ++i) {
    c[i][0] = vec::load8(acc + i * kTileN);
    c[i][1] = vec::load8(acc + i * kTileN + 8);
  }
  for (int64_t k = 0; k < depth; ++k) {
    const vec::f32x8 b0 = vec::load8(b + k * kPanel), b1 = vec::load8(b + k * kPanel + 8);
    for (int i = 0; i < kRowsPerKernel; ++i) {
      const float x = a[i * a_stride + k];
      // Products of FP8 values are exact, so a fused or separate multiply-add rounds the same.
      c[i][0] += x * b0;
      c[i][1] += x * b1;
    }
  }
  for (int i = 0; i < kRowsPerKernel; ++i) {
    vec::store8(acc + i * kTileN, c[i][0]);
    vec::store8(acc + i * kTileN + 8, c[i][1]);
  }
}

// One K block of a tile: rows and panels are those of the tile that exist in the padded operands.
LMK_SIMD_CLONES void multiply_block(const float* a, int64_t a_stride, int64_t rows, const float* b,
                                    int64_t panel_stride, int64_t panels, int64_t depth, float* acc) {
  for (int64_t i = 0; i < rows; i += kRowsPerKernel)
    for (int64_t p = 0; p < panels; ++p)
      micro_kernel(a + i * a_stride, a_stride, b + p * panel_stride, depth, acc + i * kTileN + p * kPanel);
}

// Decoded operands: a [padded_m][k] fp32 rows, b [padded_n / kPanel][k][kPanel] fp32 panels.
struct Decoded {
  std::vector<float> a, b;
  int64_t padded_m, padded_n;
};

Decoded decode_operands(const TensorView& a, const TensorView& b) {
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  Decoded d{{}, {}, round_up(m, kRowsPerKernel), round_up(n, kPanel)};
  d.a.assign(d.padded_m * k, 0.f);
  d.b.assign(d.padded_n * k, 0.f);
  const Table& a_table = table_of(a.dtype);
  const Table& b_table = table_of(b.dtype);
  const auto* a_bytes = a.as<const uint8_t>();
  const auto* b_bytes = b.as<const uint8_t>();
  parallel_for(0, m + n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (r < m) {
        const uint8_t* src = a_bytes + r * a.stride(0);
        float* dst = d.a.data() + r * k;
        for (int64_t j = 0; j < k; ++j) dst[j] = a_table[src[j]];
      } else {
        const int64_t col = r - m;
        const uint8_t* src = b_bytes + col * b.stride(0);
        float* dst = d.b.data() + (col / kPanel) * k * kPanel + col % kPanel;
        for (int64_t j = 0; j < k; ++j) dst[j * kPanel] = b_table[src[j]];
      }
    }
  });
  return d;
}

}  // namespace

void gemm_cpu(const TensorView& a, const TensorView& b, float alpha, const OptionalView& bias,
              const TensorView& out) {
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  if (m == 0 || n == 0) return;
  const Decoded d = decode_operands(a, b);
  const float* bias_values = bias ? bias->as<const float>() : nullptr;
  const int64_t tiles_m = (m + kTileM - 1) / kTileM, tiles_n = (n + kTileN - 1) / kTileN;
  dispatch_float(out.dtype, "out", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* result = out.as<T>();
    parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(kTileM * kTileN);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t row0 = (t / tiles_n) * kTileM, col0 = (t % tiles_n) * kTileN;
        const int64_t rows = std::min(kTileM, d.padded_m - row0);
        const int64_t panels = std::min(kTileN, d.padded_n - col0) / kPanel;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t k0 = 0; k0 < k; k0 += kBlockK)
          multiply_block(d.a.data() + row0 * k + k0, k, rows, d.b.data() + (col0 / kPanel) * k * kPanel + k0 * kPanel,
                         k * kPanel, panels, std::min(kBlockK, k - k0), acc.data());
        for (int64_t i = 0; i < std::min(kTileM, m - row0); ++i) {
          T* dst = result + (row0 + i) * n + col0;
          for (int64_t j = 0; j < std::min(kTileN, n - col0); ++j) {
            float value = alpha * acc[i * kTileN + j];
            if (bias_values) value = value + bias_values[col0 + j];
            dst[j] = from_float<T>(value);
          }
        }
      }
    });
  });
}

}  // namespace lmk::fp8
