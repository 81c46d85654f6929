// Bindings of the sparse multi-label BCE: import the arguments, check them, release the GIL,
// dispatch on device.
#include <pybind11/pybind11.h>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "sparse/multilabel_bce.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

void multilabel_bce(py::handle logits, py::handle pos_indices, py::handle pos_offsets, py::handle weights,
                    float pos_weight, py::handle loss, py::handle grad, py::handle error_flag, uintptr_t stream) {
  TensorImports in;
  const TensorView x = in.require(logits, "logits");
  const sparse::MultiLabelTargets targets{in.require(pos_indices, "pos_indices"), in.require(pos_offsets, "pos_offsets"),
                                          in.optional(weights, "weights"), pos_weight};
  const TensorView l = in.require(loss, "loss");
  const OptionalView g = in.optional(grad, "grad");
  const OptionalView flag = in.optional(error_flag, "error_flag");
  sparse::check_multilabel_bce(x, targets, l, g);
  require_error_flag(flag, x);
  py::gil_scoped_release release;
  if (x.device == DeviceType::CPU) return sparse::multilabel_bce_cpu(x, targets, l, g);
#ifdef LMK_WITH_CUDA
  sparse::multilabel_bce_cuda(x, targets, l, g, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

void multilabel_bce_backward(py::handle grad, py::handle grad_loss, py::handle grad_logits, uintptr_t stream) {
  TensorImports in;
  const TensorView g = in.require(grad, "grad");
  const TensorView s = in.require(grad_loss, "grad_loss");
  const TensorView o = in.require(grad_logits, "grad_logits");
  sparse::check_multilabel_bce_backward(g, s, o);
  py::gil_scoped_release release;
  if (g.device == DeviceType::CPU) return sparse::multilabel_bce_backward_cpu(g, s, o);
#ifdef LMK_WITH_CUDA
  sparse::multilabel_bce_backward_cuda(g, s, o, reinterpret_cast<void*>(stream));
#else
  (void)stream;
  fail(ErrorKind::Runtime, "lmkernels was built without CUDA: rebuild with LMK_CUDA=on to run on GPU tensors");
#endif
}

}  // namespace

void register_multilabel_bce(py::module_& m) {
  m.attr("BCE_BAD_INDEX") = sparse::kBceBadIndex;
  m.attr("BCE_BAD_OFFSETS") = sparse::kBceBadOffsets;
  m.def("multilabel_bce", &multilabel_bce, py::arg("logits"), py::arg("pos_indices"), py::arg("pos_offsets"),
        py::arg("weights"), py::arg("pos_weight"), py::arg("loss"), py::arg("grad") = py::none(),
        py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "loss[p] = w_p * sum_i BCE-with-logits(logits[p, i], y_pi; pos_weight) against the multi-hot target of the "
        "CSR positives; grad (optional) = d sum_p loss[p] / d logits.");
  m.def("multilabel_bce_backward", &multilabel_bce_backward, py::arg("grad"), py::arg("grad_loss"),
        py::arg("grad_logits"), py::arg("stream") = 0,
        "grad_logits[p, i] = grad[p, i] * grad_loss[p]: the backward of the fused loss, in fp32, rounded once.");
}

}  // namespace lmk::bindings
