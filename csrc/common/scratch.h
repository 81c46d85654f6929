// Reusable memory for large temporaries (the FP8 GEMM's decoded operands) and large CPU outputs
// (a dense embedding gradient; see bindings/memory_cache.cpp).
//
// A fresh multi-megabyte allocation costs a page fault and a zeroed page per 4 KiB (or 2 MiB) on
// first touch: 1 ms for each 8 MiB operand panel of a 2048^3 FP8 GEMM, and 14 of the 25 ms that a
// fresh 128 MiB embedding gradient took to fill on Zen 4. Released blocks are therefore kept, up to
// scratch_cache_limit() bytes in all (the oldest go first), and handed to the next request they
// fit; larger ones go back to the system. Thread-safe.
#pragma once
#include <cstddef>
#include <memory>

namespace lmk {

struct ScratchRelease {
  size_t capacity;
  void operator()(std::byte* data) const;
};
using Scratch = std::unique_ptr<std::byte[], ScratchRelease>;

// At least `bytes` bytes, 64-byte aligned, uninitialised; returned to the cache when destroyed.
Scratch acquire_scratch(size_t bytes);

// The most bytes that released blocks may hold (default 512 MiB); lowering it frees the oldest.
size_t scratch_cache_limit();
void set_scratch_cache_limit(size_t bytes);

// Bytes held now by released blocks.
size_t scratch_cached_bytes();

}  // namespace lmk
