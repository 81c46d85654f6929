// FP8 GEMM on the CPU (see fp8_gemm.h for the math and the summation order).
//
// The output is cut into kTileM x kTileN tiles, computed in parallel. A tile walks K in blocks of
// kBlockK: it decodes its rows of A and its columns of B (through 256-entry tables) into fp32
// buffers of its thread, B packed as panels of kPanel columns laid out k-major, then a 6 x 16
// micro-kernel adds the block's products to the tile's fp32 accumulators one k at a time. The
// accumulators persist across K blocks in fp32, so every element is summed in increasing k
// exactly as in the math, whatever the tiling or the thread count. Rows and columns past the
// edges are decoded as zeros and never written out.
#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/vec.h"
#include "fp8/fp8_gemm.h"
#include "fp8/fp8_gemm_decode.h"

namespace lmk::fp8 {
namespace {

constexpr int kRowsPerKernel = 6;    // rows of the micro-kernel: 12 accumulators + 2 B + 1 A registers
constexpr int kPanel = 16;           // columns of the micro-kernel: two 8-lane vectors
constexpr int64_t kTileM = 96;       // a multiple of kRowsPerKernel
constexpr int64_t kTileN = 64;       // a multiple of kPanel
constexpr int64_t kBlockK = 128;     // A block (48 KiB) and B block (32 KiB) stay in L2

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

// Per-thread fp32 buffers of one tile.
struct TileBuffers {
  std::vector<float> a;    // [kTileM][kBlockK]: decoded rows of A
  std::vector<float> b;    // [kTileN / kPanel][kBlockK][kPanel]: decoded columns of B
  std::vector<float> acc;  // [kTileM][kTileN]: running sums
  TileBuffers() : a(kTileM * kBlockK), b(kTileN * kBlockK), acc(kTileM * kTileN) {}
};

// acc[i][0..16) += sum over k < depth, in increasing k, of a[i][k] * b[k][0..16) for 6 rows i.
__attribute__((always_inline)) inline void micro_kernel(const float* a, const float* b, int64_t depth, float* acc) {
  vec::f32x8 c[kRowsPerKernel][2];
  for (int i = 0; i < kRowsPerKernel; ++i) {
    c[i][0] = vec::load8(acc + i * kTileN);
    c[i][1] = vec::load8(acc + i * kTileN + 8);
  }
  for (int64_t k = 0; k < depth; ++k) {
    const vec::f32x8 b0 = vec::load8(b + k * kPanel), b1 = vec::load8(b + k * kPanel + 8);
    for (int i = 0; i < kRowsPerKernel; ++i) {
      const float x = a[i * kBlockK + k];
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

LMK_SIMD_CLONES void multiply_tile(const float* a, const float* b, int64_t depth, float* acc) {
  for (int64_t i = 0; i < kTileM; i += kRowsPerKernel)
    for (int64_t p = 0; p < kTileN / kPanel; ++p)
      micro_kernel(a + i * kBlockK, b + p * kBlockK * kPanel, depth, acc + i * kTileN + p * kPanel);
}

struct Problem {
  const uint8_t* a;
  int64_t a_stride;
  const Table* a_table;
  const uint8_t* b;
  int64_t b_stride;
  const Table* b_table;
  int64_t m, n, k;
  float alpha;
  const float* bias;
};

template <typename T>
void compute_tile(const Problem& p, int64_t row0, int64_t col0, TileBuffers& buf, T* out) {
  const int64_t rows = std::min(kTileM, p.m - row0), cols = std::min(kTileN, p.n - col0);
  std::fill(buf.acc.begin(), buf.acc.end(), 0.f);
  std::fill(buf.a.begin(), buf.a.end(), 0.f);
  std::fill(buf.b.begin(), buf.b.end(), 0.f);
  for (int64_t k0 = 0; k0 < p.k; k0 += kBlockK) {
    const int64_t depth = std::min(kBlockK, p.k - k0);
    for (int64_t i = 0; i < rows; ++i) {
      const uint8_t* src = p.a + (row0 + i) * p.a_stride + k0;
      float* dst = buf.a.data() + i * kBlockK;
      for (int64_t k = 0; k < depth; ++k) dst[k] = (*p.a_table)[src[k]];
    }
    for (int64_t j = 0; j < cols; ++j) {
      const uint8_t* src = p.b + (col0 + j) * p.b_stride + k0;
      float* dst = buf.b.data() + (j / kPanel) * kBlockK * kPanel + j % kPanel;
      for (int64_t k = 0; k < depth; ++k) dst[k * kPanel] = (*p.b_table)[src[k]];
    }
    multiply_tile(buf.a.data(), buf.b.data(), depth, buf.acc.data());
  }
  for (int64_t i = 0; i < rows; ++i) {
    const float* acc = buf.acc.data() + i * kTileN;
    T* dst = out + (row0 + i) * p.n + col0;
    for (int64_t j = 0; j < cols; ++j) {
      float d = p.alpha * acc[j];
      if (p.bias) d = d + p.bias[col0 + j];
      dst[j] = from_float<T>(d);
    }
  }
}

}  // namespace

void gemm_cpu(const TensorView& a, const TensorView& b, float alpha, const OptionalView& bias,
              const TensorView& out) {
  const Problem p{a.as<const uint8_t>(), a.stride(0), &table_of(a.dtype),
                  b.as<const uint8_t>(), b.stride(0), &table_of(b.dtype),
                  a.size(0), b.size(0), a.size(1), alpha, bias ? bias->as<const float>() : nullptr};
  if (p.m == 0 || p.n == 0) return;
  const int64_t tiles_m = (p.m + kTileM - 1) / kTileM, tiles_n = (p.n + kTileN - 1) / kTileN;
  dispatch_float(out.dtype, "out", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* result = out.as<T>();
    parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t begin, int64_t end) {
      TileBuffers buf;
      for (int64_t t = begin; t < end; ++t) compute_tile(p, (t / tiles_n) * kTileM, (t % tiles_n) * kTileN, buf, result);
    });
  });
}

}  // namespace lmk::fp8
