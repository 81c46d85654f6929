// Argument checks of the dictionary scoring, shared by the CPU and CUDA paths.
#include "sparse/dictionary_score.h"

namespace lmk::sparse {

static void check_int32_vector(const TensorView& t, const char* name, const TensorView& logits) {
  check_dtype(t, name, {DType::Int32});
  check_ndim(t, name, 1);
  check_contiguous(t, name);
  check_same_device(t, name, logits, "logits");
}

void check_dictionary_scores(const TensorView& logits, const Dictionary& dictionary, const ScoreParams& params,
                             const TensorView& scores) {
  check_dtype(logits, "logits", {DType::Float32, DType::BFloat16, DType::Float16});
  check_ndim(logits, "logits", 2);
  check_unit_last_stride(logits, "logits");
  check_int32_vector(dictionary.ne_indices, "ne_indices", logits);
  check_int32_vector(dictionary.ne_offsets, "ne_offsets", logits);
  check_int32_vector(dictionary.edge_indices, "edge_indices", logits);
  check_int32_vector(dictionary.edge_offsets, "edge_offsets", logits);
  check_int32_vector(dictionary.trigram_counts, "trigram_counts", logits);
  if (dictionary.row_indices.has_value() != dictionary.row_offsets.has_value())
    fail(ErrorKind::Value, "row_indices, row_offsets: expected both or neither");
  if (dictionary.has_rows()) {
    check_int32_vector(*dictionary.row_indices, "row_indices", logits);
    check_int32_vector(*dictionary.row_offsets, "row_offsets", logits);
    if (dictionary.row_offsets->size(0) < 1)
      fail(ErrorKind::Value, "row_offsets: expected at least one entry (offsets have num_rows + 1 entries), got 0");
  }
  if (dictionary.ne_offsets.size(0) < 1)
    fail(ErrorKind::Value, "ne_offsets: expected at least one entry (offsets have num_words + 1 entries), got 0");
  if (dictionary.edge_offsets.size(0) < 1)
    fail(ErrorKind::Value, "edge_offsets: expected at least one entry (offsets have num_words + 1 entries), got 0");
  // Three tensors give the number of words W: the one that disagrees with the other two is the one
  // blamed, whichever it is (Dictionary::num_words reads ne_offsets alone).
  const int64_t from_ne = dictionary.ne_offsets.size(0) - 1;
  const int64_t from_edge = dictionary.edge_offsets.size(0) - 1;
  const int64_t from_counts = dictionary.trigram_counts.size(0);
  if (from_ne != from_edge && from_ne != from_counts && from_edge != from_counts)
    fail(ErrorKind::Value, "ne_offsets, edge_offsets, trigram_counts: expected W + 1, W + 1 and W entries for one "
         "number of words W, got shapes ", shape_string(dictionary.ne_offsets), ", ",
         shape_string(dictionary.edge_offsets), " and ", shape_string(dictionary.trigram_counts));
  const int64_t num_words = from_edge == from_counts ? from_edge : from_ne;
  check_size(dictionary.ne_offsets, "ne_offsets", 0, num_words + 1);
  check_size(dictionary.edge_offsets, "edge_offsets", 0, num_words + 1);
  check_size(dictionary.trigram_counts, "trigram_counts", 0, num_words);
  if (params.indices_per_trigram < 1 || params.indices_per_trigram > INT32_MAX)
    fail(ErrorKind::Value, "m: expected a number of indices per trigram in [1, 2^31), got ", params.indices_per_trigram);
  if (params.variant != ScoreVariant::Contrast && params.variant != ScoreVariant::Mean)
    fail(ErrorKind::Value, "variant: expected contrast (0) or mean (1), got ", int(params.variant));
  check_dtype(scores, "scores", {DType::Float32});
  check_ndim(scores, "scores", 2);
  check_size(scores, "scores", 0, logits.size(0));
  check_size(scores, "scores", 1, num_words);
  check_contiguous(scores, "scores");
  check_writable(scores, "scores");
  check_same_device(scores, "scores", logits, "logits");
}

void check_dictionary_workspace(const TensorView& logits, const Dictionary& dictionary,
                                const TensorView& activations, const TensorView& totals,
                                const OptionalView& row_sums) {
  check_dtype(activations, "activations", {DType::Float32});
  check_ndim(activations, "activations", 2);
  check_size(activations, "activations", 0, logits.size(1));
  check_size(activations, "activations", 1, logits.size(0));
  check_contiguous(activations, "activations");
  check_writable(activations, "activations");
  check_same_device(activations, "activations", logits, "logits");
  check_dtype(totals, "totals", {DType::Float32});
  check_ndim(totals, "totals", 1);
  check_size(totals, "totals", 0, logits.size(0));
  check_contiguous(totals, "totals");
  check_writable(totals, "totals");
  check_same_device(totals, "totals", logits, "logits");
  if (row_sums.has_value() != dictionary.has_rows())
    fail(ErrorKind::Value, "row_sums: the workspace is required with a row table, and only then");
  if (!row_sums) return;
  check_dtype(*row_sums, "row_sums", {DType::Float32});
  check_ndim(*row_sums, "row_sums", 2);
  check_size(*row_sums, "row_sums", 0, dictionary.set_bound(logits.size(1)));
  check_size(*row_sums, "row_sums", 1, logits.size(0));
  check_contiguous(*row_sums, "row_sums");
  check_writable(*row_sums, "row_sums");
  check_same_device(*row_sums, "row_sums", logits, "logits");
}

}  // namespace lmk::sparse
