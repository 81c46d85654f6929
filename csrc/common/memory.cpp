#include "common/memory.h"

#include <algorithm>
#include <cstdint>

#include "common/parallel.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace lmk {

void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

void prefault_for_overwrite(void* data, size_t bytes) {
  if (bytes == 0) return;
  constexpr uintptr_t kPage = 4096;
  constexpr int64_t kPagesPerChunk = 512;  // 2 MiB: one huge page where granted
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data), end = begin + bytes;
  const uintptr_t first_page = begin & ~(kPage - 1);
  const int64_t pages = int64_t((end - first_page + kPage - 1) / kPage);
  parallel_for(0, pages, kPagesPerChunk, [&](int64_t lo, int64_t hi) {
    for (int64_t page = lo; page < hi; ++page) {
      const uintptr_t byte = std::max(begin, first_page + uintptr_t(page) * kPage);  // the first page may start early
      *reinterpret_cast<volatile char*>(byte) = 0;
    }
  });
}

}  // namespace lmk
