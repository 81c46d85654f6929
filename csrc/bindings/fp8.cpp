// Bindings of csrc/fp8: import the arguments, check them, release the GIL, dispatch on device.
#include <pybind11/pybind11.h>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "fp8/fp8_cast.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

void fp8_cast(py::handle x, py::handle out, int rounding, uint64_t seed, bool transpose, uintptr_t stream) {
  TensorImports in;
  const TensorView xv = in.require(x, "x");
  const TensorView o = in.require(out, "out");
  const fp8::CastOptions options{fp8::Rounding(rounding), seed, transpose};
  fp8::check_cast(xv, o, options);
  py::gil_scoped_release release;
  if (xv.device == DeviceType::CPU) return fp8::cast_cpu(xv, o, options);
#ifdef LMK_WITH_CUDA
  fp8::cast_cuda(xv, o, options, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

}  // namespace

void register_fp8(py::module_& m) {
  m.def("fp8_cast", &fp8_cast, py::arg("x"), py::arg("out"), py::arg("rounding"), py::arg("seed"),
        py::arg("transpose"), py::arg("stream") = 0,
        "out = saturating fp8 cast of x (format from out's dtype); rounding 0 = nearest even, 1 = stochastic "
        "keyed by (seed, element index); transpose writes x.T.");
}

}  // namespace lmk::bindings
