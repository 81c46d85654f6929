// Argument checks of the fp8 cast, shared by the CPU and CUDA paths.
#include "fp8/fp8_cast.h"

namespace lmk::fp8 {

void check_cast(const TensorView& x, const TensorView& out, const CastOptions& options) {
  check_dtype(x, "x", {DType::Float32, DType::BFloat16, DType::Float16});
  check_dtype(out, "out", {DType::Float8E4M3FN, DType::Float8E5M2});
  if (options.rounding != Rounding::Nearest && options.rounding != Rounding::Stochastic)
    fail(ErrorKind::Value, "rounding: expected nearest (0) or stochastic (1), got ", int(options.rounding));
  if (options.transpose) {
    check_ndim(x, "x", 2);
    check_unit_last_stride(x, "x");
    check_ndim(out, "out", 2);
    check_size(out, "out", 0, x.size(1));
    check_size(out, "out", 1, x.size(0));
  } else {
    if (x.ndim == 2) {
      check_unit_last_stride(x, "x");
    } else if (!x.is_contiguous()) {
      fail(ErrorKind::Value, "x: expected a contiguous tensor, or a 2-D one with unit stride in the last dimension");
    }
    check_ndim(out, "out", x.ndim);
    for (int d = 0; d < x.ndim; ++d) check_size(out, "out", d, x.size(d));
  }
  check_contiguous(out, "out");
  check_writable(out, "out");
  check_same_device(out, "out", x, "x");
}

MatrixShape matrix_shape(const TensorView& x) {
  if (x.ndim == 0) return {1, 1, 1};
  const int64_t cols = x.size(-1);
  if (x.ndim == 2) return {x.size(0), cols, x.size(0) > 1 ? x.stride(0) : cols};
  return {cols == 0 ? 0 : x.numel() / cols, cols, cols};
}

}  // namespace lmk::fp8
