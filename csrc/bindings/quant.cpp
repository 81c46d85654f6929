// Bindings of csrc/quant: import the arguments, check them, release the GIL, dispatch on device.
#include <pybind11/pybind11.h>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "quant/int8_absmax.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

void int8_absmax_quantize(py::handle weight, py::handle q, py::handle scale, py::handle error_flag,
                          uintptr_t stream) {
  TensorImports in;
  const TensorView w = in.require(weight, "weight");
  const TensorView qv = in.require(q, "q");
  const TensorView s = in.require(scale, "scale");
  const OptionalView flag = in.optional(error_flag, "error_flag");
  quant::check_quantize(w, qv, s);
  require_error_flag(flag, w);
  py::gil_scoped_release release;
  if (w.device == DeviceType::CPU) return quant::quantize_cpu(w, qv, s);
#ifdef LMK_WITH_CUDA
  quant::quantize_cuda(w, qv, s, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

void int8_absmax_dequantize(py::handle q, py::handle scale, py::handle out, uintptr_t stream) {
  TensorImports in;
  const TensorView qv = in.require(q, "q");
  const TensorView s = in.require(scale, "scale");
  const TensorView o = in.require(out, "out");
  quant::check_dequantize(qv, s, o);
  py::gil_scoped_release release;
  if (qv.device == DeviceType::CPU) return quant::dequantize_cpu(qv, s, o);
#ifdef LMK_WITH_CUDA
  quant::dequantize_cuda(qv, s, o, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

void int8_absmax_fake_quantize(py::handle weight, py::handle out, py::handle scale, py::handle error_flag,
                               uintptr_t stream) {
  TensorImports in;
  const TensorView w = in.require(weight, "weight");
  const TensorView o = in.require(out, "out");
  const TensorView s = in.require(scale, "scale");
  const OptionalView flag = in.optional(error_flag, "error_flag");
  quant::check_fake_quantize(w, o, s);
  require_error_flag(flag, w);
  py::gil_scoped_release release;
  if (w.device == DeviceType::CPU) return quant::fake_quantize_cpu(w, o, s);
#ifdef LMK_WITH_CUDA
  quant::fake_quantize_cuda(w, o, s, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

}  // namespace

void register_quant(py::module_& m) {
  m.attr("QUANT_NON_FINITE") = quant::kNonFinite;
  m.def("int8_absmax_quantize", &int8_absmax_quantize, py::arg("weight"), py::arg("q"), py::arg("scale"),
        py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "scale[r] = max_c |weight[r, c]| / 127; q[r, c] = clamp(round_half_even(weight[r, c] / scale[r]), -127, 127).");
  m.def("int8_absmax_dequantize", &int8_absmax_dequantize, py::arg("q"), py::arg("scale"), py::arg("out"),
        py::arg("stream") = 0, "out[r, c] = q[r, c] * scale[r], rounded once to out's dtype.");
  m.def("int8_absmax_fake_quantize", &int8_absmax_fake_quantize, py::arg("weight"), py::arg("out"), py::arg("scale"),
        py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "out = dequantize(quantize(weight)) in one pass, with the scales; out may be weight itself.");
}

}  // namespace lmk::bindings
