// FP8 GEMM on Hopper tensor cores (sm_90a), built from CUTLASS 3 collectives (see fp8_gemm.h).
//
// D = alpha * (A @ B^T) + bias with A [M, K] row-major ("T") and B [N, K] row-major, i.e. K-major
// B ("N"): the one operand layout FP8 WGMMA reads from shared memory without a transpose. TMA loads
// 128 x 128 x 128 tiles into a multi-stage pipeline; two consumer warp groups share each tile
// (cooperative schedule) over a persistent grid of output tiles, with clusters of two CTAs along
// N multicasting A. The accumulation is fp32, but not in the sequential order of the portable
// kernel: a tensor core sums each 32-deep MMA in its own order and precision, and the
// non-"FastAccum" schedule promotes those partial sums into fp32 registers after every four MMAs
// (128 of K). The epilogue computes alpha * acc + bias in fp32 (bias broadcast along M, a null bias
// reads as zeros) and rounds once to the output type.
//
// TMA needs 16-byte aligned base addresses and row strides, so this kernel takes only K and N that
// are multiples of 16 with aligned operands; gemm_sm90 says false for anything else and the caller
// runs the portable kernel. Built only for sm_90a (its own CMake object library), and run only on
// compute capability 9.0 devices.
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "fp8/fp8_gemm.h"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace lmk::fp8 {
namespace {

using namespace cute;

constexpr int kTmaAlignmentBytes = 16;

// A CUTLASS (rows, unit, batch) stride for one batch of rows `row_stride` elements apart.
template <typename Stride>
Stride rows(int64_t row_stride) {
  Stride stride{};
  get<0>(stride) = row_stride;
  get<2>(stride) = 0;
  return stride;
}

template <typename ElementA, typename ElementB, typename ElementD>
struct HopperGemm {
  using TileShape = Shape<_128, _128, _128>;
  using ClusterShape = Shape<_1, _2, _1>;
  static constexpr int kAlignmentAB = kTmaAlignmentBytes;  // elements of one byte
  static constexpr int kAlignmentD = kTmaAlignmentBytes / int(sizeof(ElementD));

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, cutlass::layout::RowMajor, kAlignmentD,  // no source C
      ElementD, cutlass::layout::RowMajor, kAlignmentD, cutlass::epilogue::TmaWarpSpecializedCooperative,
      cutlass::epilogue::fusion::LinCombPerColBias<ElementD, float, float, ElementD, float>>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, cutlass::layout::RowMajor, kAlignmentAB,
      ElementB, cutlass::layout::ColumnMajor, kAlignmentAB, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<int(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static void run(const TensorView& a, const TensorView& b, float alpha, const float* bias, const TensorView& out,
                  cudaStream_t stream) {
    const int m = int(a.size(0)), n = int(b.size(0)), k = int(a.size(1));
    // A, B and D all have unit stride along their second mode; their rows may be padded.
    const auto stride_a = rows<typename Kernel::StrideA>(a.stride(0));
    const auto stride_b = rows<typename Kernel::StrideB>(b.stride(0));
    const auto stride_d = rows<typename Kernel::StrideD>(n);

    typename Device::Arguments arguments{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {a.as<const ElementA>(), stride_a, b.as<const ElementB>(), stride_b},
        {{}, nullptr, stride_d, out.as<ElementD>(), stride_d}};
    arguments.epilogue.thread.alpha = alpha;
    arguments.epilogue.thread.beta = 0.f;
    arguments.epilogue.thread.bias_ptr = bias;
    arguments.hw_info.device_id = a.device_index;
    arguments.hw_info.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(a.device_index);

    Device gemm;
    if (gemm.can_implement(arguments) != cutlass::Status::kSuccess)
      fail(ErrorKind::Runtime, "fp8_gemm: CUTLASS rejected an aligned problem [", m, ", ", n, ", ", k, "]");
    // The data-parallel persistent schedule needs no workspace; refuse rather than allocate one.
    if (Device::get_workspace_size(arguments) != 0)
      fail(ErrorKind::Runtime, "fp8_gemm: the sm_90a kernel unexpectedly asked for a workspace");
    if (gemm.initialize(arguments, nullptr, stream) != cutlass::Status::kSuccess ||
        gemm.run(stream) != cutlass::Status::kSuccess)
      fail(ErrorKind::Runtime, "fp8_gemm: the sm_90a kernel failed to launch");
    LMK_CUDA_CHECK(cudaGetLastError());
  }
};

template <typename ElementA, typename ElementB>
void run_for_output(const TensorView& a, const TensorView& b, float alpha, const float* bias, const TensorView& out,
                    cudaStream_t stream) {
  switch (out.dtype) {
    case DType::Float32: return HopperGemm<ElementA, ElementB, float>::run(a, b, alpha, bias, out, stream);
    case DType::BFloat16:
      return HopperGemm<ElementA, ElementB, cutlass::bfloat16_t>::run(a, b, alpha, bias, out, stream);
    default: return HopperGemm<ElementA, ElementB, cutlass::half_t>::run(a, b, alpha, bias, out, stream);
  }
}

bool aligned(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % kTmaAlignmentBytes == 0; }

bool is_hopper(int device) {
  int major = 0, minor = 0;
  LMK_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  LMK_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major == 9 && minor == 0;  // sm_90a code runs on exactly 9.0
}

}  // namespace

bool gemm_sm90(const TensorView& a, const TensorView& b, float alpha, const OptionalView& bias,
               const TensorView& out, void* stream) {
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const bool fits = m > 0 && n > 0 && k > 0 && m <= kIntMax && n <= kIntMax && k <= kIntMax && k % 16 == 0 &&
                    n % 16 == 0 && a.stride(0) % kTmaAlignmentBytes == 0 && b.stride(0) % kTmaAlignmentBytes == 0 &&
                    aligned(a.data) && aligned(b.data) && aligned(out.data) && (!bias || aligned(bias->data));
  if (!fits) return false;
  CudaDeviceGuard guard(a.device_index);
  if (!is_hopper(a.device_index)) return false;
  const float* bias_values = bias ? bias->as<const float>() : nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  if (a.dtype == DType::Float8E4M3FN && b.dtype == DType::Float8E4M3FN)
    run_for_output<cutlass::float_e4m3_t, cutlass::float_e4m3_t>(a, b, alpha, bias_values, out, s);
  else if (a.dtype == DType::Float8E4M3FN)
    run_for_output<cutlass::float_e4m3_t, cutlass::float_e5m2_t>(a, b, alpha, bias_values, out, s);
  else
    run_for_output<cutlass::float_e5m2_t, cutlass::float_e4m3_t>(a, b, alpha, bias_values, out, s);
  return true;
}

}  // namespace lmk::fp8
