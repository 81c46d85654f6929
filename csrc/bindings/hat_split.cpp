// Bindings of the HAT splitter: str in; list[str], list[bytes], or flat arrays that the caller
// allocated, out. The GIL is released while the native code splits; the Python objects are built
// around it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "common/checks.h"
#include "common/errors.h"
#include "text/hat_split.h"
#include "text/utf8.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

// The UTF-8 of str `text` (cached in the str object; no copy for ASCII). `index`, if set, places it in
// the sequence `name` for error messages, formatted only on an error (as check_utf8 in text/hat_split.cpp).
std::string_view utf8_of(py::handle text, const char* name, std::optional<size_t> index = std::nullopt) {
  const auto where = [&] { return index ? concat(name, "[", *index, "]") : std::string(name); };
  if (!PyUnicode_Check(text.ptr())) fail(ErrorKind::Type, where(), ": expected str, got ", Py_TYPE(text.ptr())->tp_name);
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
  if (data == nullptr) {
    PyErr_Clear();
    fail(ErrorKind::Value, where(), ": not encodable as UTF-8 (it holds a lone surrogate)");
  }
  return {data, static_cast<size_t>(size)};
}

size_t byte_limit(std::optional<int64_t> max_bytes) {
  if (!max_bytes) return text::kNoByteLimit;
  if (*max_bytes <= 0) fail(ErrorKind::Value, "max_bytes: expected a positive int or None, got ", *max_bytes);
  return static_cast<size_t>(*max_bytes);
}

// The word ends of `text`, in a buffer that each thread keeps between calls (up to kKeptEnds): a
// fresh one page-faulted through its doubling growth on every large call.
const std::vector<size_t>& word_ends_of(std::string_view text, size_t max_bytes) {
  constexpr size_t kKeptEnds = size_t{1} << 21;
  thread_local std::vector<size_t> ends;
  if (ends.capacity() > kKeptEnds) std::vector<size_t>().swap(ends);
  ends.clear();
  py::gil_scoped_release release;
  text::hat_split(text, max_bytes, ends);
  return ends;
}

// Text repeats its words, so the list shares one object per distinct short word: a direct-mapped
// cache keyed by the word's bytes saves most allocations (str and bytes are immutable, so sharing
// is invisible to the caller).
class WordCache {
 public:
  ~WordCache() {
    for (const Slot& slot : slots_) Py_XDECREF(slot.object);
  }

  // A new reference to the object of `word` (whose bytes stay alive for the whole call); `make`
  // returns a new one on a miss.
  template <typename Make>
  PyObject* get(std::string_view word, Make&& make) {
    if (word.size() > kMaxCachedBytes) return checked(make());
    uint64_t hash = 14695981039346656037ull;  // FNV-1a
    for (const char c : word) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    Slot& slot = slots_[hash & (kSlots - 1)];
    if (slot.object == nullptr || slot.word != word) {
      PyObject* object = checked(make());
      Py_XDECREF(slot.object);
      slot = {word, object};
    }
    Py_INCREF(slot.object);
    return slot.object;
  }

 private:
  static PyObject* checked(PyObject* object) {
    if (object == nullptr) throw py::error_already_set();
    return object;
  }

  static constexpr size_t kSlots = 4096;
  static constexpr size_t kMaxCachedBytes = 24;
  struct Slot {
    std::string_view word;
    PyObject* object = nullptr;
  };
  std::vector<Slot> slots_ = std::vector<Slot>(kSlots);
};

// The words as str: slices of the str itself (a copy of its characters, no UTF-8 decoding).
py::list hat_split(const py::str& text) {
  const std::string_view utf8 = utf8_of(text, "text");
  const std::vector<size_t>& ends = word_ends_of(utf8, text::kNoByteLimit);
  py::list words(ends.size());
  WordCache cache;
  const bool ascii = PyUnicode_IS_ASCII(text.ptr());
  size_t byte_begin = 0;
  Py_ssize_t char_begin = 0;
  for (size_t w = 0; w < ends.size(); ++w) {
    Py_ssize_t char_end = static_cast<Py_ssize_t>(ends[w]);
    if (!ascii) {  // code points are the bytes that do not continue a sequence
      char_end = char_begin;
      for (size_t b = byte_begin; b < ends[w]; ++b) char_end += !text::utf8::is_continuation(static_cast<unsigned char>(utf8[b]));
    }
    const std::string_view word = utf8.substr(byte_begin, ends[w] - byte_begin);
    PyList_SET_ITEM(words.ptr(), Py_ssize_t(w), cache.get(word, [&] {
      return PyUnicode_Substring(text.ptr(), char_begin, char_end);
    }));
    byte_begin = ends[w];
    char_begin = char_end;
  }
  return words;
}

py::list hat_split_with_limit(const py::str& text, std::optional<int64_t> max_bytes) {
  const size_t limit = byte_limit(max_bytes);
  const std::string_view utf8 = utf8_of(text, "text");
  const std::vector<size_t>& ends = word_ends_of(utf8, limit);
  py::list words(ends.size());
  WordCache cache;
  size_t begin = 0;
  for (size_t w = 0; w < ends.size(); ++w) {
    const std::string_view word = utf8.substr(begin, ends[w] - begin);
    PyList_SET_ITEM(words.ptr(), Py_ssize_t(w), cache.get(word, [&] {
      return PyBytes_FromStringAndSize(word.data(), static_cast<Py_ssize_t>(word.size()));
    }));
    begin = ends[w];
  }
  return words;
}

TensorView flat_output(TensorImports& imports, py::handle obj, const char* name, DType dtype) {
  const TensorView view = imports.require(obj, name);
  check_dtype(view, name, {dtype});
  check_ndim(view, name, 1);
  check_contiguous(view, name);
  check_writable(view, name);
  if (view.device != DeviceType::CPU) fail(ErrorKind::Value, name, ": expected a CPU tensor, got one on ", device_name(view.device));
  return view;
}

py::tuple hat_split_batch(const py::sequence& texts, std::optional<int64_t> max_bytes,
                          const std::vector<std::pair<py::str, int>>& special_tokens, py::handle bytes,
                          py::handle word_offsets, py::handle text_word_offsets) {
  const size_t limit = byte_limit(max_bytes);
  // A tuple snapshot keeps the texts (and their cached UTF-8) alive while the GIL is released.
  const py::tuple items = py::reinterpret_steal<py::tuple>(PySequence_Tuple(texts.ptr()));
  if (!items) throw py::error_already_set();
  std::vector<std::string_view> views(items.size());
  for (size_t t = 0; t < views.size(); ++t) views[t] = utf8_of(items[t], "texts", t);
  std::vector<text::HatSpecialToken> specials;
  for (size_t i = 0; i < special_tokens.size(); ++i) {
    const auto& [token, byte] = special_tokens[i];
    if (byte < 0 || byte > 255) fail(ErrorKind::Value, "special_tokens[", i, "]: the byte must be in [0, 255], got ", byte);
    specials.push_back({utf8_of(token, "special_tokens", i), static_cast<uint8_t>(byte)});
  }
  TensorImports imports;
  const TensorView out_bytes = flat_output(imports, bytes, "bytes", DType::UInt8);
  const TensorView out_words = flat_output(imports, word_offsets, "word_offsets", DType::Int64);
  const TensorView out_texts = flat_output(imports, text_word_offsets, "text_word_offsets", DType::Int64);
  check_size(out_texts, "text_word_offsets", 0, static_cast<int64_t>(views.size() + 1));
  text::HatBatchCounts counts{};
  {
    py::gil_scoped_release release;
    counts = text::hat_split_batch(views, limit, specials,
                                   {out_bytes.as<uint8_t>(), static_cast<size_t>(out_bytes.numel()),
                                    out_words.as<int64_t>(), static_cast<size_t>(out_words.numel()),
                                    out_texts.as<int64_t>()});
  }
  return py::make_tuple(counts.bytes, counts.words);
}

}  // namespace

void register_hat_split(py::module_& m) {
  m.def("hat_split", &hat_split, py::arg("text"), "The HAT words of `text` (hat-splitter's split).");
  m.def("hat_split_with_limit", &hat_split_with_limit, py::arg("text"), py::arg("max_bytes"),
        "The HAT words of `text` as bytes, each at most `max_bytes` long (hat-splitter's split_with_limit).");
  m.def("hat_split_batch", &hat_split_batch, py::arg("texts"), py::arg("max_bytes"), py::arg("special_tokens"),
        py::arg("bytes"), py::arg("word_offsets"), py::arg("text_word_offsets"),
        "Split texts in parallel into caller-allocated flat arrays; returns (bytes used, words).");
}

}  // namespace lmk::bindings
