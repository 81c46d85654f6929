// Lane-wise fp32 exp (on vec::f32x8 and f32x16), log1p, softplus and sigmoid (on f32x8), accurate
// to a few ulp, for the dense loops of CPU kernels (inlined into LMK_SIMD_CLONES functions like the
// rest of vec.h).
//
// exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for e^r, and
// 2^n applied as two factors so that results down to the subnormal range are rounded once.
// log1p (on [0, 1], all softplus needs): log of u = 1 + x split as u = 2^k m with m in
// [sqrt(1/2), sqrt(2)), a minimax polynomial for log(m), plus the rounding error of 1 + x,
// (x - (u - 1)) / u, added back so that tiny x keep full precision.
// The polynomial coefficients are the classic single-precision minimax ones (Cephes expf, logf).
#pragma once
#include "common/vec.h"

namespace lmk::vec {

__attribute__((always_inline)) inline f32x8 splat(float c) { return f32x8{c, c, c, c, c, c, c, c}; }

__attribute__((always_inline)) inline f32x8 abs(f32x8 x) {
  return bitcast<f32x8>(bitcast<u32x8>(x) & 0x7FFFFFFFu);
}

// The integer vectors of a float vector's width.
template <typename F>
struct IntLanes;
template <>
struct IntLanes<f32x8> {
  using I = i32x8;
  using U = u32x8;
};
template <>
struct IntLanes<f32x16> {
  using I = i32x16;
  using U = u32x16;
};

// Lane-wise a < b ? b : a and its mirror; a NaN in `a` is kept (the comparison is false).
template <typename F>
__attribute__((always_inline)) inline F max_with(F a, float b) {
  return (typename IntLanes<F>::I)(a < b) ? F{} + b : a;
}
template <typename F>
__attribute__((always_inline)) inline F min_with(F a, float b) {
  return (typename IntLanes<F>::I)(a > b) ? F{} + b : a;
}

// e^x for every x: 0 below -104 (or so), +inf above 88.72, NaN for NaN; on 8 or 16 lanes (the same
// arithmetic per lane).
template <typename F>
__attribute__((always_inline)) inline F exp(F x) {
  using I = typename IntLanes<F>::I;
  using U = typename IntLanes<F>::U;
  // Clamping keeps 2^n representable as two normal factors; results outside the clamp round to
  // 0 and +inf all the same.
  const F a = min_with(max_with(x, -110.f), 89.f);
  // n = round(a / ln2) by the 1.5 * 2^23 shifter, which also leaves n in the low mantissa bits.
  constexpr float kShifter = 12582912.f;
  const F shifted = a * 1.44269504088896341f + kShifter;
  const F n = shifted - kShifter;
  const I n_int = bitcast<I>(shifted) - bitcast<I>(F{} + kShifter);
  // ln2 in two parts: n * 0.693359375 is exact for |n| < 2^15.
  F r = a - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  const I half = n_int >> 1;
  const F scale_a = bitcast<F>(bitcast<U>(half + 127) << 23);
  const F scale_b = bitcast<F>(bitcast<U>(n_int - half + 127) << 23);
  return (p * scale_a) * scale_b;
}

// log(1 + x) for x in [0, 1] (and NaN for NaN), given 1 / (1 + x) to within an ulp or so (the
// callers have it already: it only scales the tiny rounding term).
__attribute__((always_inline)) inline f32x8 log1p_unit(f32x8 x, f32x8 inverse_one_plus_x) {
  const f32x8 u = x + 1.f;
  const f32x8 rounding = (x - (u - 1.f)) * inverse_one_plus_x;  // u - 1 is exact for u in [1, 2]
  const i32x8 above_sqrt2 = (i32x8)(u > 1.41421356237309505f);
  const f32x8 m = above_sqrt2 ? u * 0.5f : u;
  const f32x8 k = above_sqrt2 ? splat(1.f) : splat(0.f);
  const f32x8 f = m - 1.f;  // exact: m is within a factor 2 of 1
  const f32x8 z = f * f;
  f32x8 y = splat(7.0376836292e-2f);
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z - 0.5f * z;
  // ln2 in two parts, the small one added with the small terms.
  return (f + (y + (rounding - k * 2.12194440e-4f))) + k * 0.693359375f;
}

// softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|), and sigmoid(x) = 1 / (1 + e^-x), from
// one exponential and one division: e = e^-|x| gives sigmoid = 1 / (1 + e) for x >= 0 and
// e * (1 / (1 + e)) below.
struct SoftplusSigmoid {
  f32x8 softplus, sigmoid;
};

__attribute__((always_inline)) inline SoftplusSigmoid softplus_sigmoid(f32x8 x) {
  const f32x8 e = exp(-abs(x));
  const f32x8 positive_part = (i32x8)(x > 0.f) ? x : splat(0.f);
  const f32x8 inverse = 1.f / (e + 1.f);  // the one division
  const f32x8 sigmoid = (i32x8)(x >= 0.f) ? inverse : e * inverse;
  return {positive_part + log1p_unit(e, inverse), sigmoid};
}

}  // namespace lmk::vec
