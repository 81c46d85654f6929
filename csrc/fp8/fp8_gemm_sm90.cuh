// The CUTLASS kernels of the Hopper FP8 GEMM (fp8_gemm_sm90.cu picks one per problem).
//
// A configuration is a CTA tile, a cluster shape and a schedule. Each lives in its own translation
// unit, fp8_gemm_sm90_<tile>.cu, which instantiates its nine kernels (three format pairs times
// three output types) through run_config below: CUTLASS instantiations compile slowly, and separate
// files compile in parallel.
//
// Every configuration runs the same promoting ("non-FastAccum") mainloop with 128-deep K tiles, so
// each output element sees the same sums in the same order: the tensor core's partial sums over 128
// of K are added into fp32 registers. That doubles the accumulator registers, which is what bounds
// the tile: a consumer warp group owning R rows of an N-wide tile holds 2 R N / 128 accumulators per
// thread. 128 x 208 cooperative tiles (R = 64) compile without spills; 128 x 224, 128 x 256 and
// 256 x 128 cooperative and 64 x 256 ping-pong tiles spill, and would run from local memory.
#pragma once

// The 128 x 208 tile needs WGMMA's n208 shape, which CuTe declares only on request. Every file of
// this GEMM includes this header before any CuTe header, so all see the same declarations.
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED

#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/dtype.h"
#include "common/tensor_view.h"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace lmk::fp8::sm90 {

constexpr int kTmaAlignmentBytes = 16;

// One problem that fp8_gemm_sm90.cu has checked: FP8 format pair, TMA alignment, sizes within int.
struct Problem {
  const TensorView& a;
  const TensorView& b;
  float alpha;
  const float* bias;  // null: no bias
  const TensorView& out;
  int sm_count;
  int swizzle;  // tiles along the persistent scheduler's minor mode before it steps the major one
  cudaStream_t stream;
};

// A configuration as the dispatch sees it.
struct Kernel {
  const char* name;  // its value of LMK_FP8_GEMM_SM90
  int tile_m, tile_n;
  int cluster_m, cluster_n;
  void (*run)(const Problem&);
};

// Defined in fp8_gemm_sm90_<tile>.cu.
extern const Kernel kCooperative128x128, kCooperative128x192, kCooperative128x208;

using namespace cute;

// Cooperative: both consumer warp groups work on one tile, each on half its rows, so one group's
// promotion adds overlap the other's tensor-core work. (Ping-pong, each group owning whole tiles in
// turns, measured 0.72-0.78x of 128 x 128 cooperative at 4096^3 and 8192^3 on an H100, 64 x 128
// tiles, 2026-11-27: the promotion leaves the tensor cores idle.)
struct Cooperative {
  using Mainloop = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

template <int TileM, int TileN, int ClusterM, int ClusterN, class Schedule>
struct Config {
  static constexpr int kTileM = TileM, kTileN = TileN, kClusterM = ClusterM, kClusterN = ClusterN;
  using TileShape = Shape<Int<TileM>, Int<TileN>, _128>;
  using ClusterShape = Shape<Int<ClusterM>, Int<ClusterN>, _1>;
  using MainloopSchedule = typename Schedule::Mainloop;
  using EpilogueSchedule = typename Schedule::Epilogue;
};

// A CUTLASS (rows, unit, batch) stride for one batch of rows `row_stride` elements apart.
template <typename Stride>
Stride rows(int64_t row_stride) {
  Stride stride{};
  get<0>(stride) = row_stride;
  get<2>(stride) = 0;
  return stride;
}

// D = alpha * (A @ B^T) + bias with A [M, K] row-major ("T") and B [N, K] row-major, i.e. K-major
// B ("N"): the one operand layout FP8 WGMMA reads from shared memory without a transpose. The
// epilogue computes alpha * acc + bias in fp32 (bias broadcast along M, a null bias reads as zeros)
// and rounds once to the output type.
template <class Cfg, typename ElementA, typename ElementB, typename ElementD>
struct HopperGemm {
  using TileShape = typename Cfg::TileShape;
  using ClusterShape = typename Cfg::ClusterShape;
  static constexpr int kAlignmentAB = kTmaAlignmentBytes;  // elements of one byte
  static constexpr int kAlignmentD = kTmaAlignmentBytes / int(sizeof(ElementD));

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, cutlass::layout::RowMajor, kAlignmentD,  // no source C
      ElementD, cutlass::layout::RowMajor, kAlignmentD, typename Cfg::EpilogueSchedule,
      cutlass::epilogue::fusion::LinCombPerColBias<ElementD, float, float, ElementD, float>>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, cutlass::layout::RowMajor, kAlignmentAB,
      ElementB, cutlass::layout::ColumnMajor, kAlignmentAB, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<int(sizeof(typename Epilogue::SharedStorage))>,
      typename Cfg::MainloopSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static void run(const Problem& p) {
    const int m = int(p.a.size(0)), n = int(p.b.size(0)), k = int(p.a.size(1));
    // A, B and D all have unit stride along their second mode; their rows may be padded.
    const auto stride_a = rows<typename Kernel::StrideA>(p.a.stride(0));
    const auto stride_b = rows<typename Kernel::StrideB>(p.b.stride(0));
    const auto stride_d = rows<typename Kernel::StrideD>(n);

    typename Device::Arguments arguments{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {p.a.as<const ElementA>(), stride_a, p.b.as<const ElementB>(), stride_b},
        {{}, nullptr, stride_d, p.out.as<ElementD>(), stride_d}};
    arguments.epilogue.thread.alpha = p.alpha;
    arguments.epilogue.thread.beta = 0.f;
    arguments.epilogue.thread.bias_ptr = p.bias;
    arguments.hw_info.device_id = p.a.device_index;
    arguments.hw_info.sm_count = p.sm_count;
    arguments.scheduler.max_swizzle_size = p.swizzle;

    Device gemm;
    if (gemm.can_implement(arguments) != cutlass::Status::kSuccess)
      fail(ErrorKind::Runtime, "fp8_gemm: CUTLASS rejected an aligned problem [", m, ", ", n, ", ", k, "]");
    // The data-parallel persistent schedule needs no workspace; refuse rather than allocate one.
    if (Device::get_workspace_size(arguments) != 0)
      fail(ErrorKind::Runtime, "fp8_gemm: the sm_90a kernel unexpectedly asked for a workspace");
    if (gemm.initialize(arguments, nullptr, p.stream) != cutlass::Status::kSuccess ||
        gemm.run(p.stream) != cutlass::Status::kSuccess)
      fail(ErrorKind::Runtime, "fp8_gemm: the sm_90a kernel failed to launch");
    LMK_CUDA_CHECK(cudaGetLastError());
  }
};

template <class Cfg, typename ElementA, typename ElementB>
void run_for_output(const Problem& p) {
  switch (p.out.dtype) {
    case DType::Float32: return HopperGemm<Cfg, ElementA, ElementB, float>::run(p);
    case DType::BFloat16: return HopperGemm<Cfg, ElementA, ElementB, cutlass::bfloat16_t>::run(p);
    default: return HopperGemm<Cfg, ElementA, ElementB, cutlass::half_t>::run(p);
  }
}

// The configuration's kernel for the problem's format pair (E5M2 x E5M2 never gets here) and output.
template <class Cfg>
void run_config(const Problem& p) {
  if (p.a.dtype == DType::Float8E4M3FN && p.b.dtype == DType::Float8E4M3FN)
    run_for_output<Cfg, cutlass::float_e4m3_t, cutlass::float_e4m3_t>(p);
  else if (p.a.dtype == DType::Float8E4M3FN)
    run_for_output<Cfg, cutlass::float_e4m3_t, cutlass::float_e5m2_t>(p);
  else
    run_for_output<Cfg, cutlass::float_e5m2_t, cutlass::float_e4m3_t>(p);
}

template <class Cfg>
constexpr Kernel kernel_of(const char* name) {
  return {name, Cfg::kTileM, Cfg::kTileN, Cfg::kClusterM, Cfg::kClusterN, &run_config<Cfg>};
}

}  // namespace lmk::fp8::sm90
