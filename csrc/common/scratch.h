// Reusable scratch memory for kernels with large temporaries (the FP8 GEMM's decoded operands).
//
// A fresh multi-megabyte allocation costs a page fault and a zeroed page per 4 KiB (or 2 MiB) on
// first touch: 1 ms for each 8 MiB operand panel of a 2048^3 FP8 GEMM, 2% of its time on Zen 4.
// Released blocks are therefore kept, up to kScratchCacheBytes in all, and handed to the next
// request they fit; larger ones go back to the system. Thread-safe.
#pragma once
#include <cstddef>
#include <memory>

namespace lmk {

inline constexpr size_t kScratchCacheBytes = size_t(64) << 20;

struct ScratchRelease {
  size_t capacity;
  void operator()(std::byte* data) const;
};
using Scratch = std::unique_ptr<std::byte[], ScratchRelease>;

// At least `bytes` bytes, 64-byte aligned, uninitialised; returned to the cache when destroyed.
Scratch acquire_scratch(size_t bytes);

}  // namespace lmk
