// 128 x 192 x 128 tiles, cooperative, clusters of two CTAs along M multicasting B, the larger
// operand tile: per FLOP, about a quarter fewer operand bytes from L2 than 128 x 128 and a fifth
// fewer through shared memory. 192 divides few problem sizes: it pays where there are many tiles
// per SM (43 cover 8192 columns with 0.8 % to spare).
#include "fp8/fp8_gemm_sm90.cuh"

namespace lmk::fp8::sm90 {

const Kernel kCooperative128x192 = kernel_of<Config<128, 192, 2, 1, Cooperative>>("128x192");

}  // namespace lmk::fp8::sm90
