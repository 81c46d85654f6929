// Memory hints for large CPU outputs.
#pragma once
#include <cstddef>

namespace lmk {

// Asks the kernel to back the 2 MiB-aligned interior of [data, data + bytes) with transparent huge
// pages before it is first written. A fresh multi-megabyte output (a dense embedding gradient, say)
// otherwise costs one page fault per 4 KiB, which can take longer than the kernel that fills it.
// Only a hint: a no-op for small buffers, on systems without THP, and where it is refused.
void advise_huge_pages(void* data, size_t bytes);

// Faults in every page of [data, data + bytes) now, on all threads, by writing a zero byte to each
// 4 KiB; only for a buffer whose every byte the caller is about to overwrite. The kernel zeroes a
// fresh page when it is first touched, through the cache: done in one pass up front, that costs the
// same, whereas faulting page by page inside a kernel keeps evicting the kernel's cached inputs.
void prefault_for_overwrite(void* data, size_t bytes);

}  // namespace lmk
