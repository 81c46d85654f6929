// An FP8 GEMM operand decoded once, in parallel, into the panels a CPU micro-kernel reads: shared by
// the sequential kernels (fp8_gemm_cpu.cpp) and the AMX kernel (fp8_gemm_amx.cpp).
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/index_math.h"
#include "common/parallel.h"
#include "common/scratch.h"
#include "fp8/fp8_gemm.h"

namespace lmk::fp8 {

// Operand t [rows, K] as ceil(rows / width) panels of `panel_words` Words each, one panel per task
// so that each writes whole cache lines of its own: decode(transposed, first byte, stride, live
// rows, panel) fills panel p, whose rows start at row p * width. For a row-major operand `stride`
// is the row stride; for a transposed one (stored_transposed) the stride between k. The decoder
// writes every word, zeros included, as the scratch is not cleared.
template <typename Word, typename Decode>
Scratch decode_operand_panels(const TensorView& t, int64_t width, int64_t panel_words, const Decode& decode) {
  const int64_t rows = t.size(0), panels = ceil_div(rows, width);
  Scratch result = acquire_scratch(size_t(panels * panel_words) * sizeof(Word));
  auto* words = reinterpret_cast<Word*>(result.get());
  const auto* bytes = t.as<const uint8_t>();
  const bool transposed = stored_transposed(t);
  const int64_t row_step = transposed ? 1 : t.stride(0), stride = transposed ? t.stride(1) : t.stride(0);
  parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      decode(transposed, bytes + p * width * row_step, stride, std::min(width, rows - p * width),
             words + p * panel_words);
  });
  return result;
}

}  // namespace lmk::fp8
