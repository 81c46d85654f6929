// 128 x 128 x 128 tiles, cooperative, clusters of two CTAs along N multicasting A: the smallest
// cooperative tile, for problems too small to give every SM one of the wider tiles.
#include "fp8/fp8_gemm_sm90.cuh"

namespace lmk::fp8::sm90 {

const Kernel kCooperative128x128 = kernel_of<Config<128, 128, 1, 2, Cooperative>>("128x128");

}  // namespace lmk::fp8::sm90
