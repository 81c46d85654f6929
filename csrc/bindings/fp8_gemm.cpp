// Bindings of csrc/fp8/fp8_gemm: import the arguments, check them, release the GIL, dispatch on device.
#include <pybind11/pybind11.h>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "fp8/fp8_gemm.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

void fp8_gemm(py::handle a, py::handle b, double alpha, py::handle bias, py::handle out, bool exact_order,
              uintptr_t stream) {
  TensorImports in;
  const TensorView av = in.require(a, "a");
  const TensorView bv = in.require(b, "b");
  const OptionalView biasv = in.optional(bias, "bias");
  const TensorView o = in.require(out, "out");
  fp8::check_gemm(av, bv, biasv, o);
  py::gil_scoped_release release;
  if (av.device == DeviceType::CPU) return fp8::gemm_cpu(av, bv, float(alpha), biasv, o, exact_order);
#ifdef LMK_WITH_CUDA
  fp8::gemm_cuda(av, bv, float(alpha), biasv, o, exact_order, reinterpret_cast<void*>(stream));
#else
  (void)exact_order;
  (void)stream;
#endif
}

}  // namespace

void register_fp8_gemm(py::module_& m) {
  m.def("fp8_gemm", &fp8_gemm, py::arg("a"), py::arg("b"), py::arg("alpha"), py::arg("bias"), py::arg("out"),
        py::arg("exact_order") = false, py::arg("stream") = 0,
        "out = round(fp32(alpha) * (a @ b^T) + bias): FP8 a [M, K], b [N, K], fp32 sums; in increasing k with "
        "exact_order, else with the device's fastest kernel (AMX tiles or tensor cores sum in their own order).");
  m.def("fp8_gemm_cpu_kernel", &fp8::cpu_kernel_name, py::arg("exact_order") = false,
        "The CPU kernel of fp8_gemm on this machine: amx, avx512_bf16 or fp32.");
}

}  // namespace lmk::bindings
