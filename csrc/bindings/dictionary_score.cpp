// Bindings of the T-FREE dictionary scoring (csrc/sparse/dictionary_score.h).
#include <pybind11/pybind11.h>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "sparse/dictionary_score.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

using sparse::Dictionary;
using sparse::ScoreParams;
using sparse::ScoreVariant;

void dictionary_scores(py::handle logits, py::handle ne_indices, py::handle ne_offsets, py::handle edge_indices,
                       py::handle edge_offsets, py::handle trigram_counts, int64_t m, double edge_weight,
                       int variant, py::handle scores, py::handle activations, py::handle totals,
                       py::handle error_flag, uintptr_t stream, py::handle row_indices, py::handle row_offsets,
                       py::handle row_sums) {
  TensorImports in;
  const TensorView l = in.require(logits, "logits");
  const Dictionary dictionary{in.require(ne_indices, "ne_indices"), in.require(ne_offsets, "ne_offsets"),
                              in.require(edge_indices, "edge_indices"), in.require(edge_offsets, "edge_offsets"),
                              in.require(trigram_counts, "trigram_counts"), in.optional(row_indices, "row_indices"),
                              in.optional(row_offsets, "row_offsets")};
  const ScoreParams params{m, float(edge_weight), ScoreVariant(variant)};
  const TensorView out = in.require(scores, "scores");
  const OptionalView act = in.optional(activations, "activations");
  const OptionalView tot = in.optional(totals, "totals");
  const OptionalView flag = in.optional(error_flag, "error_flag");
  const OptionalView sums = in.optional(row_sums, "row_sums");
  sparse::check_dictionary_scores(l, dictionary, params, out);
  require_error_flag(flag, l);
  if (l.device != DeviceType::CPU) {
    if (!act || !tot) fail(ErrorKind::Value, "activations, totals: the workspace is required for CUDA logits");
    sparse::check_dictionary_workspace(l, dictionary, *act, *tot, sums);
  }
  py::gil_scoped_release release;
  if (l.device == DeviceType::CPU) return sparse::dictionary_scores_cpu(l, dictionary, params, out);
#ifdef LMK_WITH_CUDA
  sparse::dictionary_scores_cuda(l, dictionary, params, *act, *tot, sums, out, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

}  // namespace

void register_dictionary_score(py::module_& m) {
  m.attr("DICTIONARY_BAD_INDEX") = sparse::kDictionaryBadIndex;
  m.attr("DICTIONARY_BAD_OFFSETS") = sparse::kDictionaryBadOffsets;
  m.attr("DICTIONARY_BAD_COUNT") = sparse::kDictionaryBadCount;
  m.attr("DICTIONARY_BAD_ROW_INDEX") = sparse::kDictionaryBadRowIndex;
  m.attr("DICTIONARY_BAD_ROW_OFFSETS") = sparse::kDictionaryBadRowOffsets;
  m.def("dictionary_scores", &dictionary_scores, py::arg("logits"), py::arg("ne_indices"), py::arg("ne_offsets"),
        py::arg("edge_indices"), py::arg("edge_offsets"), py::arg("trigram_counts"), py::arg("m"),
        py::arg("edge_weight"), py::arg("variant"), py::arg("scores"), py::arg("activations") = py::none(),
        py::arg("totals") = py::none(), py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        py::arg("row_indices") = py::none(), py::arg("row_offsets") = py::none(), py::arg("row_sums") = py::none(),
        "T-FREE scores [Q, W] of every dictionary word against each row of logits [Q, v]; variant 0 = contrast, "
        "1 = mean. With a row table (row_indices, row_offsets) the sets hold row ids. CUDA logits need the "
        "workspace activations [v, Q], totals [Q] and, with a row table, row_sums [R, Q] (float32).");
}

}  // namespace lmk::bindings
