// A non-owning view of a strided tensor: what every kernel receives, whoever produced the memory.
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace lmk {

constexpr int kMaxDims = 8;

struct TensorView {
  void* data = nullptr;  // already advanced by any byte offset of the producer
  DType dtype = DType::Float32;
  DeviceType device = DeviceType::CPU;
  int device_index = 0;
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  bool read_only = false;

  int64_t size(int d) const { return sizes[d < 0 ? d + ndim : d]; }
  int64_t stride(int d) const { return strides[d < 0 ? d + ndim : d]; }

  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= sizes[d];
    return n;
  }

  // Row-major contiguity; strides of size-1 dimensions, and of empty tensors, carry no meaning.
  bool is_contiguous() const {
    if (numel() == 0) return true;
    int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (sizes[d] != 1 && strides[d] != expected) return false;
      expected *= sizes[d];
    }
    return true;
  }

  template <typename T>
  T* as() const { return static_cast<T*>(data); }
};

}  // namespace lmk
