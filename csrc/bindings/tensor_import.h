// Python objects -> TensorView through DLPack, zero-copy. The imported capsules stay alive (and
// so does the memory they describe) as long as the TensorImports that made the views.
#pragma once
#include <pybind11/pybind11.h>

#include <vector>

#include "common/checks.h"

namespace lmk::bindings {

class TensorImports {
 public:
  // Any object with __dlpack__ (torch, numpy, ...), or a DLPack capsule. `name` is the argument
  // name used in error messages; outputs must be writable.
  TensorView require(pybind11::handle obj, const char* name);
  OptionalView optional(pybind11::handle obj, const char* name);

 private:
  std::vector<pybind11::object> capsules_;
};

// `capsule` (an unconsumed "dltensor" of uint8 bytes) relabelled as DLPack float8 `code`, in place: the
// export of float8 tensors by torch versions whose DLPack has no float8 (before about 2.10).
pybind11::object retag_float8(pybind11::object capsule, int code);

// The CUDA error flag that the op layer allocates; required when the inputs live on a GPU.
void require_error_flag(const OptionalView& flag, const TensorView& like);

}  // namespace lmk::bindings
