#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#endif

#include "common/errors.h"
#include "common/index_math.h"

namespace lmk {
namespace {

constexpr int kMaxThreads = 1024;

// libgomp's entry point for `#pragma omp parallel` (LLVM's libomp provides it too).
using OpenMPParallel = void (*)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);

// The OpenMP runtime already loaded in the process (torch's), if any. Running on its threads
// rather than on threads of our own matters: after each parallel region its workers spin for
// milliseconds waiting for more work, and a second pool would compete with them for the cores.
OpenMPParallel find_openmp() {
#if defined(__unix__) || defined(__APPLE__)
  return reinterpret_cast<OpenMPParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
#else
  return nullptr;
#endif
}

class ThreadPool {
 public:
  ~ThreadPool() { stop_workers(); }

  int size() const { return size_.load(); }
  bool shares_openmp() const { return openmp_ != nullptr; }

  void resize(int n) {
    std::lock_guard<std::mutex> busy(busy_);
    stop_workers();
    stopping_ = false;
    // A new worker waits for the next run, not the last one (generation_ only changes under busy_):
    // one that took the last run for new would leave a count in active_ that the next run needs.
    if (!openmp_)
      for (int i = 0; i + 1 < n; ++i) workers_.emplace_back([this, seen = generation_] { work(seen); });
    size_ = n;
  }

  // In the child of a fork (a DataLoader worker, a multiprocessing pool) only the forking thread
  // exists. The parent's workers, and the OpenMP team its threads ran, are gone: libgomp would wait
  // at its barrier for them forever. So the child drops them without joining (destroying a
  // joinable std::thread would abort), re-creates the locks another thread may have held at the
  // fork, and runs on one thread, as torch does in a DataLoader worker; set_num_threads starts
  // threads of its own there, never OpenMP's.
  void reset_after_fork() {
    new (&busy_) std::mutex;
    new (&mutex_) std::mutex;
    new (&wake_) std::condition_variable;
    new (&done_) std::condition_variable;
    new (&workers_) std::vector<std::thread>;  // the old vector leaks, deliberately
    job_ = nullptr;
    active_ = 0;
    stopping_ = false;
    error_ = nullptr;
    openmp_ = nullptr;
    size_ = 1;
  }

  // Returns false without running anything when the pool is already in use.
  bool try_run(int64_t num_chunks, const std::function<void(int64_t)>& chunk) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &chunk;
      num_chunks_ = num_chunks;
      next_chunk_ = 0;
      active_ = int(workers_.size());
      error_ = nullptr;
      ++generation_;
    }
    if (openmp_) {
      openmp_([](void* self) { static_cast<ThreadPool*>(self)->run_chunks(); }, this, unsigned(size_.load()), 0);
    } else {
      wake_.notify_all();
      run_chunks();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return active_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void run_chunks() {
    for (int64_t c; (c = next_chunk_.fetch_add(1)) < num_chunks_;) {
      try {
        (*job_)(c);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void work(uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      run_chunks();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--active_ == 0) done_.notify_one();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::mutex busy_;  // held for the whole of one parallel run, or a resize
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t num_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::atomic<int> size_{1};
  OpenMPParallel openmp_ = find_openmp();
};

ThreadPool& pool() {
  static ThreadPool* instance = [] {
    auto* p = new ThreadPool();  // never destroyed: workers must not be joined during static teardown
    p->resize(int(std::max(1u, std::thread::hardware_concurrency())));
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork(nullptr, nullptr, [] { pool().reset_after_fork(); });
#endif
    return p;
  }();
  return *instance;
}

}  // namespace

int num_threads() { return pool().size(); }

std::string parallel_backend() { return pool().shares_openmp() ? "openmp (the process's runtime)" : "own threads"; }

void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    fail(ErrorKind::Value, "n: expected a thread count in [1, ", kMaxThreads, "], got ", n);
  pool().resize(n);
}

void parallel_for(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (end <= begin) return;
  const int64_t range = end - begin;
  grain = std::max<int64_t>(grain, 1);
  const int threads = num_threads();
  // Chunks are taken in turn, so the last one to finish keeps the other threads waiting: 16 chunks
  // per thread bound that wait by a sixteenth of a thread's share (uneven bags, a core slowed by
  // other work), at one atomic increment per chunk. With 4, the 2-thread FP8 GEMM lost 5-10% to it;
  // it now takes its tiles one at a time (parallel_tasks).
  const int64_t num_chunks = std::min<int64_t>(ceil_div(range, grain), int64_t(threads) * 16);
  if (threads == 1 || num_chunks <= 1) return fn(begin, end);
  const int64_t chunk_size = ceil_div(range, num_chunks);
  const std::function<void(int64_t)> chunk = [&](int64_t c) {
    const int64_t lo = begin + c * chunk_size;
    const int64_t hi = std::min(end, lo + chunk_size);
    if (lo < hi) fn(lo, hi);
  };
  if (!pool().try_run(num_chunks, chunk)) fn(begin, end);
}

void parallel_tasks(int64_t count, const std::function<void(int64_t)>& fn) {
  if (count <= 0) return;
  if (num_threads() == 1 || count == 1 || !pool().try_run(count, fn))
    for (int64_t task = 0; task < count; ++task) fn(task);
}

}  // namespace lmk
