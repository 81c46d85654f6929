// Small helpers shared by the CUDA kernels: error checks that throw lmk::Error, and a device guard.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
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

// The most dynamic shared memory one block may opt into on the current device: 227 KiB on Hopper,
// 163 KiB on the A100, 99 KiB on compute capability 8.6 and 8.9 (A10, L4, L40S, RTX 30xx / 40xx).
inline size_t max_block_shared_memory() {
  int device = 0, bytes = 0;
  LMK_CUDA_CHECK(cudaGetDevice(&device));
  LMK_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return size_t(bytes);
}

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
