// FP8 GEMM on Hopper tensor cores (sm_90a), built from CUTLASS 3 collectives (see fp8_gemm.h): the
// checks, and the choice among the kernel configurations of fp8_gemm_sm90.cuh.
//
// Every configuration loads 128-deep K tiles with TMA into a multi-stage pipeline, and runs a
// persistent grid of output tiles in clusters of two CTAs that multicast one operand's tiles. The
// accumulation is fp32, but not in the sequential order of the portable kernel: a tensor core sums
// each 32-deep MMA in its own order and precision, and the non-"FastAccum" schedule promotes those
// partial sums into fp32 registers after every four MMAs (128 of K), the same for every
// configuration. The epilogue computes alpha * acc + bias in fp32 and rounds once to the output
// type.
//
// The choice: the persistent grid runs its tiles in rounds of one per CTA, so a configuration takes
// about (rounds) x (tile area) / (its throughput per SM). Wide tiles move fewer operand bytes per
// FLOP but leave SMs idle, or a large last round, where a problem has few tiles; the estimate picks
// the cheapest. K scales every configuration alike and does not enter. LMK_FP8_GEMM_SM90 overrides
// the choice (see forced_choice).
//
// TMA needs 16-byte aligned base addresses and row strides, so these kernels take only K and N that
// are multiples of 16 with aligned operands; gemm_sm90 says false for anything else and the caller
// runs the portable kernel. Built only for sm_90a (its own CMake object library), and run only on
// compute capability 9.0 devices.
#include "fp8/fp8_gemm_sm90.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>

#include "common/cuda_utils.cuh"
#include "fp8/fp8_gemm.h"

namespace lmk::fp8 {
namespace {

using sm90::Kernel;

// Every configuration (LMK_FP8_GEMM_SM90 names them by tile), with its throughput per SM relative
// to 128 x 128 once every SM has work, as measured on an H100 SXM (`lmk bench --device cuda --filter
// fp8_gemm`, the cases marked [sm90 <name>] at 8192^3, 2026-11-27: 1.21 / 1.10 / 1.08 ms; the wide
// tiles move fewer operand bytes per FLOP).
struct Candidate {
  const Kernel& kernel;
  double speed;
};
const Candidate kCandidates[] = {
    {sm90::kCooperative128x128, 1.0},
    {sm90::kCooperative128x192, 1.07},
    {sm90::kCooperative128x208, 1.12},
};

// CTAs along one mode: its tiles, rounded up to whole clusters as CUTLASS launches them.
int64_t ctas(int64_t extent, int tile, int cluster) { return round_up(ceil_div(extent, tile), cluster); }

double cost(const Candidate& c, int64_t m, int64_t n, int sm_count) {
  const Kernel& k = c.kernel;
  const int cluster = k.cluster_m * k.cluster_n;
  const int64_t tiles = ctas(m, k.tile_m, k.cluster_m) * ctas(n, k.tile_n, k.cluster_n);
  const int64_t rounds = ceil_div(tiles, std::max(sm_count / cluster * cluster, cluster));
  return double(rounds) * k.tile_m * k.tile_n / c.speed;
}

const Kernel& cheapest(int64_t m, int64_t n, int sm_count) {
  const Candidate* best = &kCandidates[0];
  for (const Candidate& c : kCandidates)
    if (cost(c, m, n, sm_count) < cost(*best, m, n, sm_count)) best = &c;
  return best->kernel;
}

// The persistent scheduler's swizzle: consecutive CTAs take tiles in runs of 2, 4 or 8 along one
// mode, so the tiles in flight share operand rows in L2 rather than sweep one whole operand (one
// row of 128 x 128 tiles at 8192^3 reads all 64 MiB of B, more than L2 holds). CUTLASS rounds both
// CTA counts up to a multiple of swizzle x cluster and computes the padding as empty tiles, so only
// a swizzle that pads nothing is taken.
int swizzle_for(const Kernel& k, int64_t m, int64_t n) {
  using Params = cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90Params;
  const int64_t ctas_m = ctas(m, k.tile_m, k.cluster_m), ctas_n = ctas(n, k.tile_n, k.cluster_n);
  for (int swizzle : {8, 4, 2}) {
    const int applied = 1 << Params::get_log_swizzle_size(int(ctas_m), int(ctas_n), swizzle);
    if (applied == swizzle && ctas_m % (swizzle * k.cluster_m) == 0 && ctas_n % (swizzle * k.cluster_n) == 0)
      return swizzle;
  }
  return 1;
}

struct Choice {
  const Kernel* kernel;  // null: the cheapest
  int swizzle;           // 0: swizzle_for's
};

// LMK_FP8_GEMM_SM90=<configuration>[:<swizzle>] (e.g. "128x208", "128x128:1" or "auto:1") runs that
// configuration, or the estimate's choice for "auto", with that swizzle, or swizzle_for's without
// one; unset or empty is "auto". Read on every call, so that tests and benchmarks can run every
// configuration in one process.
Choice forced_choice() {
  const char* value = std::getenv("LMK_FP8_GEMM_SM90");
  const std::string_view setting = value ? value : "";
  if (setting.empty()) return {nullptr, 0};
  const size_t colon = setting.find(':');
  const std::string_view name = setting.substr(0, colon);
  Choice choice{nullptr, 0};
  bool known = name == "auto";
  std::string names = "auto";
  for (const Candidate& c : kCandidates) {
    if (name == c.kernel.name) {
      choice.kernel = &c.kernel;
      known = true;
    }
    names += std::string(", ") + c.kernel.name;
  }
  if (colon != std::string_view::npos) {
    const std::string_view swizzle = setting.substr(colon + 1);
    if (swizzle == "1" || swizzle == "2" || swizzle == "4" || swizzle == "8")
      choice.swizzle = swizzle[0] - '0';
    else
      known = false;
  }
  if (!known)
    fail(ErrorKind::Value, "LMK_FP8_GEMM_SM90: expected one of ", names,
         ", optionally followed by :1, :2, :4 or :8, got '", setting, "'");
  return choice;
}

bool aligned(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % sm90::kTmaAlignmentBytes == 0; }

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
  constexpr int64_t kAlignment = sm90::kTmaAlignmentBytes;
  const bool fits = m > 0 && n > 0 && k > 0 && m <= kIntMax && n <= kIntMax && k <= kIntMax && k % 16 == 0 &&
                    n % 16 == 0 && a.stride(0) % kAlignment == 0 && b.stride(0) % kAlignment == 0 &&
                    aligned(a.data) && aligned(b.data) && aligned(out.data) && (!bias || aligned(bias->data));
  if (!fits) return false;
  CudaDeviceGuard guard(a.device_index);
  if (!is_hopper(a.device_index)) return false;
  int sm_count = 0;
  LMK_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, a.device_index));
  const Choice forced = forced_choice();
  const Kernel& kernel = forced.kernel ? *forced.kernel : cheapest(m, n, sm_count);
  const int swizzle = forced.swizzle ? forced.swizzle : swizzle_for(kernel, m, n);
  kernel.run({a, b, alpha, bias ? bias->as<const float>() : nullptr, out, sm_count, swizzle,
              static_cast<cudaStream_t>(stream)});
  return true;
}

}  // namespace lmk::fp8
