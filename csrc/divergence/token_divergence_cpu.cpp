// Token divergence on the CPU: one thread per position at a time, one pass over its vocabulary.
//
// The row is read in blocks of 256 values. A first sweep over a block (in L1 after its first
// load) updates the running top-2 values and argmax and the running maxima of both logits; a
// second sweep adds e^{x - max} to the sums. The sums are rescaled once per block when the maximum
// grows, so the online log-sum-exp costs one exponential per value, not two. Everything is kept
// per lane (16 slots: two 8-lane vectors) and the lanes are combined in a fixed order at the end,
// so results do not depend on the thread count or the schedule.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/vec.h"
#include "common/vec_math.h"
#include "divergence/token_divergence.h"

namespace lmk::divergence {
namespace {

using vec::f32x8;
using vec::i32x8;

constexpr int64_t kBlock = 256;  // values per block: 16 loads of 16
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int32_t kNoIndex = std::numeric_limits<int32_t>::max();

// The vocabulary index of each lane of vec::load16's two halves, relative to the load's start:
// elements 0-7 and 8-15 for fp32 and fp16, the even and the odd elements for bf16.
template <typename S>
struct LaneIndex {
  static constexpr i32x8 a = {0, 1, 2, 3, 4, 5, 6, 7};
  static constexpr i32x8 b = {8, 9, 10, 11, 12, 13, 14, 15};
};
template <>
struct LaneIndex<bfloat16> {
  static constexpr i32x8 a = {0, 2, 4, 6, 8, 10, 12, 14};
  static constexpr i32x8 b = {1, 3, 5, 7, 9, 11, 13, 15};
};

__attribute__((always_inline)) inline f32x8 lane_max(f32x8 a, f32x8 b) { return (i32x8)(b > a) ? b : a; }

// A finite stand-in for a maximum of -inf, so that e^{x - max} is e^{-inf} = 0 rather than NaN.
__attribute__((always_inline)) inline f32x8 exponent_base(f32x8 m) { return (i32x8)(m == -kInf) ? vec::splat(0.f) : m; }

// Per-lane top-2 and argmax. A value enters only when strictly greater (the earliest index wins
// ties within a lane); NaN never enters (the row's NaN is found afterwards, see finish()).
struct TopTwo {
  f32x8 first = vec::splat(-kInf), second = vec::splat(-kInf);
  i32x8 index = {kNoIndex, kNoIndex, kNoIndex, kNoIndex, kNoIndex, kNoIndex, kNoIndex, kNoIndex};

  __attribute__((always_inline)) void add(f32x8 x, i32x8 x_index) {
    const i32x8 greater = (i32x8)(x > first);
    const f32x8 smaller = greater ? first : x;
    second = (i32x8)(smaller > second) ? smaller : second;
    first = greater ? x : first;
    index = greater ? x_index : index;
  }
};

// Online log-sum-exp of one logits row: per lane, the maximum so far and sum e^{x - max}.
struct LogSumExp {
  f32x8 max = vec::splat(-kInf), sum_a = {}, sum_b = {};

  // Moves the lanes to the new maximum: returns the base to subtract before exponentiating, and
  // in `scale` the factor that moved the sums (for sums kept alongside).
  __attribute__((always_inline)) f32x8 rebase(f32x8 new_max, f32x8& scale) {
    const f32x8 base = exponent_base(new_max);
    scale = vec::exp(max - base);
    sum_a *= scale;
    sum_b *= scale;
    max = new_max;
    return base;
  }
};

struct RowState {
  TopTwo top_a, top_b;
  LogSumExp candidate;
  LogSumExp reference;
  f32x8 weighted_difference_a = {}, weighted_difference_b = {};  // sum e^{r - max_r} (r - c), per lane
};

// One block of n values (a multiple of 16) starting at vocabulary index `start`.
template <bool kWithReference, typename S>
__attribute__((always_inline)) inline void block(const S* c, const S* r, int64_t n, int32_t start, RowState& st) {
  f32x8 reference_max_a = st.reference.max, reference_max_b = st.reference.max;
  for (int64_t j = 0; j < n; j += 16) {
    f32x8 a, b;
    vec::load16(c + j, a, b);
    const i32x8 base = i32x8{} + int32_t(start + j);
    st.top_a.add(a, base + LaneIndex<S>::a);
    st.top_b.add(b, base + LaneIndex<S>::b);
    if constexpr (kWithReference) {
      f32x8 ra, rb;
      vec::load16(r + j, ra, rb);
      reference_max_a = lane_max(reference_max_a, ra);
      reference_max_b = lane_max(reference_max_b, rb);
    }
  }
  f32x8 scale;
  const f32x8 base = st.candidate.rebase(lane_max(st.top_a.first, st.top_b.first), scale);
  f32x8 reference_base = {};
  if constexpr (kWithReference) {
    reference_base = st.reference.rebase(lane_max(reference_max_a, reference_max_b), scale);
    st.weighted_difference_a *= scale;
    st.weighted_difference_b *= scale;
  }
  for (int64_t j = 0; j < n; j += 16) {
    f32x8 a, b;
    vec::load16(c + j, a, b);
    st.candidate.sum_a += vec::exp(a - base);
    st.candidate.sum_b += vec::exp(b - base);
    if constexpr (kWithReference) {
      f32x8 ra, rb;
      vec::load16(r + j, ra, rb);
      const f32x8 ea = vec::exp(ra - reference_base), eb = vec::exp(rb - reference_base);
      st.reference.sum_a += ea;
      st.reference.sum_b += eb;
      // p = 0 terms contribute 0 even where r - c is NaN (both -inf) or infinite.
      st.weighted_difference_a += (i32x8)(ra == -kInf) ? vec::splat(0.f) : ea * (ra - a);
      st.weighted_difference_b += (i32x8)(rb == -kInf) ? vec::splat(0.f) : eb * (rb - b);
    }
  }
}

// The lanes of a row, before the scalar finish.
struct RowLanes {
  float max[8], sum[8];                      // candidate log-sum-exp per lane
  float reference_max[8], reference_sum[8];  // reference log-sum-exp per lane
  float weighted_difference[8];
  float first[16], second[16];
  int32_t index[16];
};

template <bool kWithReference, typename T>
__attribute__((always_inline)) inline void row(const T* c, const T* r, int64_t v, RowLanes& out) {
  RowState st;
  // r is null without reference logits, and null + i is undefined.
  auto reference_at = [r](int64_t i) { return kWithReference ? r + i : r; };
  int64_t i = 0;
  for (; i + kBlock <= v; i += kBlock) block<kWithReference>(c + i, reference_at(i), kBlock, int32_t(i), st);
  const int64_t full = (v - i) / 16 * 16;
  if (full > 0) block<kWithReference>(c + i, reference_at(i), full, int32_t(i), st);
  i += full;
  if (i < v) {  // the last partial load, padded with -inf (never the argmax, e^{-inf} = 0, p = 0 terms dropped)
    float padded[16], padded_reference[16];
    for (int64_t k = 0; k < 16; ++k) {
      padded[k] = i + k < v ? to_float(c[i + k]) : -kInf;
      padded_reference[k] = kWithReference && i + k < v ? to_float(r[i + k]) : -kInf;
    }
    block<kWithReference, float>(padded, padded_reference, 16, int32_t(i), st);
  }
  std::memcpy(out.max, &st.candidate.max, 32);
  const f32x8 sum = st.candidate.sum_a + st.candidate.sum_b;
  std::memcpy(out.sum, &sum, 32);
  std::memcpy(out.first, &st.top_a.first, 32);
  std::memcpy(out.first + 8, &st.top_b.first, 32);
  std::memcpy(out.second, &st.top_a.second, 32);
  std::memcpy(out.second + 8, &st.top_b.second, 32);
  std::memcpy(out.index, &st.top_a.index, 32);
  std::memcpy(out.index + 8, &st.top_b.index, 32);
  if constexpr (kWithReference) {
    std::memcpy(out.reference_max, &st.reference.max, 32);
    const f32x8 reference_sum = st.reference.sum_a + st.reference.sum_b;
    std::memcpy(out.reference_sum, &reference_sum, 32);
    const f32x8 weighted = st.weighted_difference_a + st.weighted_difference_b;
    std::memcpy(out.weighted_difference, &weighted, 32);
  }
}

#define LMK_DEFINE_ROW(T, SUFFIX)                                                                  \
  LMK_SIMD_CLONES void row_##SUFFIX(const T* c, const T* r, int64_t v, RowLanes& out) {            \
    if (r) row<true>(c, r, v, out);                                                                \
    else row<false>(c, r, v, out);                                                                 \
  }                                                                                                \
  inline void row_simd(const T* c, const T* r, int64_t v, RowLanes& out) { row_##SUFFIX(c, r, v, out); }
LMK_DEFINE_ROW(float, f32)
LMK_DEFINE_ROW(bfloat16, bf16)
LMK_DEFINE_ROW(float16, f16)
#undef LMK_DEFINE_ROW

// log sum_l sum_l e^{max_l}, with the lanes combined in lane order; -inf when every lane is empty.
float combine_log_sum_exp(const float* max, const float* sum, float* scale) {
  const float global = *std::max_element(max, max + 8, [](float x, float y) { return y > x; });
  if (global == -kInf) {
    std::fill(scale, scale + 8, 0.f);
    return -kInf;
  }
  float total = 0;
  for (int l = 0; l < 8; ++l) {
    scale[l] = std::exp(max[l] - global);
    total += sum[l] * scale[l];
  }
  return global + std::log(total);
}

struct Result {
  int64_t argmax;
  float nll, margin, kl;
};

template <typename T>
Result finish(const RowLanes& lanes, const T* c, const T* r, int64_t v, int64_t token) {
  float scale[8];
  const float lse = combine_log_sum_exp(lanes.max, lanes.sum, scale);
  Result result{0, lse - to_float(c[token]), 0.f, 0.f};
  // The argmax: the greatest value, the lowest index among its slots; index 0 for a row of -inf.
  float first = -kInf, second = -kInf;
  int32_t index = kNoIndex;
  for (int k = 0; k < 16; ++k) {
    if (lanes.first[k] > first || (lanes.first[k] == first && lanes.index[k] < index)) index = lanes.index[k];
    for (float x : {lanes.first[k], lanes.second[k]}) {
      if (x > first) {
        second = first;
        first = x;
      } else if (x > second) {
        second = x;
      }
    }
  }
  result.argmax = index == kNoIndex ? 0 : index;
  result.margin = first == second ? 0.f : first - second;
  // A NaN made the sum NaN (so did a +inf); only then is the row searched for its first NaN.
  if (std::isnan(lse)) {
    for (int64_t k = 0; k < v; ++k)
      if (std::isnan(to_float(c[k]))) {
        result.argmax = k;
        result.margin = std::numeric_limits<float>::quiet_NaN();
        break;
      }
  }
  if (r) {
    float reference_scale[8];
    const float reference_lse = combine_log_sum_exp(lanes.reference_max, lanes.reference_sum, reference_scale);
    float weighted = 0, total = 0;
    for (int l = 0; l < 8; ++l) {
      weighted += lanes.weighted_difference[l] * reference_scale[l];
      total += lanes.reference_sum[l] * reference_scale[l];
    }
    result.kl = weighted / total + (lse - reference_lse);
  }
  return result;
}

template <typename I>
void check_tokens(const I* tokens, const bool* mask, const TokenDivergenceInputs& in, int64_t v) {
  const int64_t rows = in.logits.size(0), cols = in.logits.size(1);
  if (cols == 0) return;  // no token: nothing to check, however many rows (an empty [2^40, 0] input)
  const TensorView& t = in.reference_tokens;
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t s = 0; s < cols; ++s) {
      if (mask && !mask[b * in.mask->stride(0) + s * in.mask->stride(1)]) continue;
      const int64_t token = tokens[b * t.stride(0) + s * t.stride(1)];
      if (token < 0 || token >= v)
        fail(ErrorKind::Index, "reference_tokens: expected values in [0, ", v, ") (the vocabulary of logits), got ",
             token, " at position [", b, ", ", s, "]");
    }
}

}  // namespace

void token_divergence_cpu(const TokenDivergenceInputs& in, const TokenDivergenceOutputs& out) {
  const int64_t rows = in.logits.size(0), cols = in.logits.size(1), v = in.logits.size(2);
  const bool* mask = in.mask ? in.mask->as<const bool>() : nullptr;
  const bool with_reference = in.reference_logits.has_value();
  dispatch_float_index(in.logits.dtype, "logits", in.reference_tokens.dtype, "reference_tokens", [&](auto ttag,
                                                                                                      auto itag) {
    using T = typename decltype(ttag)::type;
    using I = typename decltype(itag)::type;
    const I* tokens = in.reference_tokens.as<const I>();
    check_tokens(tokens, mask, in, v);
    // Small vocabularies: enough positions per chunk to amortise the scheduling.
    const int64_t grain = std::max<int64_t>(1, 16384 / v);
    parallel_for(0, rows * cols, grain, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        const int64_t b = p / cols, s = p % cols;
        const bool counted = !mask || mask[b * in.mask->stride(0) + s * in.mask->stride(1)];
        Result result{-1, 0.f, 0.f, 0.f};
        if (counted) {
          const T* c = in.logits.as<const T>() + b * in.logits.stride(0) + s * in.logits.stride(1);
          const T* r = with_reference ? in.reference_logits->as<const T>() + b * in.reference_logits->stride(0) +
                                            s * in.reference_logits->stride(1)
                                      : nullptr;
          const int64_t token = tokens[b * in.reference_tokens.stride(0) + s * in.reference_tokens.stride(1)];
          RowLanes lanes;
          row_simd(c, r, v, lanes);
          result = finish(lanes, c, r, v, token);
          out.match.as<bool>()[p] = result.argmax == token;
        } else {
          out.match.as<bool>()[p] = false;
        }
        out.argmax.as<int64_t>()[p] = result.argmax;
        out.nll.as<float>()[p] = result.nll;
        out.margin.as<float>()[p] = result.margin;
        if (with_reference) out.kl->as<float>()[p] = result.kl;
      }
    });
  });
}

}  // namespace lmk::divergence
