// Integer rounding for tiles and grids, on the host and in CUDA code (non-negative operands).
#pragma once
#include <cstdint>

#include "common/numeric.h"  // LMK_HD

namespace lmk {

// ceil(a / b): the number of b-sized tiles that cover a.
LMK_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// a rounded up to a multiple of b.
LMK_HD int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

}  // namespace lmk
