// Bindings of the HAT word connectors: import the arguments, check them, release the GIL, dispatch on device.
#include <pybind11/pybind11.h>

#include "attention/word_connector.h"
#include "bindings/families.h"
#include "bindings/tensor_import.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

using namespace lmk::attention;

// Checks `args`, then runs the CPU or CUDA kernel with the GIL released.
template <typename Args, typename Check, typename Cpu, typename Cuda>
void run(const Args& args, const TensorView& device_of, const OptionalView& flag, uintptr_t stream, Check check,
         Cpu cpu, [[maybe_unused]] Cuda cuda) {
  check(args);
  require_error_flag(flag, device_of);
  py::gil_scoped_release release;
  if (device_of.device == DeviceType::CPU) return cpu(args);
#ifdef LMK_WITH_CUDA
  cuda(args, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

#ifdef LMK_WITH_CUDA
#define LMK_CUDA_FN(name) name
#else
#define LMK_CUDA_FN(name) nullptr
#endif

void word_attention(py::handle q, py::handle k, py::handle v, py::handle cu_seqlens, double scale, py::handle out,
                    py::handle lse, py::handle error_flag, uintptr_t stream) {
  TensorImports imports;
  const WordAttentionForward args{imports.require(q, "q"), imports.require(k, "k"), imports.require(v, "v"),
                                  imports.require(cu_seqlens, "cu_seqlens"), imports.require(out, "out"),
                                  imports.require(lse, "lse"), float(scale)};
  run(args, args.q, imports.optional(error_flag, "error_flag"), stream, check_word_attention, word_attention_cpu,
      LMK_CUDA_FN(word_attention_cuda));
}

void word_attention_backward(py::handle q, py::handle k, py::handle v, py::handle cu_seqlens, py::handle lse,
                             py::handle grad_out, double scale, py::handle grad_q, py::handle grad_k,
                             py::handle grad_v, py::handle delta, py::handle error_flag, uintptr_t stream) {
  TensorImports imports;
  const WordAttentionBackward args{imports.require(q, "q"), imports.require(k, "k"), imports.require(v, "v"),
                                   imports.require(cu_seqlens, "cu_seqlens"), imports.require(lse, "lse"),
                                   imports.require(grad_out, "grad_out"), imports.require(grad_q, "grad_q"),
                                   imports.require(grad_k, "grad_k"), imports.require(grad_v, "grad_v"),
                                   imports.require(delta, "delta"), float(scale)};
  run(args, args.q, imports.optional(error_flag, "error_flag"), stream, check_word_attention_backward,
      word_attention_backward_cpu, LMK_CUDA_FN(word_attention_backward_cuda));
}

void guide_broadcast(py::handle x, py::handle guide, py::handle cu_seqlens, py::handle out, py::handle error_flag,
                     uintptr_t stream) {
  TensorImports imports;
  const GuideBroadcast args{imports.require(x, "x"), imports.require(guide, "guide"),
                            imports.require(cu_seqlens, "cu_seqlens"), imports.require(out, "out")};
  run(args, args.x, imports.optional(error_flag, "error_flag"), stream, check_guide_broadcast, guide_broadcast_cpu,
      LMK_CUDA_FN(guide_broadcast_cuda));
}

void guide_broadcast_backward(py::handle grad_out, py::handle cu_seqlens, py::handle grad_guide, py::handle error_flag,
                              uintptr_t stream) {
  TensorImports imports;
  const GuideBroadcastBackward args{imports.require(grad_out, "grad_out"), imports.require(cu_seqlens, "cu_seqlens"),
                                    imports.require(grad_guide, "grad_guide")};
  run(args, args.grad_out, imports.optional(error_flag, "error_flag"), stream, check_guide_broadcast_backward,
      guide_broadcast_backward_cpu, LMK_CUDA_FN(guide_broadcast_backward_cuda));
}

#undef LMK_CUDA_FN

}  // namespace

void register_word_connector(py::module_& m) {
  m.attr("WORD_CONNECTOR_BAD_SEQLENS") = attention::kBadSeqlens;
  m.def("word_attention", &word_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens"),
        py::arg("scale"), py::arg("out"), py::arg("lse"), py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "HAT encoder connector: one query per word and head attends to that word's byte keys; writes out and the "
        "log-sum-exp.");
  m.def("word_attention_backward", &word_attention_backward, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("cu_seqlens"), py::arg("lse"), py::arg("grad_out"), py::arg("scale"), py::arg("grad_q"),
        py::arg("grad_k"), py::arg("grad_v"), py::arg("delta"), py::arg("error_flag") = py::none(),
        py::arg("stream") = 0, "Gradients of word_attention for q, k and v (delta: [W, Hq] float32 scratch).");
  m.def("guide_broadcast", &guide_broadcast, py::arg("x"), py::arg("guide"), py::arg("cu_seqlens"), py::arg("out"),
        py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "HAT decoder connector: out[t] = x[t] + guide[word of t].");
  m.def("guide_broadcast_backward", &guide_broadcast_backward, py::arg("grad_out"), py::arg("cu_seqlens"),
        py::arg("grad_guide"), py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "Per-word sums of grad_out: the gradient of guide_broadcast for guide.");
}

}  // namespace lmk::bindings
