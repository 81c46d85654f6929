// int8 absmax quantisation per output channel (one scale per row of a weight matrix W [out, in]):
//
//   scale_r    = max_c |W[r, c]| / 127                                  (fp32, computed in fp32)
//   q[r, c]    = clamp(round_half_even(W[r, c] / scale_r), -127, 127)   (int8; a divisor of 1 where
//                                                                         scale_r = 0, so such rows are 0)
//   W'[r, c]   = float(q[r, c]) * scale_r, rounded once to the dtype of W'
//
// The division is a true fp32 division (not a multiplication by 1 / scale_r), so that the torch
// composition round(W.float() / scale[:, None]).clamp(-127, 127) reproduces q bit for bit. A row whose
// absmax / 127 underflows to 0 (all zeros, or only tiny subnormals) has scale 0 and quantises to 0.
// W' of a value that rounds to 0 is +0, as it is through the int8 round trip.
//
// Non-finite weights are rejected: a row holding inf or NaN has no meaningful absmax scale (inf would
// turn the whole row into NaN). Such a row is left unwritten in every output; the CPU kernels raise
// ValueError naming `weight` and the first such row, the CUDA kernels set kNonFinite in error_flag.
//
// Matrices are [rows, cols] with unit stride inside a row and any non-negative row stride; W' may be
// W itself (in place) but must not otherwise overlap it. Values are float32, bfloat16 or float16.
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/tensor_view.h"

namespace lmk::quant {

// Shapes, dtypes, devices, layouts and writability of each entry point's arguments.
void check_quantize(const TensorView& weight, const TensorView& q, const TensorView& scale);
void check_dequantize(const TensorView& q, const TensorView& scale, const TensorView& out);
void check_fake_quantize(const TensorView& weight, const TensorView& out, const TensorView& scale);

// ---- CPU (rows in parallel) ------------------------------------------------------------------
// weight -> q int8 [rows, cols], scale fp32 [rows].
void quantize_cpu(const TensorView& weight, const TensorView& q, const TensorView& scale);
// q, scale -> out [rows, cols] (float32, bfloat16 or float16).
void dequantize_cpu(const TensorView& q, const TensorView& scale, const TensorView& out);
// weight -> out = W' (same dtype, may be weight itself) and scale, in one pass over each row.
void fake_quantize_cpu(const TensorView& weight, const TensorView& out, const TensorView& scale);

// ---- CUDA (one block per row, on the given stream) -------------------------------------------
constexpr int32_t kNonFinite = 1;  // error_flag bit: some row of weight holds inf or NaN

#ifdef LMK_WITH_CUDA
void quantize_cuda(const TensorView& weight, const TensorView& q, const TensorView& scale,
                   const TensorView& error_flag, void* stream);
void dequantize_cuda(const TensorView& q, const TensorView& scale, const TensorView& out, void* stream);
void fake_quantize_cuda(const TensorView& weight, const TensorView& out, const TensorView& scale,
                        const TensorView& error_flag, void* stream);
#endif

}  // namespace lmk::quant
