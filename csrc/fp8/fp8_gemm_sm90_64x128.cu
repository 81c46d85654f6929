// 64 x 128 x 128 tiles, ping-pong, clusters of two CTAs along N multicasting A. The warp groups take
// turns at the tensor cores, so each one's promotion adds leave them idle; what it buys is half the
// rows per tile: no tensor-core work on the empty rows of a 128-row tile when M <= 64, and twice as
// many tiles to spread over idle SMs in small problems. The shape estimate does not choose it until
// measured (see fp8_gemm_sm90.cu); LMK_FP8_GEMM_SM90=64x128 runs it.
#include "fp8/fp8_gemm_sm90.cuh"

namespace lmk::fp8::sm90 {

const Kernel kPingpong64x128 = kernel_of<Config<64, 128, 1, 2, Pingpong>>("64x128");

}  // namespace lmk::fp8::sm90
