// parallel_for over an index range on lmkernels' own thread pool.
//
// The pool has num_threads() - 1 workers; the calling thread takes part. One parallel_for runs
// on the pool at a time: a call made while the pool is busy (from another Python thread, or
// nested inside a parallel_for) runs serially in its own thread instead, so threads are never
// oversubscribed and the pool never deadlocks. Chunks write disjoint outputs, so results do not
// depend on the thread count or the schedule.
#pragma once
#include <cstdint>
#include <functional>

namespace lmk {

int num_threads();
void set_num_threads(int n);  // n >= 1

// Calls fn(chunk_begin, chunk_end) over [begin, end) in chunks of at least `grain` indices.
// The first exception thrown by any chunk is rethrown in the caller after all chunks finish.
void parallel_for(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace lmk
