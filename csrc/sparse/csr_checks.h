// Host-side checks shared by the CPU kernels that read CSR inputs.
#pragma once
#include <atomic>
#include <cstdint>
#include <limits>

#include "common/errors.h"

namespace lmk::sparse {

// Records the smallest offending position seen by any thread, so that a parallel check reports
// the same element as a serial one would.
struct FirstError {
  std::atomic<int64_t> position{std::numeric_limits<int64_t>::max()};
  void record(int64_t p) {
    int64_t seen = position.load();
    while (p < seen && !position.compare_exchange_weak(seen, p)) {}
  }
  bool any() const { return position.load() != std::numeric_limits<int64_t>::max(); }
};

// CSR offsets of `rows` rows into `num_indices` values: offsets[0] == 0, non-decreasing, and
// offsets[rows] == num_indices; a Value error naming `name` otherwise.
template <typename I>
void check_csr_offsets(const I* offsets, int64_t rows, int64_t num_indices, const char* name) {
  if (offsets[0] != 0) fail(ErrorKind::Value, name, ": expected ", name, "[0] == 0, got ", int64_t(offsets[0]));
  // A reduction with no early exit, which the compiler vectorises (a decoding step checks a
  // dictionary's 100,000 offsets twice); the loop that finds the first decrease runs only after one.
  bool decreasing = false;
  for (int64_t r = 0; r < rows; ++r) decreasing |= offsets[r + 1] < offsets[r];
  for (int64_t r = 0; decreasing && r < rows; ++r)
    if (offsets[r + 1] < offsets[r])
      fail(ErrorKind::Value, name, ": expected non-decreasing offsets, got ", name, "[", r, "] = ", int64_t(offsets[r]),
           " > ", name, "[", r + 1, "] = ", int64_t(offsets[r + 1]));
  if (offsets[rows] != num_indices)
    fail(ErrorKind::Value, name, ": expected the last offset to equal the number of indices (", num_indices,
         "), got ", int64_t(offsets[rows]));
}

}  // namespace lmk::sparse
