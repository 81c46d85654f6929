// Argument checks of the FP8 GEMM, shared by the CPU and CUDA paths.
#include "fp8/fp8_gemm.h"

namespace lmk::fp8 {
namespace {

void check_operand(const TensorView& t, const char* name, bool may_be_transposed) {
  check_dtype(t, name, {DType::Float8E4M3FN, DType::Float8E5M2});
  check_ndim(t, name, 2);
  if (may_be_transposed && stored_transposed(t)) {
    if (t.size(0) > 1 && t.stride(0) != 1)
      fail(ErrorKind::Value, name, ": expected unit stride in one dimension, got strides (", t.stride(0), ", ",
           t.stride(1), ")");
    if (t.stride(1) < 0) fail(ErrorKind::Value, name, ": negative strides are not supported");
    return;
  }
  check_unit_last_stride(t, name);
}

}  // namespace

void check_gemm(const TensorView& a, const TensorView& b, const OptionalView& bias, const TensorView& out) {
  check_operand(a, "a", a.device == DeviceType::CPU);
  check_operand(b, "b", a.device == DeviceType::CPU);
  if (a.dtype == DType::Float8E5M2 && b.dtype == DType::Float8E5M2)
    fail(ErrorKind::Value, "a, b: float8_e5m2 x float8_e5m2 is not supported (FP8 hardware has no E5M2 x E5M2 "
         "GEMM); make at least one operand float8_e4m3fn");
  if (b.size(1) != a.size(1))
    fail(ErrorKind::Value, "b: expected K = ", a.size(1), " columns (those of a ", shape_string(a), "), got shape ",
         shape_string(b));
  check_same_device(b, "b", a, "a");
  check_dtype(out, "out", {DType::Float32, DType::BFloat16, DType::Float16});
  check_ndim(out, "out", 2);
  check_size(out, "out", 0, a.size(0));
  check_size(out, "out", 1, b.size(0));
  check_contiguous(out, "out");
  check_writable(out, "out");
  check_same_device(out, "out", a, "a");
  if (bias) {
    check_dtype(*bias, "bias", {DType::Float32});
    check_ndim(*bias, "bias", 1);
    check_size(*bias, "bias", 0, b.size(0));
    check_contiguous(*bias, "bias");
    check_same_device(*bias, "bias", a, "a");
  }
}

}  // namespace lmk::fp8
