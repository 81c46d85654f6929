// Argument checks of the attention kernels, shared by the CPU and CUDA paths, and the problem
// description both kernels read.
#include "attention/attention.h"

#include <algorithm>
#include <cmath>

#include "common/dispatch.h"

namespace lmk::attention {
namespace {

void check_float_output(const TensorView& t, const char* name, const TensorView& like) {
  check_dtype(t, name, {DType::Float32});
  check_same_device(t, name, like, "q");
  check_contiguous(t, name);
  check_writable(t, name);
}

// grad_q, grad_k or grad_v: float32, or q's dtype for a result rounded once in the kernel.
void check_grad_output(const TensorView& t, const char* name, const TensorView& q) {
  if (t.dtype != DType::Float32 && t.dtype != q.dtype)
    fail(ErrorKind::Type, name, ": expected dtype float32 or the dtype of q (", dtype_name(q.dtype), "), got ",
         dtype_name(t.dtype));
  check_same_device(t, name, q, "q");
  check_contiguous(t, name);
  check_writable(t, name);
}

void check_shape(const TensorView& t, const char* name, std::initializer_list<int64_t> expected) {
  bool same = t.ndim == int(expected.size());
  int d = 0;
  for (int64_t size : expected) same = same && t.size(d++) == size;
  if (!same) {
    std::string shape = "[";
    d = 0;
    for (int64_t size : expected) shape += (d++ ? ", " : "") + std::to_string(size);
    fail(ErrorKind::Value, name, ": expected shape ", shape, "], got ", shape_string(t));
  }
}

// out, its residual or grad_out: [B, Hq, Sq, D] (varlen [T, Hq, D]) of q's dtype and device; an output
// contiguous and writable, an input with unit stride in D.
void check_like_q(const TensorView& t, const char* name, const TensorView& q, const AttentionProblem& p, bool output) {
  check_same_dtype(t, name, q, "q");
  check_same_device(t, name, q, "q");
  if (output) {
    check_contiguous(t, name);
    check_writable(t, name);
  } else {
    check_unit_last_stride(t, name);
  }
  if (p.cu_seqlens) check_shape(t, name, {p.total_rows, p.q_heads, p.dim});
  else check_shape(t, name, {p.items, p.q_heads, p.queries, p.dim});
}

void check_argmin(const TensorView& t, const AttentionProblem& p, const TensorView& q) {
  check_dtype(t, "row_argmin", {DType::Int64});
  check_same_device(t, "row_argmin", q, "q");
  check_contiguous(t, "row_argmin");
  if (p.cu_seqlens) check_shape(t, "row_argmin", {p.total_rows, p.q_heads});
  else check_shape(t, "row_argmin", {p.items, p.q_heads, p.queries});
}

void check_key_vector(const OptionalView& t, const char* name, const TensorView& q, int64_t batch, int64_t keys) {
  if (!t) return;
  check_dtype(*t, name, {DType::Float32});
  check_same_device(*t, name, q, "q");
  check_shape(*t, name, {batch, keys});
  check_unit_last_stride(*t, name);
}

}  // namespace

Operand operand_of(const TensorView& t, bool varlen) {
  if (varlen) return Operand{t.data, 0, t.stride(1), t.stride(0)};
  return Operand{t.data, t.stride(0), t.stride(1), t.stride(2)};
}

GradientOperands gradient_operands(const AttentionGradients& g, bool varlen) {
  const auto optional = [](const OptionalView& t) { return t ? operand_of(*t, false) : Operand{}; };
  return GradientOperands{operand_of(g.grad_out, varlen),
                          operand_of(g.out, varlen),
                          g.out_residual ? operand_of(*g.out_residual, varlen) : Operand{},
                          operand_of(g.lse, varlen),
                          operand_of(g.delta, varlen),
                          operand_of(g.grad_q, varlen),   operand_of(g.grad_k, varlen), operand_of(g.grad_v, varlen),
                          optional(g.grad_bias),          optional(g.row_min),          optional(g.row_argmin),
                          optional(g.grad_min),           optional(g.grad_factor),
                          g.grad_q.dtype != DType::Float32, g.grad_k.dtype != DType::Float32};
}

AttentionProblem check_attention(const AttentionInputs& in, const AttentionOptions& options, int64_t max_seqlen) {
  const TensorView& q = in.q;
  const bool varlen = in.cu_seqlens.has_value();
  check_dtype(q, "q", {DType::Float32, DType::BFloat16, DType::Float16});
  check_same_dtype(in.k, "k", q, "q");
  check_same_dtype(in.v, "v", q, "q");
  const int ndim = varlen ? 3 : 4;
  check_ndim(q, "q", ndim);
  check_ndim(in.k, "k", ndim);
  check_ndim(in.v, "v", ndim);
  check_same_device(in.k, "k", q, "q");
  check_same_device(in.v, "v", q, "q");
  for (auto [t, name] : {std::pair{&q, "q"}, {&in.k, "k"}, {&in.v, "v"}}) check_unit_last_stride(*t, name);

  AttentionProblem p;
  p.dtype = q.dtype;
  p.options = options;
  p.dim = q.size(-1);
  if (p.dim < 1 || p.dim > kMaxDim)
    fail(ErrorKind::Value, "q: expected a head dimension in [1, ", kMaxDim, "], got ", p.dim);
  if (!(options.scale == options.scale) || std::isinf(options.scale))
    fail(ErrorKind::Value, "scale: expected a finite number, got ", options.scale);
  if (options.window < 0) fail(ErrorKind::Value, "window: expected a positive window (or none), got ", options.window);
  p.q_heads = q.size(1);
  p.kv_heads = in.k.size(1);
  if (p.kv_heads < 1 || p.q_heads % p.kv_heads != 0)
    fail(ErrorKind::Value, "k: expected a number of heads that divides the query heads (", p.q_heads, "), got ",
         p.kv_heads);
  if (varlen) {
    const TensorView& cu = *in.cu_seqlens;
    check_dtype(cu, "cu_seqlens", {DType::Int32, DType::Int64});
    check_ndim(cu, "cu_seqlens", 1);
    check_same_device(cu, "cu_seqlens", q, "q");
    check_contiguous(cu, "cu_seqlens");
    if (cu.size(0) < 1) fail(ErrorKind::Value, "cu_seqlens: expected at least one entry (0), got none");
    if (!options.causal) fail(ErrorKind::Value, "causal: varlen attention is causal");
    if (in.prefix_k || in.prefix_v || in.key_bias || in.key_factor)
      fail(ErrorKind::Value, "cu_seqlens: varlen attention takes no prefix, key_bias or key_factor");
    check_shape(in.k, "k", {q.size(0), p.kv_heads, p.dim});
    check_shape(in.v, "v", {q.size(0), p.kv_heads, p.dim});
    p.cu_seqlens = cu.data;
    p.cu_dtype = cu.dtype;
    p.items = cu.size(0) - 1;
    p.total_rows = q.size(0);
    if (max_seqlen < 0) fail(ErrorKind::Value, "max_seqlen: expected a non-negative length, got ", max_seqlen);
    p.queries = std::min(max_seqlen, p.total_rows);  // no sequence is longer: an over-estimate sizes no grid
  } else {
    p.items = q.size(0);
    p.queries = q.size(2);
    p.keys = in.k.size(2);
    check_shape(in.k, "k", {p.items, p.kv_heads, p.keys, p.dim});
    check_shape(in.v, "v", {p.items, p.kv_heads, p.keys, p.dim});
    if (in.prefix_k.has_value() != in.prefix_v.has_value())
      fail(ErrorKind::Value, in.prefix_k ? "prefix_v" : "prefix_k", ": expected prefix_k and prefix_v together");
    if (in.prefix_k) {
      for (auto [t, name] : {std::pair{&*in.prefix_k, "prefix_k"}, {&*in.prefix_v, "prefix_v"}}) {
        check_same_dtype(*t, name, q, "q");
        check_same_device(*t, name, q, "q");
        check_ndim(*t, name, 4);
        check_unit_last_stride(*t, name);
        if ((t->size(0) != 1 && t->size(0) != p.items) || t->size(1) != p.kv_heads || t->size(3) != p.dim ||
            t->size(2) != in.prefix_k->size(2))
          fail(ErrorKind::Value, name, ": expected shape [1 or ", p.items, ", ", p.kv_heads, ", P, ", p.dim,
               "] (P the same for prefix_k and prefix_v), got ", shape_string(*t));
      }
      p.prefix = in.prefix_k->size(2);
      p.prefix_k = operand_of(*in.prefix_k, false);
      p.prefix_v = operand_of(*in.prefix_v, false);
      if (in.prefix_k->size(0) == 1) p.prefix_k.batch = 0;
      if (in.prefix_v->size(0) == 1) p.prefix_v.batch = 0;
    }
    if (p.queries > p.prefix + p.keys)
      fail(ErrorKind::Value, "q: expected at most as many queries as keys (", p.prefix + p.keys, "), got ",
           p.queries);
    check_key_vector(in.key_bias, "key_bias", q, p.items, p.prefix + p.keys);
    check_key_vector(in.key_factor, "key_factor", q, p.items, p.prefix + p.keys);
    if (in.key_bias) {
      p.key_bias = in.key_bias->as<const float>();
      p.bias_stride = in.key_bias->stride(0);
    }
    if (in.key_factor) {
      p.key_factor = in.key_factor->as<const float>();
      p.factor_stride = in.key_factor->stride(0);
    }
  }
  // Key indices travel as int32 lanes in the CPU masks.
  if (p.prefix + p.keys > kMaxKeys || p.total_rows > kMaxKeys)
    fail(ErrorKind::Value, "k: at most ", kMaxKeys, " keys are supported, got ",
         std::max(p.prefix + p.keys, p.total_rows));
  p.q = operand_of(q, varlen);
  p.k = operand_of(in.k, varlen);
  p.v = operand_of(in.v, varlen);
  return p;
}

void check_forward_outputs(const AttentionProblem& p, const AttentionInputs& in, const AttentionForwardOutputs& out) {
  const TensorView& q = in.q;
  const bool varlen = p.cu_seqlens != nullptr;
  check_like_q(out.out, "out", q, p, true);
  auto check_rows = [&](const TensorView& t, const char* name) {
    check_float_output(t, name, q);
    if (varlen) check_shape(t, name, {p.total_rows, p.q_heads});
    else check_shape(t, name, {p.items, p.q_heads, p.queries});
  };
  check_rows(out.lse, "lse");
  if (out.out_residual) check_like_q(*out.out_residual, "out_residual", q, p, true);
  if (out.row_min.has_value() != in.key_factor.has_value() || out.row_argmin.has_value() != in.key_factor.has_value())
    fail(ErrorKind::Value, "row_min: expected row_min and row_argmin exactly when key_factor is given");
  if (out.row_min) {
    check_rows(*out.row_min, "row_min");
    check_argmin(*out.row_argmin, p, q);
    check_writable(*out.row_argmin, "row_argmin");
  }
}

void check_gradients(const AttentionProblem& p, const AttentionInputs& in, const AttentionGradients& g) {
  const TensorView& q = in.q;
  const bool varlen = p.cu_seqlens != nullptr;
  check_like_q(g.grad_out, "grad_out", q, p, false);
  check_like_q(g.out, "out", q, p, false);
  if (g.out_residual) check_like_q(*g.out_residual, "out_residual", q, p, false);
  const int64_t keys = p.prefix + p.keys;
  if (varlen) {
    for (auto [t, name] : {std::pair{&g.lse, "lse"}, {&g.delta, "delta"}}) {
      check_dtype(*t, name, {DType::Float32});
      check_same_device(*t, name, q, "q");
      check_contiguous(*t, name);
      check_shape(*t, name, {p.total_rows, p.q_heads});
    }
    check_writable(g.delta, "delta");
    check_grad_output(g.grad_q, "grad_q", q);
    check_shape(g.grad_q, "grad_q", {p.total_rows, p.q_heads, p.dim});
    for (auto [t, name] : {std::pair{&g.grad_k, "grad_k"}, {&g.grad_v, "grad_v"}}) {
      check_grad_output(*t, name, q);
      check_shape(*t, name, {p.total_rows, p.kv_heads, p.dim});
    }
  } else {
    for (auto [t, name] : {std::pair{&g.lse, "lse"}, {&g.delta, "delta"}}) {
      check_dtype(*t, name, {DType::Float32});
      check_same_device(*t, name, q, "q");
      check_contiguous(*t, name);
      check_shape(*t, name, {p.items, p.q_heads, p.queries});
    }
    check_writable(g.delta, "delta");
    check_grad_output(g.grad_q, "grad_q", q);
    check_shape(g.grad_q, "grad_q", {p.items, p.q_heads, p.queries, p.dim});
    for (auto [t, name] : {std::pair{&g.grad_k, "grad_k"}, {&g.grad_v, "grad_v"}}) {
      check_grad_output(*t, name, q);
      check_shape(*t, name, {p.items, p.kv_heads, keys, p.dim});
    }
  }
  check_same_dtype(g.grad_v, "grad_v", g.grad_k, "grad_k");  // the kernels write both in one pass
  if (g.grad_bias.has_value() != in.key_bias.has_value())
    fail(ErrorKind::Value, "grad_bias: expected an output exactly when key_bias is given");
  if (g.grad_bias) {
    check_float_output(*g.grad_bias, "grad_bias", q);
    check_shape(*g.grad_bias, "grad_bias", {p.items, p.kv_heads, keys});
  }
  const bool factor = in.key_factor.has_value();
  if (g.row_min.has_value() != factor || g.row_argmin.has_value() != factor || g.grad_min.has_value() != factor ||
      g.grad_factor.has_value() != factor)
    fail(ErrorKind::Value,
         "grad_factor: expected row_min, row_argmin, grad_min and grad_factor exactly when key_factor is given");
  if (factor) {
    for (auto [t, name] : {std::pair{&*g.row_min, "row_min"}, {&*g.grad_min, "grad_min"}}) {
      check_dtype(*t, name, {DType::Float32});
      check_same_device(*t, name, q, "q");
      check_contiguous(*t, name);
      check_shape(*t, name, {p.items, p.q_heads, p.queries});
    }
    check_writable(*g.grad_min, "grad_min");
    check_argmin(*g.row_argmin, p, q);
    check_float_output(*g.grad_factor, "grad_factor", q);
    check_shape(*g.grad_factor, "grad_factor", {p.items, p.kv_heads, keys});
  }
}

void check_cu_seqlens_values(const AttentionProblem& p) {
  if (!p.cu_seqlens) return;
  dispatch_index(p.cu_dtype, "cu_seqlens", [&](auto tag) {
    using I = typename decltype(tag)::type;
    const I* cu = static_cast<const I*>(p.cu_seqlens);
    if (cu[0] != 0) fail(ErrorKind::Value, "cu_seqlens: expected the first entry to be 0, got ", int64_t(cu[0]));
    for (int64_t n = 0; n <= p.items; ++n) {
      if (cu[n] < 0 || int64_t(cu[n]) > p.total_rows)
        fail(ErrorKind::Index, "cu_seqlens: expected entries in [0, ", p.total_rows, "] (the rows of q), got ",
             int64_t(cu[n]), " at ", n);
      if (n > 0 && cu[n] < cu[n - 1])
        fail(ErrorKind::Value, "cu_seqlens: expected non-decreasing entries, got ", int64_t(cu[n - 1]), " then ",
             int64_t(cu[n]), " at ", n);
    }
    if (int64_t(cu[p.items]) != p.total_rows)
      fail(ErrorKind::Value, "cu_seqlens: expected the last entry to be the number of rows of q (", p.total_rows,
           "), got ", int64_t(cu[p.items]));
  });
}

}  // namespace lmk::attention
