// Tiled attention with online softmax (FlashAttention-2 style): one kernel with options for
// AtMan's per-key suppression, causal / bidirectional / sliding-window masks, grouped-query heads,
// a shared key/value prefix, KV-cache queries (Sq < Sk) and packed variable-length sequences.
//
// Per batch item b and query head h (key/value head h / (Hq / Hkv)), with the N = P + Sk keys
// prefix ⊕ own keys and query i at absolute position p_i = N - Sq + i:
//
//   s_ij = scale * q_i . k_j
//   key j is visible to query i  iff  (not causal or j <= p_i) and (window == 0 or p_i - j < window)
//   multiplicative factor:  s_ij <- m_i + c_bj (s_ij - m_i)   (s_ij itself where c_bj == 1, so that a
//                           factor of 1 is exactly the clean score), m_i = min_j s_ij over the visible
//                           keys, or over all N keys with factor_min_all
//   additive bias:          s_ij <- s_ij + bias_bj
//   lse_i = log sum_{j visible} e^{s_ij},   out_i = sum_{j visible} e^{s_ij - lse_i} v_j
//
// The visible keys of a row form one interval [lo_i, hi_i), so whole key tiles outside every
// row's interval are skipped: a sliding window costs O(Sq x window). A row whose visible scores
// are all -inf (bias -inf) gets out = 0 and lse = -inf. Varlen mode: q, k, v are [T, H, D] and
// sequence n holds rows cu_seqlens[n] .. cu_seqlens[n + 1], each a causal item of its own
// (Sq = Sk = its length, no prefix, bias or factor).
//
// Backward (gradients of sum(out * grad_out)), P and dP recomputed tile by tile from lse, and
// delta_i = sum_d grad_out_id out_id in fp32: on CUDA as sum_j P_ij dP_ij; on the CPU from the
// forward's out, plus, for bf16 and fp16, the residual out_fp32 - out that the forward wrote in q's
// dtype (from the rounded out alone, where none was kept, as FlashAttention-2 takes it):
//   dS_ij = P_ij (dP_ij - delta_i),  dP_ij = grad_out_i . v_j
//   dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i P_ij grad_out_i
//   dbias_bj = sum_{h, i} dS_ij   (written per key/value head; the op sums the heads)
// Multiplicative factor, s'_ij = c_j s_ij + (1 - c_j) m_i with m_i = s_{i a_i} (a_i the first
// minimal counted key, saved by the forward): with G = dS the gradient of s',
//   ds_ij = G_ij c_j + [j == a_i] dm_i,  dm_i = sum_j G_ij (1 - c_j),  dfactor_bj = sum_{h, i} G_ij (s_ij - m_i)
// and dq, dk follow from ds as above.
//
// Layouts: q, k, v, prefix_k, prefix_v, out and grad_out have unit stride in D and any
// non-negative strides elsewhere (prefix batch stride 0 included: read in place). lse, row_min,
// delta and every gradient are outputs the op allocates contiguous: float32, except that grad_q
// and grad_k / grad_v may each be in q's dtype, every element rounded once (to nearest even) from
// its fp32 result, which one task computes and writes once.
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/tensor_view.h"

namespace lmk::attention {

constexpr int64_t kMaxDim = 256;
constexpr int64_t kMaxKeys = (int64_t(1) << 31) - 1024;

struct AttentionOptions {
  bool causal = true;
  double scale = 1.0;
  int64_t window = 0;  // 0: no window
  bool factor_min_all = false;
};

struct AttentionInputs {
  TensorView q;                      // [B, Hq, Sq, D], varlen [T, Hq, D]
  TensorView k, v;                   // [B, Hkv, Sk, D], varlen [T, Hkv, D]
  OptionalView prefix_k, prefix_v;   // [1 or B, Hkv, P, D]
  OptionalView key_bias;             // [B, P + Sk] float32
  OptionalView key_factor;           // [B, P + Sk] float32
  OptionalView cu_seqlens;           // [n + 1] int32 or int64: varlen mode
};

struct AttentionForwardOutputs {
  TensorView out;        // like q, q's dtype
  TensorView lse;        // [B, Hq, Sq], varlen [T, Hq] float32
  OptionalView row_min;     // like lse, present exactly when key_factor is
  OptionalView row_argmin;  // like lse, int64: the first counted key with the minimum; with row_min
  OptionalView out_residual;  // like out (CPU only): the fp32 output minus out, rounded to q's dtype
};

struct AttentionGradients {
  TensorView grad_out;  // like q, q's dtype (inputs)
  TensorView out;       // the forward's, like grad_out (the CPU kernels take delta from it)
  OptionalView out_residual;  // the forward's, like out (CPU only)
  TensorView lse;       // the forward's
  TensorView delta;     // like lse, float32: a workspace the kernel fills (rowsum(grad_out * out))
  TensorView grad_q;    // like q, float32 or q's dtype
  TensorView grad_k;    // [B, Hkv, P + Sk, D] (the prefix rows first), varlen [T, Hkv, D], float32 or q's dtype
  TensorView grad_v;    // like grad_k, grad_k's dtype
  OptionalView grad_bias;  // [B, Hkv, P + Sk] float32, present exactly when key_bias is
  // Present exactly when key_factor is: the forward's row_min and row_argmin, a float32 workspace
  // like lse for dm, and the factor gradient like grad_bias.
  OptionalView row_min, row_argmin, grad_min, grad_factor;
};

// One [batch, head, row, d] operand as a pointer and element strides (varlen: `batch` unused, an
// item's rows start at its cu_seqlens entry). Built by the checks, read by both devices' kernels.
struct Operand {
  void* data = nullptr;
  int64_t batch = 0, head = 0, row = 0;
};

struct AttentionProblem {
  DType dtype = DType::Float32;  // of q, k, v, prefix, out, grad_out
  int64_t items = 0;             // B, or the number of packed sequences
  int64_t q_heads = 0, kv_heads = 0, dim = 0;
  int64_t queries = 0, keys = 0, prefix = 0;  // dense: Sq, Sk, P; varlen: max_seqlen (the caller's), 0, 0
  int64_t total_rows = 0;                     // varlen: T
  const void* cu_seqlens = nullptr;           // varlen mode when set
  DType cu_dtype = DType::Int64;
  Operand q, k, v, prefix_k, prefix_v;
  const float* key_bias = nullptr;
  const float* key_factor = nullptr;
  int64_t bias_stride = 0, factor_stride = 0;  // per batch item
  AttentionOptions options;
};

// Checks shapes, dtypes, devices and layouts (not the cu_seqlens values, which the kernels check
// before any dependent read) and describes the problem for the kernels.
// max_seqlen (varlen only) sizes the CUDA grid; a longer sequence is reported as kBadSeqlens there.
AttentionProblem check_attention(const AttentionInputs& in, const AttentionOptions& options, int64_t max_seqlen);
void check_forward_outputs(const AttentionProblem& p, const AttentionInputs& in, const AttentionForwardOutputs& out);
void check_gradients(const AttentionProblem& p, const AttentionInputs& in, const AttentionGradients& g);

// The operand view of a [B, H, S, D] tensor or a [B, H, S] statistic (lse, row_min, delta), or of a
// varlen [T, H, D] or [T, H] one.
Operand operand_of(const TensorView& t, bool varlen);

// The backward's tensors as operands (absent ones empty), as both devices' kernels read them.
struct GradientOperands {
  Operand grad_out, out, out_residual, lse, delta, grad_q, grad_k, grad_v, grad_bias, row_min, row_argmin, grad_min,
      grad_factor;
  bool narrow_q = false, narrow_kv = false;  // grad_q, and grad_k and grad_v, in q's dtype (else float32)
};
GradientOperands gradient_operands(const AttentionGradients& g, bool varlen);

// cu_seqlens must start at 0, not decrease and end at T: ValueError, and IndexError for an entry
// outside [0, T]. The CPU kernels call it; on CUDA the kernels report kBadSeqlens.
void check_cu_seqlens_values(const AttentionProblem& p);

void attention_forward_cpu(const AttentionProblem& p, const AttentionForwardOutputs& out);
void attention_backward_cpu(const AttentionProblem& p, const AttentionGradients& g);

constexpr int32_t kBadSeqlens = 1;
// A row_argmin entry passed to the backward outside [0, P + Sk): IndexError on the CPU; on CUDA
// the flag bit, and the entry's row minimum gets no gradient.
constexpr int32_t kBadArgmin = 2;

#ifdef LMK_WITH_CUDA
void attention_forward_cuda(const AttentionProblem& p, const AttentionForwardOutputs& out,
                            const TensorView& error_flag, void* stream);
// The tensor-core kernels (bf16 and fp16, head dimension a multiple of 8 up to 128, 16-byte aligned
// operands; the backward without a factor): false, having done nothing, for any other problem.
bool attention_forward_mma_cuda(const AttentionProblem& p, const AttentionForwardOutputs& out,
                                const TensorView& error_flag, void* stream);
bool attention_backward_mma_cuda(const AttentionProblem& p, const AttentionGradients& g,
                                 const TensorView& error_flag, void* stream);
void attention_backward_cuda(const AttentionProblem& p, const AttentionGradients& g, const TensorView& error_flag,
                             void* stream);
#endif

}  // namespace lmk::attention
