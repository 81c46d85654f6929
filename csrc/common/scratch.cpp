#include "common/scratch.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif
#ifdef __GLIBC__
#include <malloc.h>
#endif

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
  size_t limit = size_t(512) << 20;

  // Frees the oldest blocks until `incoming` more bytes fit under the limit. Needs the mutex.
  void make_room(size_t incoming) {
    while (!free.empty() && cached_bytes + incoming > limit) {
      cached_bytes -= free.front().capacity;
      std::free(free.front().data);
      free.erase(free.begin());
    }
  }
};

ScratchCache& cache() {
  static ScratchCache* instance = [] {
    auto* c = new ScratchCache;  // never destroyed: blocks may be released at exit
#if defined(__unix__) || defined(__APPLE__)
    // A fork (a DataLoader worker) while another thread is inside the cache would hand the child a
    // locked mutex and a half-edited list: the fork waits for the cache instead, and the child,
    // whose only thread is the forking one, starts with a fresh mutex.
    pthread_atfork([] { cache().mutex.lock(); }, [] { cache().mutex.unlock(); },
                   [] { new (&cache().mutex) std::mutex; });
#endif
    return c;
  }();
  return *instance;
}

constexpr size_t kAlignment = 64;
constexpr size_t kHugePage = size_t(2) << 20;

}  // namespace

void ScratchRelease::operator()(std::byte* data) const {
  ScratchCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (capacity > c.limit) return std::free(data);
  c.make_room(capacity);
  c.free.push_back({data, capacity});
  c.cached_bytes += capacity;
}

Scratch acquire_scratch(size_t bytes) {
  // Blocks of a huge page or more start on one, so that the whole block can be backed by huge pages
  // (the dictionary scoring's gathers read theirs at random).
  const size_t alignment = bytes >= kHugePage ? kHugePage : kAlignment;
  const size_t capacity = std::max<size_t>(alignment, (bytes + alignment - 1) / alignment * alignment);
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
  auto* data = static_cast<std::byte*>(std::aligned_alloc(alignment, capacity));
  if (!data) throw std::bad_alloc();
  advise_huge_pages(data, capacity);
  return Scratch(data, ScratchRelease{capacity});
}

size_t scratch_cache_limit() {
  ScratchCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.limit;
}

void set_scratch_cache_limit(size_t bytes) {
  ScratchCache& c = cache();
  size_t freed = 0;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    c.limit = bytes;
    freed = c.cached_bytes;
    c.make_room(0);
    freed -= c.cached_bytes;
  }
#ifdef __GLIBC__
  // glibc keeps freed blocks below its (adaptive, up to 32 MiB) mmap threshold in the heap: without a
  // trim, lowering the limit would give the process's memory back to glibc but not to the system.
  if (freed > 0) malloc_trim(0);
#endif
}

size_t scratch_cached_bytes() {
  ScratchCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.cached_bytes;
}

}  // namespace lmk
