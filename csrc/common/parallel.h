// parallel_for over an index range, on num_threads() threads including the caller.
//
// The threads are those of the OpenMP runtime already in the process when there is one (torch
// loads one), so lmkernels and torch share one set of threads instead of competing for cores;
// otherwise lmkernels starts num_threads() - 1 workers of its own. One parallel_for runs at a
// time: a call made while one is running (from another Python thread, or nested) runs serially
// in its own thread, so threads are never oversubscribed and nothing deadlocks. Chunks write
// disjoint outputs, so results do not depend on the thread count or the schedule.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace lmk {

int num_threads();
void set_num_threads(int n);  // n in [1, 1024]
std::string parallel_backend();  // "openmp (the process's runtime)" or "own threads"

// Calls fn(chunk_begin, chunk_end) over [begin, end) in chunks of at least `grain` indices.
// The first exception thrown by any chunk is rethrown in the caller after all chunks finish.
void parallel_for(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// Calls fn(task) for every task in [0, count), taken one at a time, for tasks heavy enough (a GEMM's
// output tiles, a fraction of a millisecond each) that an atomic increment per task costs nothing:
// then the threads finish within one task of each other.
void parallel_tasks(int64_t count, const std::function<void(int64_t)>& fn);

}  // namespace lmk
