// Scale-free FP8 GEMM (u-muP, specs/umup_dtm.md 2.2, 2.3, 4):
//
//   acc[m, n] = sum_{k = 0 .. K-1} decode(A[m, k]) * decode(B[n, k])      (fp32, k in increasing order)
//   D[m, n]   = round_out(fl(fl(alpha * acc[m, n]) + bias[n]))             (bias optional; fp32 math)
//
// A [M, K] and B [N, K] hold float8_e4m3fn or float8_e5m2 bytes (E5M2 x E5M2 is rejected, as FP8
// tensor cores do not support it). Every product of two FP8 values is exact in fp32 (at most 4 + 4
// significand bits, exponents within fp32's normal range), so the only roundings are those of the
// running sum, which starts at +0 and adds the products one k at a time in increasing k, then one
// rounding each for alpha and bias, and one rounding (nearest-even) to the output dtype. The order
// is the same on the CPU and the GPU and for any thread count, so results are bitwise reproducible
// and CPU and CUDA agree bit for bit. NaN and inf inputs propagate by IEEE rules (inf * 0 = NaN).
//
// A and B have unit stride inside a row and any non-negative row stride (on the CPU either may be
// stored transposed instead, see stored_transposed); bias is contiguous fp32
// [N]; out is a contiguous [M, N] float32, bfloat16 or float16. alpha is applied in fp32.
// The CPU path decodes both operands once into scratch panels, rows and columns padded to its
// micro-kernel: bf16 (2 (M + N) K bytes, as torch's a.bfloat16() and b.bfloat16()) on CPUs with
// AVX512_BF16 or AMX, fp32 (4 (M + N) K bytes) elsewhere; the two sequential kernels give bitwise
// equal results.
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/tensor_view.h"

namespace lmk::fp8 {

// On the CPU an operand may also be stored transposed: unit stride between its rows and any stride
// between columns (b = w.t() of a row-major w [K, N]); the kernels decode it so directly. CUDA takes
// row-major operands only.
inline bool stored_transposed(const TensorView& t) { return t.size(1) > 1 && t.stride(1) != 1; }

// Shapes, dtypes, devices and layouts of the arguments, including the format pair.
void check_gemm(const TensorView& a, const TensorView& b, const OptionalView& bias, const TensorView& out);

// ---- CPU (blocked over M, N and K; output tiles in parallel) ------------------------------------
// exact_order: the sequential kernels (AVX512_BF16 pairs or fp32), summing in the order above.
// Otherwise, on CPUs with AMX-BF16, the tile kernel (fp8_gemm_amx.cpp), whose 32-deep steps sum in
// the tile unit's order; the sequential kernels elsewhere.
void gemm_cpu(const TensorView& a, const TensorView& b, float alpha, const OptionalView& bias,
              const TensorView& out, bool exact_order);
// The kernel gemm_cpu runs on this CPU (LMK_FP8_GEMM_CPU=fp32 forces Fp32; exact_order never gets
// Amx), and its name for lmkernels.info(): "amx", "avx512_bf16" or "fp32".
enum class CpuKernel { Amx, Avx512Bf16, Fp32 };
CpuKernel cpu_kernel(bool exact_order);
const char* cpu_kernel_name(bool exact_order);
#if defined(__x86_64__) && defined(__GNUC__)
bool cpu_has_bf16_pairs();  // AVX-512 F, BW, VL and BF16
bool cpu_has_amx();         // AMX-TILE and AMX-BF16 (and the OS's permission), with cpu_has_bf16_pairs()
void gemm_amx(const TensorView& a, const TensorView& b, float alpha, const float* bias, const TensorView& out);
#endif

// ---- CUDA (on the given stream) -----------------------------------------------------------------
// exact_order: the portable shared-memory tiled kernel (any architecture), summing in the order
// above, bitwise equal to the CPU. Otherwise the fastest kernel for the device: on compute
// capability 9.0 with aligned operands a CUTLASS tensor-core kernel (fp8_gemm_sm90.cu picks its tile
// configuration by shape), whose sums run in another order and precision; the portable kernel
// everywhere else.
#ifdef LMK_WITH_CUDA
void gemm_cuda(const TensorView& a, const TensorView& b, float alpha, const OptionalView& bias,
               const TensorView& out, bool exact_order, void* stream);
#endif
#ifdef LMK_WITH_SM90_GEMM
// Runs an sm_90a kernel and returns true, or returns false (nothing launched) when the device is
// not compute capability 9.0 or the operands miss its TMA alignment (K and N multiples of 16,
// 16-byte aligned pointers and row strides). A malformed LMK_FP8_GEMM_SM90 is an ErrorKind::Value.
bool gemm_sm90(const TensorView& a, const TensorView& b, float alpha, const OptionalView& bias,
               const TensorView& out, void* stream);
#endif

}  // namespace lmk::fp8
