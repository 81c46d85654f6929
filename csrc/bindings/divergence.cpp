// Bindings of csrc/divergence: import the arguments, check them, release the GIL, dispatch on device.
#include <pybind11/pybind11.h>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "divergence/token_divergence.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

using divergence::TokenDivergenceInputs;
using divergence::TokenDivergenceOutputs;

void token_divergence(py::handle logits, py::handle reference_tokens, py::handle mask, py::handle reference_logits,
                      py::handle argmax, py::handle match, py::handle nll, py::handle margin, py::handle kl,
                      py::handle error_flag, uintptr_t stream) {
  TensorImports imports;
  const TokenDivergenceInputs in{imports.require(logits, "logits"),
                                 imports.require(reference_tokens, "reference_tokens"),
                                 imports.optional(mask, "mask"),
                                 imports.optional(reference_logits, "reference_logits")};
  const TokenDivergenceOutputs out{imports.require(argmax, "argmax"), imports.require(match, "match"),
                                   imports.require(nll, "nll"), imports.require(margin, "margin"),
                                   imports.optional(kl, "kl")};
  const OptionalView flag = imports.optional(error_flag, "error_flag");
  divergence::check_token_divergence(in, out);
  require_error_flag(flag, in.logits);
  py::gil_scoped_release release;
  if (in.logits.device == DeviceType::CPU) return divergence::token_divergence_cpu(in, out);
#ifdef LMK_WITH_CUDA
  divergence::token_divergence_cuda(in, out, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

}  // namespace

void register_divergence(py::module_& m) {
  m.attr("DIVERGENCE_BAD_TOKEN") = divergence::kBadToken;
  m.def("token_divergence", &token_divergence, py::arg("logits"), py::arg("reference_tokens"), py::arg("mask"),
        py::arg("reference_logits"), py::arg("argmax"), py::arg("match"), py::arg("nll"), py::arg("margin"),
        py::arg("kl"), py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "Per position of [B, T, V] logits: argmax, match with the reference token, NLL of it, top-2 margin, and "
        "KL(reference || candidate) when reference logits are given.");
}

}  // namespace lmk::bindings
