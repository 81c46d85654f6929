// Runtime SIMD dispatch for hot CPU loops. A function marked LMK_SIMD_CLONES is compiled once per
// x86-64 level (v4 = AVX-512, v3 = AVX2 + FMA + F16C, baseline) and the loader picks the best one
// for the running CPU, so one wheel is fast on new CPUs and still runs on old ones. Elsewhere
// (Arm: NEON is baseline) the compiler's own vectorisation of the plain loop is used.
#pragma once
#include <string>

// LMK_X86_64_LEVELS: 1 where functions are compiled per x86-64 level (LMK_SIMD_CLONES, and kernels
// that compile their own level-specific variant beside the clones), else 0.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define LMK_X86_64_LEVELS 1
#define LMK_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LMK_X86_64_LEVELS 0
#define LMK_SIMD_CLONES
#endif

namespace lmk {

// The level that LMK_SIMD_CLONES functions run at on this CPU: "avx512", "avx2", "neon" or "baseline".
std::string simd_level();

}  // namespace lmk
