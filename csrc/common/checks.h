// Argument checks shared by every entry point. Each names the argument, what was expected and
// what was given, and throws the typed error that the binding turns into a Python exception.
#pragma once
#include <initializer_list>
#include <optional>

#include "common/errors.h"
#include "common/tensor_view.h"

namespace lmk {

using OptionalView = std::optional<TensorView>;

inline std::string shape_string(const TensorView& t) {
  std::string s = "[";
  for (int d = 0; d < t.ndim; ++d) s += (d ? ", " : "") + std::to_string(t.sizes[d]);
  return s + "]";
}

inline void check_dtype(const TensorView& t, const char* name, std::initializer_list<DType> allowed) {
  std::string names;
  size_t i = 0;
  for (DType d : allowed) {
    if (d == t.dtype) return;
    names += (i == 0 ? "" : (i + 1 == allowed.size() ? " or " : ", "));
    names += dtype_name(d);
    ++i;
  }
  fail(ErrorKind::Type, name, ": expected dtype ", names, ", got ", dtype_name(t.dtype));
}

inline void check_same_dtype(const TensorView& t, const char* name, const TensorView& ref, const char* ref_name) {
  if (t.dtype != ref.dtype)
    fail(ErrorKind::Type, name, ": expected the dtype of ", ref_name, " (", dtype_name(ref.dtype), "), got ",
         dtype_name(t.dtype));
}

inline void check_ndim(const TensorView& t, const char* name, int ndim) {
  if (t.ndim != ndim)
    fail(ErrorKind::Value, name, ": expected ", ndim, " dimensions, got ", t.ndim, " (shape ", shape_string(t), ")");
}

inline void check_size(const TensorView& t, const char* name, int dim, int64_t expected) {
  if (t.size(dim) != expected)
    fail(ErrorKind::Value, name, ": expected size ", expected, " in dimension ", dim, ", got shape ",
         shape_string(t));
}

inline void check_same_device(const TensorView& t, const char* name, const TensorView& ref, const char* ref_name) {
  if (t.device != ref.device || t.device_index != ref.device_index)
    fail(ErrorKind::Value, name, ": expected the device of ", ref_name, " (", device_name(ref.device), ":",
         ref.device_index, "), got ", device_name(t.device), ":", t.device_index);
}

inline void check_contiguous(const TensorView& t, const char* name) {
  if (!t.is_contiguous())
    fail(ErrorKind::Value, name, ": expected a contiguous tensor, got a strided view of shape ", shape_string(t));
}

// Rows may sit at any stride, but each row's elements must be adjacent.
inline void check_unit_last_stride(const TensorView& t, const char* name) {
  if (t.ndim > 0 && t.size(-1) > 1 && t.stride(-1) != 1)
    fail(ErrorKind::Value, name, ": expected unit stride in the last dimension, got ", t.stride(-1));
  for (int d = 0; d < t.ndim; ++d)
    if (t.strides[d] < 0) fail(ErrorKind::Value, name, ": negative strides are not supported");
}

inline void check_writable(const TensorView& t, const char* name) {
  if (t.read_only) fail(ErrorKind::Value, name, ": the output buffer is read-only");
}

// For contiguous tensors: an output that shares memory with another argument could change it after
// it was checked (an index read again as a write target).
inline void check_disjoint(const TensorView& out, const char* name, const TensorView& other, const char* other_name) {
  if (out.numel() == 0 || other.numel() == 0) return;
  const auto first = [](const TensorView& t) { return reinterpret_cast<uintptr_t>(t.data); };
  const auto last = [&](const TensorView& t) {
    return first(t) + uintptr_t(t.numel()) * uintptr_t(dtype_itemsize(t.dtype));
  };
  if (first(out) < last(other) && first(other) < last(out))
    fail(ErrorKind::Value, name, ": expected memory disjoint from ", other_name, ", got an overlap");
}

}  // namespace lmk
