// Argument checks of the word connectors, shared by the CPU and CUDA paths.
#include "attention/word_connector.h"

namespace lmk::attention {
namespace {

void check_values(const TensorView& t, const char* name, const TensorView& ref, const char* ref_name, int ndim) {
  check_same_dtype(t, name, ref, ref_name);
  check_ndim(t, name, ndim);
  check_same_device(t, name, ref, ref_name);
  check_contiguous(t, name);
}

void check_output(const TensorView& t, const char* name, const TensorView& like, const char* like_name) {
  check_values(t, name, like, like_name, like.ndim);
  for (int d = 0; d < like.ndim; ++d) check_size(t, name, d, like.size(d));
  check_writable(t, name);
}

void check_seqlens(const TensorView& cu_seqlens, const TensorView& ref, const char* ref_name) {
  check_dtype(cu_seqlens, "cu_seqlens", {DType::Int32, DType::Int64});
  check_ndim(cu_seqlens, "cu_seqlens", 1);
  check_same_device(cu_seqlens, "cu_seqlens", ref, ref_name);
  check_contiguous(cu_seqlens, "cu_seqlens");
  if (cu_seqlens.size(0) < 1)
    fail(ErrorKind::Value, "cu_seqlens: expected at least one entry (W + 1 word boundaries), got shape ",
         shape_string(cu_seqlens));
}

// A [W, Hq] float32 value per word and query head (lse, delta).
void check_lse(const TensorView& t, const char* name, const TensorView& q) {
  check_dtype(t, name, {DType::Float32});
  check_ndim(t, name, 2);
  check_size(t, name, 0, q.size(0));
  check_size(t, name, 1, q.size(1));
  check_same_device(t, name, q, "q");
  check_contiguous(t, name);
}

void check_qkv(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& cu_seqlens) {
  check_dtype(q, "q", {DType::Float32, DType::BFloat16, DType::Float16});
  check_ndim(q, "q", 3);
  check_contiguous(q, "q");
  check_values(k, "k", q, "q", 3);
  check_values(v, "v", q, "q", 3);
  check_size(k, "k", 2, q.size(2));
  for (int d = 0; d < 3; ++d) check_size(v, "v", d, k.size(d));
  const int64_t dim = q.size(2);
  if (dim < 1 || dim > kMaxHeadDim)
    fail(ErrorKind::Value, "q: expected a head dimension in [1, ", kMaxHeadDim, "], got ", dim);
  if (k.size(1) < 1 || q.size(1) % k.size(1) != 0)
    fail(ErrorKind::Value, "k: expected a number of heads that divides the ", q.size(1), " query heads, got ",
         k.size(1));
  check_seqlens(cu_seqlens, q, "q");
  check_size(cu_seqlens, "cu_seqlens", 0, q.size(0) + 1);
}

}  // namespace

void check_word_attention(const WordAttentionForward& a) {
  check_qkv(a.q, a.k, a.v, a.cu_seqlens);
  check_output(a.out, "out", a.q, "q");
  check_lse(a.lse, "lse", a.q);
  check_writable(a.lse, "lse");
}

void check_word_attention_backward(const WordAttentionBackward& a) {
  check_qkv(a.q, a.k, a.v, a.cu_seqlens);
  check_lse(a.lse, "lse", a.q);
  check_lse(a.delta, "delta", a.q);
  check_writable(a.delta, "delta");
  check_output(a.grad_out, "grad_out", a.q, "q");
  check_output(a.grad_q, "grad_q", a.q, "q");
  check_output(a.grad_k, "grad_k", a.k, "k");
  check_output(a.grad_v, "grad_v", a.v, "v");
}

void check_guide_broadcast(const GuideBroadcast& a) {
  check_dtype(a.x, "x", {DType::Float32, DType::BFloat16, DType::Float16});
  check_ndim(a.x, "x", 2);
  check_contiguous(a.x, "x");
  check_values(a.guide, "guide", a.x, "x", 2);
  check_size(a.guide, "guide", 1, a.x.size(1));
  check_seqlens(a.cu_seqlens, a.x, "x");
  check_size(a.cu_seqlens, "cu_seqlens", 0, a.guide.size(0) + 1);
  check_output(a.out, "out", a.x, "x");
}

void check_guide_broadcast_backward(const GuideBroadcastBackward& a) {
  check_dtype(a.grad_out, "grad_out", {DType::Float32, DType::BFloat16, DType::Float16});
  check_ndim(a.grad_out, "grad_out", 2);
  check_contiguous(a.grad_out, "grad_out");
  check_values(a.grad_guide, "grad_guide", a.grad_out, "grad_out", 2);
  check_size(a.grad_guide, "grad_guide", 1, a.grad_out.size(1));
  check_writable(a.grad_guide, "grad_guide");
  check_seqlens(a.cu_seqlens, a.grad_out, "grad_out");
  check_size(a.cu_seqlens, "cu_seqlens", 0, a.grad_guide.size(0) + 1);
}

}  // namespace lmk::attention
