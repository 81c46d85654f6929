// Sparse multi-label BCE on the CPU: one task per position. A vectorised pass over the row sums
// softplus(x) and writes w * sigmoid(x) as the gradient of every element (as if no element were
// positive); then each distinct positive gets its correction P * softplus(-x) - softplus(x) added
// to the loss (in double) and its gradient overwritten with -w * P * sigmoid(-x). Each row is summed in one
// fixed order by one thread, so results do not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common/dispatch.h"
#include "common/memory.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/vec_math.h"
#include "sparse/csr_checks.h"
#include "sparse/multilabel_bce.h"

namespace lmk::sparse {
namespace {

// The sum of the eight lanes in double, in lane order.
__attribute__((always_inline)) inline double lane_sum(vec::f32x8 v) {
  float lanes[8];
  __builtin_memcpy(lanes, &v, sizeof lanes);
  double s = 0;
  for (float lane : lanes) s += lane;
  return s;
}

// Loss and gradient of the 16 logits at x (two 8-lane halves in vec::load16's layout).
template <bool kWithGrad, typename S, typename T>
__attribute__((always_inline)) inline void dense_block(const S* x, float weight, T* grad, vec::f32x8& sum_a,
                                                       vec::f32x8& sum_b) {
  vec::f32x8 a, b;
  vec::load16(x, a, b);
  const vec::SoftplusSigmoid ra = vec::softplus_sigmoid(a), rb = vec::softplus_sigmoid(b);
  sum_a += ra.softplus;
  sum_b += rb.softplus;
  if constexpr (kWithGrad) vec::store16(grad, weight * ra.sigmoid, weight * rb.sigmoid);
}

// sum_i softplus(x[i]) over the row, and grad[i] = weight * sigmoid(x[i]) when kWithGrad. Blocks
// of 16 accumulate in fp32 lanes, flushed to a double every 64 blocks so long rows lose nothing;
// the last partial block is padded with -inf, whose softplus is exactly 0.
template <bool kWithGrad, typename T>
__attribute__((always_inline)) inline double dense_row(const T* x, int64_t v, float weight, T* grad) {
  constexpr int64_t kFlushEvery = 64 * 16;
  double total = 0;
  int64_t i = 0;
  while (i + 16 <= v) {
    vec::f32x8 sum_a = {}, sum_b = {};
    const int64_t flush_at = std::min(v - 15, i + kFlushEvery);
    for (; i < flush_at; i += 16) dense_block<kWithGrad>(x + i, weight, grad + i, sum_a, sum_b);
    total += lane_sum(sum_a + sum_b);
  }
  if (i < v) {
    float padded[16], padded_grad[16];
    for (int k = 0; k < 16; ++k) padded[k] = i + k < v ? to_float(x[i + k]) : -std::numeric_limits<float>::infinity();
    vec::f32x8 sum_a = {}, sum_b = {};
    dense_block<kWithGrad>(padded, weight, padded_grad, sum_a, sum_b);
    total += lane_sum(sum_a + sum_b);
    if constexpr (kWithGrad)
      for (int64_t k = 0; i + k < v; ++k) grad[i + k] = from_float<T>(padded_grad[k]);
  }
  return total;
}

// The SIMD-cloned entry points, one per logits type, and an overload that picks them.
#define LMK_DEFINE_DENSE_ROW(T, SUFFIX)                                                                   \
  LMK_SIMD_CLONES double dense_row_##SUFFIX(const T* x, int64_t v, float weight, T* grad) {               \
    return grad ? dense_row<true>(x, v, weight, grad) : dense_row<false>(x, v, weight, grad);             \
  }                                                                                                        \
  inline double dense_row_simd(const T* x, int64_t v, float weight, T* grad) {                           \
    return dense_row_##SUFFIX(x, v, weight, grad);                                                        \
  }
LMK_DEFINE_DENSE_ROW(float, f32)
LMK_DEFINE_DENSE_ROW(bfloat16, bf16)
LMK_DEFINE_DENSE_ROW(float16, f16)
#undef LMK_DEFINE_DENSE_ROW

// The dense pass's own softplus of one value (the same clone of the same code, so the same bits):
// a positive's correction takes back exactly what the dense pass added, so that a positive with a
// large logit keeps its tiny loss P * softplus(-x) instead of the rounding error of softplus(x).
LMK_SIMD_CLONES float dense_softplus(float x) {
  float lanes[8];
  const vec::f32x8 s = vec::softplus_sigmoid(vec::splat(x)).softplus;
  __builtin_memcpy(lanes, &s, sizeof lanes);
  return lanes[0];
}

// out[0:v] = g[0:v] * scale, in fp32, rounded once.
template <typename T>
__attribute__((always_inline)) inline void scale_row(const T* g, float scale, int64_t v, T* out) {
  int64_t i = 0;
  for (; i + 16 <= v; i += 16) {
    vec::f32x8 a, b;
    vec::load16(g + i, a, b);
    vec::store16(out + i, a * scale, b * scale);
  }
  for (; i < v; ++i) out[i] = from_float<T>(to_float(g[i]) * scale);
}

#define LMK_DEFINE_SCALE_ROW(T, SUFFIX)                                                                       \
  LMK_SIMD_CLONES void scale_row_##SUFFIX(const T* g, float scale, int64_t v, T* out) {                       \
    scale_row(g, scale, v, out);                                                                              \
  }                                                                                                           \
  inline void scale_row_simd(const T* g, float scale, int64_t v, T* out) { scale_row_##SUFFIX(g, scale, v, out); }
LMK_DEFINE_SCALE_ROW(float, f32)
LMK_DEFINE_SCALE_ROW(bfloat16, bf16)
LMK_DEFINE_SCALE_ROW(float16, f16)
#undef LMK_DEFINE_SCALE_ROW

// softplus(x) = log(1 + e^x) without overflow, in double for the few positives of a row.
double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::fabs(x))); }
double sigmoid(double x) {
  const double e = std::exp(-std::fabs(x));
  return x >= 0 ? 1 / (1 + e) : e / (1 + e);
}

}  // namespace

void multilabel_bce_cpu(const TensorView& logits, const MultiLabelTargets& targets, const TensorView& loss,
                        const OptionalView& grad) {
  dispatch_float_index(logits.dtype, "logits", targets.indices.dtype, "pos_indices", [&](auto value_tag,
                                                                                        auto index_tag) {
    using T = typename decltype(value_tag)::type;
    using I = typename decltype(index_tag)::type;
    const int64_t num_positions = targets.num_positions(), v = logits.size(1);
    const I* indices = targets.indices.as<I>();
    const I* offsets = targets.offsets.as<I>();
    const float* weights = targets.weights ? targets.weights->as<float>() : nullptr;
    const double pos_weight = targets.pos_weight;
    T* grad_data = grad ? grad->as<T>() : nullptr;
    check_csr_offsets(offsets, num_positions, targets.num_indices(), "pos_offsets");
    if (grad_data) advise_huge_pages(grad_data, size_t(num_positions * v) * sizeof(T));
    FirstError bad;
    parallel_for(0, num_positions, 1, [&](int64_t lo, int64_t hi) {
      thread_local std::vector<int64_t> positives;  // the row's distinct indices, sorted
      for (int64_t p = lo; p < hi; ++p) {
        positives.clear();
        for (int64_t k = offsets[p]; k < offsets[p + 1]; ++k) {
          if (uint64_t(indices[k]) >= uint64_t(v)) return bad.record(k);
          positives.push_back(int64_t(indices[k]));
        }
        std::sort(positives.begin(), positives.end());
        positives.erase(std::unique(positives.begin(), positives.end()), positives.end());

        const T* x = logits.as<T>() + p * logits.stride(0);
        T* g = grad_data ? grad_data + p * v : nullptr;
        const float weight = weights ? weights[p] : 1.f;
        double total = dense_row_simd(x, v, weight, g);
        for (const int64_t i : positives) {
          const double xi = to_float(x[i]);
          total = (total - double(dense_softplus(float(xi)))) + pos_weight * softplus(-xi);
          if (g) g[i] = from_float<T>(float(-double(weight) * pos_weight * sigmoid(-xi)));
        }
        loss.as<float>()[p] = float(double(weight) * total);
      }
    });
    if (bad.any())
      fail(ErrorKind::Index, "pos_indices: pos_indices[", bad.position.load(), "] = ",
           int64_t(indices[bad.position.load()]), " is out of range for a vocabulary of ", v, " logits");
  });
}

void multilabel_bce_backward_cpu(const TensorView& grad, const TensorView& grad_loss, const TensorView& grad_logits) {
  dispatch_float(grad.dtype, "grad", [&](auto value_tag) {
    using T = typename decltype(value_tag)::type;
    const int64_t num_positions = grad.size(0), v = grad.size(1);
    const float* scale = grad_loss.as<float>();
    advise_huge_pages(grad_logits.data, size_t(num_positions * v) * sizeof(T));
    // Rows of about 64 KiB or more per task: the work is a stream through memory.
    const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(1, v * int64_t(sizeof(T))));
    parallel_for(0, num_positions, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p)
        scale_row_simd(grad.as<T>() + p * v, scale[p], v, grad_logits.as<T>() + p * v);
    });
  });
}

}  // namespace lmk::sparse
