// Saturating casts of float32 / bfloat16 / float16 tensors to OCP fp8 (E4M3FN or E5M2), with
// round-to-nearest-even or seeded stochastic rounding and an optional fused 2-D transpose.
// The per-element math is in fp8/fp8_convert.h.
//
// The input is read as a [rows, cols] matrix: a contiguous tensor of any shape (cols = its last
// dimension), or a 2-D tensor whose rows sit at any stride with adjacent elements. Element (r, c)
// has the index r * cols + c (its row-major position), which keys its stochastic rounding, so a
// transposed cast equals the plain cast transposed, on every device and thread count.
//   transpose = false: out (contiguous, x's shape)  out[r, c] = fp8(x[r, c])
//   transpose = true:  out (contiguous, [cols, rows]) out[c, r] = fp8(x[r, c]); x must be 2-D.
// out is float8_e4m3fn or float8_e5m2; its dtype selects the format.
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/tensor_view.h"
#include "fp8/fp8_convert.h"

namespace lmk::fp8 {

struct CastOptions {
  Rounding rounding = Rounding::Nearest;
  uint64_t seed = 0;
  bool transpose = false;
};

// Shapes, dtypes, devices and layouts of x and out, and the rounding mode.
void check_cast(const TensorView& x, const TensorView& out, const CastOptions& options);

// x as [rows, cols] with its row stride (see above); x must have passed check_cast.
struct MatrixShape {
  int64_t rows, cols, row_stride;
};
MatrixShape matrix_shape(const TensorView& x);

void cast_cpu(const TensorView& x, const TensorView& out, const CastOptions& options);

#ifdef LMK_WITH_CUDA
void cast_cuda(const TensorView& x, const TensorView& out, const CastOptions& options, void* stream);
#endif

}  // namespace lmk::fp8
