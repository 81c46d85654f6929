// Argument checks of the sparse multi-label BCE, shared by the CPU and CUDA paths.
#include "sparse/multilabel_bce.h"

#include <cmath>

namespace lmk::sparse {

static void check_vector(const TensorView& t, const char* name) {
  check_ndim(t, name, 1);
  check_contiguous(t, name);
}

void check_multilabel_bce(const TensorView& logits, const MultiLabelTargets& targets, const TensorView& loss,
                          const OptionalView& grad) {
  check_dtype(logits, "logits", {DType::Float32, DType::BFloat16, DType::Float16});
  check_ndim(logits, "logits", 2);
  check_unit_last_stride(logits, "logits");
  const int64_t positions = logits.size(0), v = logits.size(1);

  check_dtype(targets.indices, "pos_indices", {DType::Int32, DType::Int64});
  check_same_dtype(targets.offsets, "pos_offsets", targets.indices, "pos_indices");
  check_vector(targets.indices, "pos_indices");
  check_vector(targets.offsets, "pos_offsets");
  check_size(targets.offsets, "pos_offsets", 0, positions + 1);
  check_same_device(targets.indices, "pos_indices", logits, "logits");
  check_same_device(targets.offsets, "pos_offsets", logits, "logits");
  if (targets.weights) {
    const TensorView& w = *targets.weights;
    check_dtype(w, "weights", {DType::Float32});
    check_vector(w, "weights");
    check_size(w, "weights", 0, positions);
    check_same_device(w, "weights", logits, "logits");
  }
  if (!std::isfinite(targets.pos_weight))
    fail(ErrorKind::Value, "pos_weight: expected a finite number, got ", targets.pos_weight);

  check_dtype(loss, "loss", {DType::Float32});
  check_vector(loss, "loss");
  check_size(loss, "loss", 0, positions);
  check_writable(loss, "loss");
  check_same_device(loss, "loss", logits, "logits");
  if (grad) {
    check_same_dtype(*grad, "grad", logits, "logits");
    check_ndim(*grad, "grad", 2);
    check_size(*grad, "grad", 0, positions);
    check_size(*grad, "grad", 1, v);
    check_contiguous(*grad, "grad");
    check_writable(*grad, "grad");
    check_same_device(*grad, "grad", logits, "logits");
  }
}

void check_multilabel_bce_backward(const TensorView& grad, const TensorView& grad_loss,
                                   const TensorView& grad_logits) {
  check_dtype(grad, "grad", {DType::Float32, DType::BFloat16, DType::Float16});
  check_ndim(grad, "grad", 2);
  check_contiguous(grad, "grad");
  check_dtype(grad_loss, "grad_loss", {DType::Float32});
  check_vector(grad_loss, "grad_loss");
  check_size(grad_loss, "grad_loss", 0, grad.size(0));
  check_same_device(grad_loss, "grad_loss", grad, "grad");
  check_same_dtype(grad_logits, "grad_logits", grad, "grad");
  check_ndim(grad_logits, "grad_logits", 2);
  check_size(grad_logits, "grad_logits", 0, grad.size(0));
  check_size(grad_logits, "grad_logits", 1, grad.size(1));
  check_contiguous(grad_logits, "grad_logits");
  check_writable(grad_logits, "grad_logits");
  check_same_device(grad_logits, "grad_logits", grad, "grad");
}

}  // namespace lmk::sparse
