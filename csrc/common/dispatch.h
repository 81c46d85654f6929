// From a runtime dtype to a template argument: f(TypeTag<T>{}) for the supported element types.
#pragma once
#include <cstdint>

#include "common/errors.h"
#include "common/numeric.h"
#include "common/tensor_view.h"

namespace lmk {

template <typename T>
struct TypeTag { using type = T; };

// float32, bfloat16, float16: the floating types that kernels accept for values.
template <typename F>
decltype(auto) dispatch_float(DType t, const char* name, F&& f) {
  switch (t) {
    case DType::Float32: return f(TypeTag<float>{});
    case DType::BFloat16: return f(TypeTag<bfloat16>{});
    case DType::Float16: return f(TypeTag<float16>{});
    default: fail(ErrorKind::Type, name, ": expected dtype float32, bfloat16 or float16, got ", dtype_name(t));
  }
}

// int32, int64: the types that kernels accept for indices and offsets.
template <typename F>
decltype(auto) dispatch_index(DType t, const char* name, F&& f) {
  switch (t) {
    case DType::Int32: return f(TypeTag<int32_t>{});
    case DType::Int64: return f(TypeTag<int64_t>{});
    default: fail(ErrorKind::Type, name, ": expected dtype int32 or int64, got ", dtype_name(t));
  }
}

// Both at once, for kernels over values indexed by integers: f(TypeTag<T>{}, TypeTag<I>{}).
template <typename F>
decltype(auto) dispatch_float_index(DType value, const char* value_name, DType index, const char* index_name, F&& f) {
  return dispatch_float(value, value_name, [&](auto value_tag) {
    return dispatch_index(index, index_name, [&](auto index_tag) { return f(value_tag, index_tag); });
  });
}

}  // namespace lmk
