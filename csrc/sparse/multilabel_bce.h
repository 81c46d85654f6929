// Sparse multi-label BCE-with-logits (the T-FREE head loss) against a multi-hot target given as CSR.
//
// For position p with logits x = logits[p, 0:v] and positive set pos(p) (the distinct indices in
// [offsets[p], offsets[p+1]) of indices; an index listed twice counts once):
//
//   L_p = w_p * ( sum_{i < v} softplus(x_i) + sum_{i in pos(p)} [P * softplus(-x_i) - softplus(x_i)] )
//       = w_p * sum_i [P * y_i * softplus(-x_i) + (1 - y_i) * softplus(x_i)]
//   dL_p / dx_i = w_p * sigmoid(x_i)                 (i not in pos(p))
//               = -w_p * P * sigmoid(-x_i)           (i in pos(p))
//
// P is pos_weight and w_p the optional weight of the position (1 without weights). The dense
// target is never built: a dense pass over the row plus a correction for each positive. Both the
// loss and, when asked for, the gradient come from that one read of the logits.
//
// Logits are float32, bfloat16 or float16 [positions, v] with unit inner stride (rows at any
// stride) and accumulate in fp32 or wider; the loss is float32 [positions]; the gradient is
// contiguous [positions, v] in the logits' dtype. Indices and offsets are int32 or int64 (the
// same type); weights are float32 [positions].
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/tensor_view.h"

namespace lmk::sparse {

struct MultiLabelTargets {
  TensorView indices;    // [N]             int32 or int64, each in [0, v)
  TensorView offsets;    // [positions + 1] same dtype; offsets[0] = 0, non-decreasing, offsets[positions] = N
  OptionalView weights;  // [positions]     float32, or absent
  float pos_weight = 1.f;

  int64_t num_positions() const { return offsets.size(0) - 1; }
  int64_t num_indices() const { return indices.size(0); }
};

// Shapes, dtypes, devices and layouts (everything but the values of indices and offsets, which
// the kernels check where the data lives). grad may be absent: the loss alone is computed.
void check_multilabel_bce(const TensorView& logits, const MultiLabelTargets& targets, const TensorView& loss,
                          const OptionalView& grad);

// The backward of the fused loss: grad_logits[p, i] = grad[p, i] * grad_loss[p], in fp32, rounded
// once to the dtype of grad (contiguous [positions, v]); grad_loss is float32 [positions].
void check_multilabel_bce_backward(const TensorView& grad, const TensorView& grad_loss,
                                   const TensorView& grad_logits);

// ---- CPU -------------------------------------------------------------------------------------
// Raises IndexError for an index outside [0, v) and ValueError for malformed offsets.
void multilabel_bce_cpu(const TensorView& logits, const MultiLabelTargets& targets, const TensorView& loss,
                        const OptionalView& grad);
void multilabel_bce_backward_cpu(const TensorView& grad, const TensorView& grad_loss, const TensorView& grad_logits);

// ---- CUDA ------------------------------------------------------------------------------------
// Same contract, on the given stream. Values are not checked on the host: the kernel ORs these
// bits into error_flag (int32 [1] on the device) and skips the offending entry instead.
constexpr int32_t kBceBadIndex = 1;    // an index outside [0, v)
constexpr int32_t kBceBadOffsets = 2;  // offsets not monotone from 0 to N

#ifdef LMK_WITH_CUDA
void multilabel_bce_cuda(const TensorView& logits, const MultiLabelTargets& targets, const TensorView& loss,
                         const OptionalView& grad, const TensorView& error_flag, void* stream);
void multilabel_bce_backward_cuda(const TensorView& grad, const TensorView& grad_loss, const TensorView& grad_logits,
                                  void* stream);
#endif

}  // namespace lmk::sparse
