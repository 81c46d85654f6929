// Small helpers shared by the CUDA kernels: error checks that throw lmk::Error, and a device guard.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/errors.h"
#include "common/index_math.h"  // ceil_div, for grid sizes

// Turns a failed CUDA call (or, after a launch, cudaGetLastError()) into lmk::Error(Runtime).
#define LMK_CUDA_CHECK(expr)                                                                            \
  do {                                                                                                  \
    const cudaError_t lmk_err_ = (expr);                                                                \
    if (lmk_err_ != cudaSuccess)                                                                        \
      ::lmk::fail(::lmk::ErrorKind::Runtime, "CUDA error: ", cudaGetErrorString(lmk_err_), " (", #expr, \
                  " at ", __FILE__, ":", __LINE__, ")");                                                \
  } while (0)

namespace lmk {

// Launch on the tensors' device even when the caller's current device is another one; the
// caller's current device is restored on exit.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    LMK_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) LMK_CUDA_CHECK(cudaSetDevice(device));
    current_ = device;
  }
  ~CudaDeviceGuard() {
    if (current_ != previous_) cudaSetDevice(previous_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
  int current_ = 0;
};

}  // namespace lmk
