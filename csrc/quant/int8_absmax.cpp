// Argument checks of the int8 absmax kernels, shared by the CPU and CUDA paths.
#include <cstdint>

#include "quant/int8_absmax.h"

namespace lmk::quant {
namespace {

// A [rows, cols] matrix whose rows may sit at any stride.
void check_matrix(const TensorView& t, const char* name) {
  check_ndim(t, name, 2);
  check_unit_last_stride(t, name);
}

// An output's rows must not share memory (an expanded tensor's would), or rows would race.
void check_output_rows(const TensorView& t, const char* name) {
  check_writable(t, name);
  if (t.size(0) > 1 && t.size(1) > 0 && t.stride(0) < t.size(1))
    fail(ErrorKind::Value, name, ": expected rows that do not overlap, got row stride ", t.stride(0), " for rows of ",
         t.size(1), " elements");
}

void check_values(const TensorView& t, const char* name) {
  check_dtype(t, name, {DType::Float32, DType::BFloat16, DType::Float16});
  check_matrix(t, name);
}

void check_same_shape(const TensorView& t, const char* name, const TensorView& ref) {
  check_size(t, name, 0, ref.size(0));
  check_size(t, name, 1, ref.size(1));
}

void check_scale(const TensorView& scale, const char* name, const TensorView& matrix, const char* matrix_name) {
  check_dtype(scale, name, {DType::Float32});
  check_ndim(scale, name, 1);
  check_size(scale, name, 0, matrix.size(0));
  check_contiguous(scale, name);
  check_same_device(scale, name, matrix, matrix_name);
}

// The bytes [first, last) that a [rows, cols] matrix spans.
struct Span {
  uintptr_t first, last;
};

Span span_of(const TensorView& t) {
  const auto first = reinterpret_cast<uintptr_t>(t.data);
  if (t.numel() == 0) return {first, first};
  const int64_t elements = (t.size(0) - 1) * t.stride(0) + t.size(1);
  return {first, first + uintptr_t(elements) * uintptr_t(dtype_itemsize(t.dtype))};
}

// Each row is read completely before any of it is written, so out may be weight itself; any other
// overlap would let one row's writes change another row's input.
void check_alias(const TensorView& out, const TensorView& weight) {
  if (out.data == weight.data && out.stride(0) == weight.stride(0)) return;
  const Span a = span_of(out), b = span_of(weight);
  if (a.first < b.last && b.first < a.last)
    fail(ErrorKind::Value, "out: expected either weight itself or memory disjoint from weight, got a partial overlap");
}

}  // namespace

void check_quantize(const TensorView& weight, const TensorView& q, const TensorView& scale) {
  check_values(weight, "weight");
  check_dtype(q, "q", {DType::Int8});
  check_matrix(q, "q");
  check_same_shape(q, "q", weight);
  check_same_device(q, "q", weight, "weight");
  check_output_rows(q, "q");
  check_scale(scale, "scale", weight, "weight");
  check_writable(scale, "scale");
}

void check_dequantize(const TensorView& q, const TensorView& scale, const TensorView& out) {
  check_dtype(q, "q", {DType::Int8});
  check_matrix(q, "q");
  check_scale(scale, "scale", q, "q");
  check_values(out, "out");
  check_same_shape(out, "out", q);
  check_same_device(out, "out", q, "q");
  check_output_rows(out, "out");
}

void check_fake_quantize(const TensorView& weight, const TensorView& out, const TensorView& scale) {
  check_values(weight, "weight");
  check_same_dtype(out, "out", weight, "weight");
  check_matrix(out, "out");
  check_same_shape(out, "out", weight);
  check_same_device(out, "out", weight, "weight");
  check_output_rows(out, "out");
  check_alias(out, weight);
  check_scale(scale, "scale", weight, "weight");
  check_writable(scale, "scale");
}

}  // namespace lmk::quant
