// Bindings of csrc/attention: import the arguments, check them, release the GIL, dispatch on device.
#include <pybind11/pybind11.h>

#include "attention/attention.h"
#include "bindings/families.h"
#include "bindings/tensor_import.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

using attention::AttentionInputs;
using attention::AttentionOptions;

AttentionInputs import_inputs(TensorImports& imports, py::handle q, py::handle k, py::handle v, py::handle prefix_k,
                              py::handle prefix_v, py::handle key_bias, py::handle key_factor,
                              py::handle cu_seqlens) {
  return AttentionInputs{imports.require(q, "q"),
                         imports.require(k, "k"),
                         imports.require(v, "v"),
                         imports.optional(prefix_k, "prefix_k"),
                         imports.optional(prefix_v, "prefix_v"),
                         imports.optional(key_bias, "key_bias"),
                         imports.optional(key_factor, "key_factor"),
                         imports.optional(cu_seqlens, "cu_seqlens")};
}

AttentionOptions options_of(bool causal, double scale, int64_t window, bool factor_min_all) {
  return AttentionOptions{causal, scale, window, factor_min_all};
}

void attention_forward(py::handle q, py::handle k, py::handle v, py::handle prefix_k, py::handle prefix_v,
                       py::handle key_bias, py::handle key_factor, py::handle cu_seqlens, int64_t max_seqlen,
                       bool causal, double scale, int64_t window, bool factor_min_all, py::handle out,
                       py::handle lse, py::handle row_min, py::handle row_argmin, py::handle out_residual,
                       py::handle error_flag, uintptr_t stream) {
  TensorImports imports;
  const AttentionInputs in = import_inputs(imports, q, k, v, prefix_k, prefix_v, key_bias, key_factor, cu_seqlens);
  const attention::AttentionForwardOutputs outputs{imports.require(out, "out"), imports.require(lse, "lse"),
                                                   imports.optional(row_min, "row_min"),
                                                   imports.optional(row_argmin, "row_argmin"),
                                                   imports.optional(out_residual, "out_residual")};
  const OptionalView flag = imports.optional(error_flag, "error_flag");
  const attention::AttentionProblem problem =
      attention::check_attention(in, options_of(causal, scale, window, factor_min_all), max_seqlen);
  attention::check_forward_outputs(problem, in, outputs);
  require_error_flag(flag, in.q);
  if (outputs.out_residual && in.q.device != DeviceType::CPU)
    fail(ErrorKind::Value, "out_residual: only the CPU kernels write it (the CUDA backward finds delta itself)");
  py::gil_scoped_release release;
  if (in.q.device == DeviceType::CPU) return attention::attention_forward_cpu(problem, outputs);
#ifdef LMK_WITH_CUDA
  attention::attention_forward_cuda(problem, outputs, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

void attention_backward(py::handle q, py::handle k, py::handle v, py::handle prefix_k, py::handle prefix_v,
                        py::handle key_bias, py::handle key_factor, py::handle cu_seqlens, int64_t max_seqlen,
                        bool causal, double scale, int64_t window, bool factor_min_all, py::handle grad_out,
                        py::handle out, py::handle out_residual, py::handle lse, py::handle row_min,
                        py::handle row_argmin, py::handle delta, py::handle grad_min, py::handle grad_q, py::handle grad_k, py::handle grad_v,
                        py::handle grad_bias, py::handle grad_factor, py::handle error_flag, uintptr_t stream) {
  TensorImports imports;
  const AttentionInputs in =
      import_inputs(imports, q, k, v, prefix_k, prefix_v, key_bias, key_factor, cu_seqlens);
  const attention::AttentionGradients g{imports.require(grad_out, "grad_out"),
                                        imports.require(out, "out"),
                                        imports.optional(out_residual, "out_residual"),
                                        imports.require(lse, "lse"),
                                        imports.require(delta, "delta"),
                                        imports.require(grad_q, "grad_q"),
                                        imports.require(grad_k, "grad_k"),
                                        imports.require(grad_v, "grad_v"),
                                        imports.optional(grad_bias, "grad_bias"),
                                        imports.optional(row_min, "row_min"),
                                        imports.optional(row_argmin, "row_argmin"),
                                        imports.optional(grad_min, "grad_min"),
                                        imports.optional(grad_factor, "grad_factor")};
  const OptionalView flag = imports.optional(error_flag, "error_flag");
  const attention::AttentionProblem problem =
      attention::check_attention(in, options_of(causal, scale, window, factor_min_all), max_seqlen);
  attention::check_gradients(problem, in, g);
  require_error_flag(flag, in.q);
  py::gil_scoped_release release;
  if (in.q.device == DeviceType::CPU) return attention::attention_backward_cpu(problem, g);
#ifdef LMK_WITH_CUDA
  attention::attention_backward_cuda(problem, g, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

}  // namespace

void register_attention(py::module_& m) {
  m.attr("ATTENTION_BAD_SEQLENS") = attention::kBadSeqlens;
  m.attr("ATTENTION_BAD_ARGMIN") = attention::kBadArgmin;
  m.def("attention_forward", &attention_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("prefix_k"),
        py::arg("prefix_v"), py::arg("key_bias"), py::arg("key_factor"), py::arg("cu_seqlens"), py::arg("max_seqlen"),
        py::arg("causal"), py::arg("scale"), py::arg("window"), py::arg("factor_min_all"), py::arg("out"),
        py::arg("lse"), py::arg("row_min"), py::arg("row_argmin"), py::arg("out_residual") = py::none(),
        py::arg("error_flag") = py::none(),
        py::arg("stream") = 0,
        "Tiled attention forward: writes out, the row log-sum-exp and (with key_factor) the row minimum and its key.");
  m.def("attention_backward", &attention_backward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("prefix_k"),
        py::arg("prefix_v"), py::arg("key_bias"), py::arg("key_factor"), py::arg("cu_seqlens"), py::arg("max_seqlen"),
        py::arg("causal"), py::arg("scale"), py::arg("window"), py::arg("factor_min_all"), py::arg("grad_out"),
        py::arg("out"), py::arg("out_residual"), py::arg("lse"), py::arg("row_min"), py::arg("row_argmin"),
        py::arg("delta"), py::arg("grad_min"),
        py::arg("grad_q"), py::arg("grad_k"), py::arg("grad_v"), py::arg("grad_bias"), py::arg("grad_factor"),
        py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "Tiled attention backward: dq, dk and dv over prefix and own keys, and the per-head key_bias and "
        "key_factor gradients.");
}

}  // namespace lmk::bindings
