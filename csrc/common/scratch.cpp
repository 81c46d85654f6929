#include "common/scratch.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#include "common/memory.h"

namespace lmk {
namespace {

struct Block {
  std::byte* data;
  size_t capacity;
};

struct ScratchCache {
  std::mutex mutex;
  std::vector<Block> free;  // most recently released last
  size_t cached_bytes = 0;
};

ScratchCache& cache() {
  static ScratchCache* instance = new ScratchCache;  // never destroyed: blocks may be released at exit
  return *instance;
}

constexpr size_t kAlignment = 64;

}  // namespace

void ScratchRelease::operator()(std::byte* data) const {
  ScratchCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (capacity > kScratchCacheBytes) return std::free(data);
  while (c.cached_bytes + capacity > kScratchCacheBytes) {  // the oldest blocks make room
    c.cached_bytes -= c.free.front().capacity;
    std::free(c.free.front().data);
    c.free.erase(c.free.begin());
  }
  c.free.push_back({data, capacity});
  c.cached_bytes += capacity;
}

Scratch acquire_scratch(size_t bytes) {
  const size_t capacity = std::max<size_t>(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
  {
    ScratchCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    // The smallest cached block that fits and wastes at most half of itself.
    auto best = c.free.end();
    for (auto it = c.free.begin(); it != c.free.end(); ++it)
      if (it->capacity >= capacity && it->capacity / 2 <= capacity && (best == c.free.end() || it->capacity < best->capacity))
        best = it;
    if (best != c.free.end()) {
      const Block block = *best;
      c.free.erase(best);
      c.cached_bytes -= block.capacity;
      return Scratch(block.data, ScratchRelease{block.capacity});
    }
  }
  auto* data = static_cast<std::byte*>(std::aligned_alloc(kAlignment, capacity));
  if (!data) throw std::bad_alloc();
  advise_huge_pages(data, capacity);
  return Scratch(data, ScratchRelease{capacity});
}

}  // namespace lmk
