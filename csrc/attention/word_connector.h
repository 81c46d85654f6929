// HAT's word connectors, over a packed byte stream split into words by cu_seqlens [W + 1]
// (word w holds byte rows cu_seqlens[w] .. cu_seqlens[w + 1]):
//
// Encoder connector, word attention: one query per word and head attends to that word's bytes only,
//   s_j     = scale * q[w, h] . k[j, g]            g = h / (Hq / Hkv), j in word w
//   out[w, h] = sum_j softmax(s)_j v[j, g],        lse[w, h] = logsumexp_j s_j
// An empty word gives out = 0 and lse = -inf. Backward, with delta = sum_j p_j dout[w, h] . v[j, g]
// (= dout . out, but from the fp32 probabilities rather than the rounded stored output, so that
// half-precision gradients of a saturated softmax keep their accuracy):
//   ds_j = p_j (dout[w, h] . v[j, g] - delta),  dq[w, h] = scale sum_j ds_j k[j, g],
//   dk[j, g] = scale sum_{h in g} ds_j q[w, h],   dv[j, g] = sum_{h in g} p_j dout[w, h]
// (bytes outside every word get zero dk and dv). Each key row belongs to one word, so every
// gradient element is written once: no atomics, bitwise reproducible.
//
// Decoder connector, guide broadcast: out[t] = x[t] + guide[w] for every byte t of word w (x[t]
// for bytes outside every word); its backward to guide is the per-word sum of the upstream rows.
//
// Layouts: q [W, Hq, D], k and v [T, Hkv, D], out [W, Hq, D], lse [W, Hq] float32; x and out
// [T, C], guide [W, C]; all contiguous, values float32, bfloat16 or float16 (one dtype), fp32
// accumulation; cu_seqlens int32 or int64, non-decreasing, within [0, T].
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/tensor_view.h"

namespace lmk::attention {

constexpr int64_t kMaxHeadDim = 256;

struct WordAttentionForward {
  TensorView q, k, v, cu_seqlens;
  TensorView out, lse;
  float scale;
};

struct WordAttentionBackward {
  TensorView q, k, v, cu_seqlens, lse, grad_out;
  TensorView grad_q, grad_k, grad_v;
  TensorView delta;  // [W, Hq] float32, written (the CUDA dk/dv pass reads it)
  float scale;
};

struct GuideBroadcast {
  TensorView x, guide, cu_seqlens, out;
};

struct GuideBroadcastBackward {
  TensorView grad_out, cu_seqlens, grad_guide;
};

// Shapes, dtypes, devices and layouts (the cu_seqlens values are checked by the kernels).
void check_word_attention(const WordAttentionForward& a);
void check_word_attention_backward(const WordAttentionBackward& a);
void check_guide_broadcast(const GuideBroadcast& a);
void check_guide_broadcast_backward(const GuideBroadcastBackward& a);

// CPU: raise ValueError for cu_seqlens that decrease or leave [0, T].
void word_attention_cpu(const WordAttentionForward& a);
void word_attention_backward_cpu(const WordAttentionBackward& a);
void guide_broadcast_cpu(const GuideBroadcast& a);
void guide_broadcast_backward_cpu(const GuideBroadcastBackward& a);

// CUDA: same contracts on the given stream; bad cu_seqlens set kBadSeqlens in error_flag (int32 [1]
// on the device) and the words concerned are skipped.
constexpr int32_t kBadSeqlens = 1;

#ifdef LMK_WITH_CUDA
void word_attention_cuda(const WordAttentionForward& a, const TensorView& error_flag, void* stream);
void word_attention_backward_cuda(const WordAttentionBackward& a, const TensorView& error_flag, void* stream);
void guide_broadcast_cuda(const GuideBroadcast& a, const TensorView& error_flag, void* stream);
void guide_broadcast_backward_cuda(const GuideBroadcastBackward& a, const TensorView& error_flag, void* stream);
#endif

}  // namespace lmk::attention
