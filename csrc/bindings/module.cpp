// The lmkernels._C module: build information, threading, error translation, and each family's
// bindings (registered from the family's own binding file).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "common/errors.h"
#include "common/parallel.h"
#include "common/simd.h"

namespace py = pybind11;

namespace {

void translate_errors(std::exception_ptr error) {
  try {
    if (error) std::rethrow_exception(error);
  } catch (const lmk::Error& e) {
    PyObject* type = PyExc_RuntimeError;
    switch (e.kind()) {
      case lmk::ErrorKind::Type: type = PyExc_TypeError; break;
      case lmk::ErrorKind::Value: type = PyExc_ValueError; break;
      case lmk::ErrorKind::Index: type = PyExc_IndexError; break;
      case lmk::ErrorKind::Runtime: break;
    }
    PyErr_SetString(type, e.what());
  }
}

py::dict build_info() {
  py::dict info;
  info["version"] = LMK_VERSION;
  info["build_type"] = LMK_BUILD_TYPE;
#ifdef LMK_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["cuda_architectures"] = LMK_CUDA_ARCHS;
#ifdef LMK_WITH_SM90_GEMM
  info["hopper_kernels"] = true;
#else
  info["hopper_kernels"] = false;
#endif
  info["sanitize"] = LMK_SANITIZE;
  info["compiler"] = __VERSION__;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lmkernels native kernels (C++17/CUDA). Use the torch ops in lmkernels.ops.";
  py::register_exception_translator(translate_errors);
  m.def("build_info", &build_info, "Version, build type, CUDA support and architectures, Hopper (CUTLASS) kernels, sanitizers, compiler.");
  m.def("simd_level", &lmk::simd_level, "The SIMD level the CPU kernels run at on this machine.");
  m.def("num_threads", &lmk::num_threads, "Threads used by the CPU kernels.");
  // Without the GIL: a resize waits for a kernel that another thread is running.
  m.def("set_num_threads", &lmk::set_num_threads, py::arg("n"), py::call_guard<py::gil_scoped_release>(),
        "Set the threads used by the CPU kernels.");
  m.def("parallel_backend", &lmk::parallel_backend, "Whose threads the CPU kernels run on.");
  m.def("retag_float8", &lmk::bindings::retag_float8, py::arg("capsule"), py::arg("code"),
        "A DLPack capsule of uint8 bytes relabelled, in place, as DLPack float8 (10: e4m3fn, 12: e5m2).");
  lmk::bindings::register_sparse(m);
  lmk::bindings::register_text_words(m);
  lmk::bindings::register_text_patterns(m);
  lmk::bindings::register_multilabel_bce(m);
  lmk::bindings::register_dictionary_score(m);
  lmk::bindings::register_text_encode(m);
  lmk::bindings::register_divergence(m);
  lmk::bindings::register_quant(m);
  lmk::bindings::register_fp8(m);
  lmk::bindings::register_fp8_gemm(m);
  lmk::bindings::register_word_connector(m);
  lmk::bindings::register_hat_split(m);
  lmk::bindings::register_attention(m);
  lmk::bindings::register_memory_cache(m);
}
