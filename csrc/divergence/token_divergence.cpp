// Argument checks of the token divergence, shared by the CPU and CUDA paths.
#include "divergence/token_divergence.h"

namespace lmk::divergence {
namespace {

void check_positions(const TensorView& t, const char* name, const TensorView& logits) {
  check_ndim(t, name, 2);
  check_size(t, name, 0, logits.size(0));
  check_size(t, name, 1, logits.size(1));
  check_same_device(t, name, logits, "logits");
  for (int d = 0; d < 2; ++d)
    if (t.strides[d] < 0) fail(ErrorKind::Value, name, ": negative strides are not supported");
}

void check_output(const TensorView& t, const char* name, DType dtype, const TensorView& logits) {
  check_dtype(t, name, {dtype});
  check_positions(t, name, logits);
  check_contiguous(t, name);
  check_writable(t, name);
}

}  // namespace

void check_token_divergence(const TokenDivergenceInputs& in, const TokenDivergenceOutputs& out) {
  const TensorView& logits = in.logits;
  check_dtype(logits, "logits", {DType::Float32, DType::BFloat16, DType::Float16});
  check_ndim(logits, "logits", 3);
  check_unit_last_stride(logits, "logits");
  if (logits.size(2) < 1) fail(ErrorKind::Value, "logits: expected a vocabulary of at least 1 entry, got shape ",
                               shape_string(logits));
  // Indices travel as int32 lanes in the vectorised argmax, with room for the padded last block.
  if (logits.size(2) > kMaxVocab)
    fail(ErrorKind::Value, "logits: a vocabulary of at most 2^30 entries is supported, got ", logits.size(2));
  check_dtype(in.reference_tokens, "reference_tokens", {DType::Int32, DType::Int64});
  check_positions(in.reference_tokens, "reference_tokens", logits);
  if (in.mask) {
    check_dtype(*in.mask, "mask", {DType::Bool});
    check_positions(*in.mask, "mask", logits);
  }
  if (in.reference_logits) {
    const TensorView& r = *in.reference_logits;
    check_same_dtype(r, "reference_logits", logits, "logits");
    check_ndim(r, "reference_logits", 3);
    check_same_device(r, "reference_logits", logits, "logits");
    if (r.size(0) != logits.size(0) || r.size(1) != logits.size(1))
      fail(ErrorKind::Value, "reference_logits: expected the batch and sequence sizes of logits (",
           shape_string(logits), "), got shape ", shape_string(r));
    if (r.size(2) != logits.size(2))
      fail(ErrorKind::Value, "reference_logits: expected the vocabulary size of logits (", logits.size(2),
           "), got ", r.size(2));
    check_unit_last_stride(r, "reference_logits");
  }
  check_output(out.argmax, "argmax", DType::Int64, logits);
  check_output(out.match, "match", DType::Bool, logits);
  check_output(out.nll, "nll", DType::Float32, logits);
  check_output(out.margin, "margin", DType::Float32, logits);
  if (out.kl.has_value() != in.reference_logits.has_value())
    fail(ErrorKind::Value, "kl: expected an output exactly when reference_logits is given");
  if (out.kl) check_output(*out.kl, "kl", DType::Float32, logits);
}

}  // namespace lmk::divergence
