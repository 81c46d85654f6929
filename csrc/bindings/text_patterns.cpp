// Bindings of csrc/text/trigram_patterns: the T-FREE pattern table as _C.PatternTable.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "text/trigram_patterns.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

using text::PatternConfig;
using text::PatternTable;

uint32_t checked_id(int64_t id, const char* name) {
  if (id < 0 || id >= int64_t(text::kTrigramIds))
    fail(ErrorKind::Index, name, ": expected a trigram id in [0, 2^24), got ", id);
  return uint32_t(id);
}

void check_word(const std::string& word) {
  if (word.empty()) fail(ErrorKind::Value, "word: expected a non-empty word");
}

std::vector<int32_t> table_row(PatternTable& table, int64_t id) {
  std::vector<int32_t> row(size_t(table.config().m));
  const uint32_t checked = checked_id(id, "id");
  py::gil_scoped_release release;
  table.row(checked, row.data());
  return row;
}

void table_rows(PatternTable& table, py::handle ids, py::handle out) {
  TensorImports in;
  const TensorView i = in.require(ids, "ids");
  const TensorView o = in.require(out, "out");
  check_dtype(i, "ids", {DType::Int64, DType::Int32});
  check_ndim(i, "ids", 1);
  check_dtype(o, "out", {DType::Int32});
  check_ndim(o, "out", 2);
  check_size(o, "out", 0, i.size(0));
  check_size(o, "out", 1, table.config().m);
  check_contiguous(o, "out");
  check_writable(o, "out");
  if (i.device != DeviceType::CPU || o.device != DeviceType::CPU)
    fail(ErrorKind::Value, "ids, out: the pattern table lives on the CPU; expected CPU tensors");
  const int64_t n = i.size(0);
  std::vector<uint32_t> checked(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    const int64_t at = k * i.stride(0);
    const int64_t id = i.dtype == DType::Int64 ? i.as<int64_t>()[at] : i.as<int32_t>()[at];
    if (id < 0 || id >= int64_t(text::kTrigramIds))
      fail(ErrorKind::Index, "ids: expected trigram ids in [0, 2^24), got ", id, " at position ", k);
    checked[size_t(k)] = uint32_t(id);
  }
  py::gil_scoped_release release;
  table.rows(checked.data(), n, o.as<int32_t>());
}

std::vector<int32_t> table_hashed_word(const PatternTable& table, const std::string& word) {
  check_word(word);
  std::vector<int32_t> row(size_t(table.config().m));
  py::gil_scoped_release release;
  table.hashed_word(word, row.data());
  return row;
}

std::vector<uint32_t> trigram_ids(const std::string& word) {
  check_word(word);
  std::vector<uint32_t> ids;
  text::word_trigrams(word, ids);
  return ids;
}

std::vector<std::vector<int32_t>> table_word_pattern(PatternTable& table, const std::string& word) {
  check_word(word);
  const size_t m = size_t(table.config().m);
  py::gil_scoped_release release;
  if (text::is_hashed_word(word)) {
    std::vector<std::vector<int32_t>> rows(1, std::vector<int32_t>(m));
    table.hashed_word(word, rows[0].data());
    return rows;
  }
  std::vector<uint32_t> ids;
  text::word_trigrams(word, ids);
  std::vector<std::vector<int32_t>> rows(ids.size(), std::vector<int32_t>(m));
  for (size_t r = 0; r < ids.size(); ++r) table.row(ids[r], rows[r].data());
  return rows;
}

}  // namespace

void register_text_patterns(py::module_& m) {
  m.attr("TRIGRAM_IDS") = text::kTrigramIds;
  m.def("tfree_trigram_ids", &trigram_ids, py::arg("word"),
        "Distinct byte trigrams of b' ' + word + b' ', as ids b0 + 256 b1 + 65536 b2, ascending.");
  py::class_<PatternTable>(m, "PatternTable",
                           "T-FREE trigram -> m indices in [0, vocab_size), rows computed lazily (thread-safe).")
      .def(py::init([](int64_t vocab_size, int m, int k_lowercase) {
             return std::make_unique<PatternTable>(PatternConfig{vocab_size, m, k_lowercase});
           }),
           py::arg("vocab_size"), py::arg("m"), py::arg("k_lowercase"))
      .def_property_readonly("vocab_size", [](const PatternTable& t) { return t.config().vocab_size; })
      .def_property_readonly("m", [](const PatternTable& t) { return t.config().m; })
      .def_property_readonly("k_lowercase", [](const PatternTable& t) { return t.config().k_lowercase; })
      .def_property_readonly("config",
                             [](const PatternTable& t) {
                               return py::make_tuple(t.config().vocab_size, t.config().m, t.config().k_lowercase);
                             },
                             "(vocab_size, m, k_lowercase)")
      .def_property_readonly("rows_computed", &PatternTable::rows_computed)
      .def("row", &table_row, py::arg("id"), "The m indices of trigram `id` (lowercase surgery applied).")
      .def("rows", &table_rows, py::arg("ids"), py::arg("out"),
           "out[i] = row(ids[i]) for a 1-D int32/int64 `ids` and an int32 [n, m] `out` (GIL released).")
      .def("hashed_word", &table_hashed_word, py::arg("word"),
           "md5(f'{word}_{i}') mod v for i < m - k, then md5(f'{word.lower()}_lower_{i}') mod v for i < k.")
      .def("word_pattern", &table_word_pattern, py::arg("word"),
           "One row per distinct trigram in ascending id order, or the hashed row of a word with '<|'.")
      .def("precompute", &PatternTable::precompute, py::call_guard<py::gil_scoped_release>(),
           "Compute every row not yet computed, in parallel.")
      .def("save", &PatternTable::save, py::arg("path"), py::call_guard<py::gil_scoped_release>(),
           "Write the config and every computed row to `path`.")
      .def_static("load", &PatternTable::load, py::arg("path"), py::return_value_policy::take_ownership,
                  py::call_guard<py::gil_scoped_release>(), "A table with the config and rows saved at `path`.");
}

}  // namespace lmk::bindings
