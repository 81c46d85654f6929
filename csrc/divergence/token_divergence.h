// Token divergence: per position of a [B, T, V] batch of candidate logits c, compared with a
// reference token y and (optionally) reference logits r, in one pass over the vocabulary:
//
//   argmax = the lowest v with c_v = max_u c_u
//   match  = (argmax == y)
//   nll    = logsumexp(c) - c_y                                  (= -log softmax(c)[y])
//   margin = top1(c) - top2(c), 0 where top1 = top2; top2 = -inf when V = 1
//   kl     = sum_v p_v (log p_v - log q_v),  p = softmax(r), q = softmax(c)
//          = (1 / Z_r) sum_v e^{r_v - m_r} (r_v - c_v) + logsumexp(c) - logsumexp(r)
//
// with terms where r_v = -inf (p_v = 0) taken as 0. The second form of kl needs no logarithm per
// element and is exactly 0 when r = c: every r_v - c_v is 0 and both log-sum-exps are the same
// computation on the same values. logsumexp runs online (a running maximum with rescaled sums),
// all in fp32, so no [B, T, V] temporary exists.
//
// Special values: a NaN logit makes nll, margin and kl NaN, and argmax the index of the first NaN
// (torch.argmax's convention). A +inf logit makes nll and kl NaN (as torch's log_softmax does).
// -inf logits are ordinary (probability 0); a row of only -inf has argmax 0, margin 0, and NaN
// nll and kl (its softmax is undefined). c_y = -inf gives nll = +inf; q_v = 0 where p_v > 0 gives
// kl = +inf. Masked positions (mask false) are skipped: argmax -1, match false, nll, margin, kl 0.
//
// Logits and reference logits are float32, bfloat16 or float16 (the same dtype) with unit stride
// in V and any strides in B and T; reference tokens are int32 or int64 [B, T] in [0, V) wherever
// the mask is true; mask is bool [B, T]. Outputs are contiguous [B, T]: argmax int64, match bool,
// nll, margin and kl float32.
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/tensor_view.h"

namespace lmk::divergence {

constexpr int64_t kMaxVocab = int64_t(1) << 30;

struct TokenDivergenceInputs {
  TensorView logits;              // [B, T, V]
  TensorView reference_tokens;    // [B, T]
  OptionalView mask;              // [B, T] bool, or absent (every position counts)
  OptionalView reference_logits;  // [B, T, V], or absent (no kl)
};

struct TokenDivergenceOutputs {
  TensorView argmax;  // [B, T] int64
  TensorView match;   // [B, T] bool
  TensorView nll;     // [B, T] float32
  TensorView margin;  // [B, T] float32
  OptionalView kl;    // [B, T] float32, present exactly when reference_logits is
};

// Shapes, dtypes, devices and layouts (not the token values, which the kernels check).
void check_token_divergence(const TokenDivergenceInputs& in, const TokenDivergenceOutputs& out);

// Raises IndexError for an unmasked reference token outside [0, V).
void token_divergence_cpu(const TokenDivergenceInputs& in, const TokenDivergenceOutputs& out);

// Same contract on the given stream; a bad token sets kBadToken in error_flag (int32 [1] on the
// device) and its position gets the masked results instead.
constexpr int32_t kBadToken = 1;

#ifdef LMK_WITH_CUDA
void token_divergence_cuda(const TokenDivergenceInputs& in, const TokenDivergenceOutputs& out,
                           const TensorView& error_flag, void* stream);
#endif

}  // namespace lmk::divergence
