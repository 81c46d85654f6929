// The FP8 GEMM's epilogue on the CPU: one row of a tile's fp32 accumulators to the output,
//   dst[j] = round_out(fl(fl(alpha * acc[j]) + bias[j]))   (bias null: no addition),
// with the two fp32 roundings that the CUDA kernels spell out (__fmul_rn, __fadd_rn). Its own file
// so that it alone is compiled without floating-point contraction (CMakeLists.txt): the
// micro-kernels keep their fused multiply-adds, which round FP8 products exactly either way.
#pragma once
#include <cstdint>

#include "common/numeric.h"

namespace lmk::fp8 {

void store_output_row(float* dst, const float* acc, int64_t columns, float alpha, const float* bias);
void store_output_row(bfloat16* dst, const float* acc, int64_t columns, float alpha, const float* bias);
void store_output_row(float16* dst, const float* acc, int64_t columns, float alpha, const float* bias);

}  // namespace lmk::fp8
