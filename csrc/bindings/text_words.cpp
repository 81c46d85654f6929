// Bindings of the T-FREE word splitter: bytes in, list[str] out, and back. The GIL is released
// while the native code runs; the Python objects are built around it.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "bindings/families.h"
#include "common/errors.h"
#include "text/tfree_words.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

// `text` must already be valid UTF-8 (the splitter and the joiner guarantee it).
py::str utf8_str(std::string_view text) {
  PyObject* s = PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "strict");
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

// Text repeats its words, so the list shares one str object per distinct short word: a
// direct-mapped cache keyed by the word's bytes, which saves most str allocations (strings are
// immutable, so sharing is invisible to the caller).
class StrCache {
 public:
  ~StrCache() {
    for (const Slot& slot : slots_) Py_XDECREF(slot.str);
  }

  // A new reference to the str of `word` (valid UTF-8).
  PyObject* get(std::string_view word) {
    // CPython keeps one str per ASCII character already; long words rarely repeat.
    if (word.size() > kMaxCachedBytes || word.size() == 1) return utf8_str(word).release().ptr();
    uint64_t hash = 14695981039346656037ull;  // FNV-1a
    for (const char c : word) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    Slot& slot = slots_[hash & (kSlots - 1)];
    if (slot.str == nullptr || slot.word != word) {
      PyObject* str = utf8_str(word).release().ptr();
      Py_XDECREF(slot.str);
      slot = {word, str};
    }
    Py_INCREF(slot.str);
    return slot.str;
  }

 private:
  static constexpr size_t kSlots = 4096;
  static constexpr size_t kMaxCachedBytes = 24;
  struct Slot {
    std::string_view word;  // views the split text, alive for the whole call
    PyObject* str = nullptr;
  };
  std::vector<Slot> slots_ = std::vector<Slot>(kSlots);
};

py::list tfree_split(const py::bytes& text) {
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(text.ptr(), &data, &size) != 0) throw py::error_already_set();
  // The views go to a buffer that each thread keeps between calls (up to kKeptViews): a fresh
  // one cost a page fault per 256 words, a third of the time of a large split.
  constexpr size_t kKeptViews = size_t{1} << 20;
  thread_local std::vector<std::string_view> words;
  words.clear();
  {
    py::gil_scoped_release release;
    text::tfree_split_views(std::string_view(data, static_cast<size_t>(size)), words);
  }
  py::list result(words.size());
  StrCache cache;
  for (size_t i = 0; i < words.size(); ++i) {
    PyList_SET_ITEM(result.ptr(), Py_ssize_t(i), cache.get(words[i]));
  }
  if (words.capacity() > kKeptViews) std::vector<std::string_view>().swap(words);
  return result;
}

py::str tfree_join(const py::list& words) {
  // A tuple snapshot holds the words alive while the GIL is released (the list could change).
  const py::tuple items = py::reinterpret_steal<py::tuple>(PyList_AsTuple(words.ptr()));
  if (!items) throw py::error_already_set();
  std::vector<std::string_view> views(items.size());
  for (size_t i = 0; i < views.size(); ++i) {
    PyObject* word = PyTuple_GET_ITEM(items.ptr(), Py_ssize_t(i));
    if (!PyUnicode_Check(word)) fail(ErrorKind::Type, "words[", i, "]: expected str, got ", Py_TYPE(word)->tp_name);
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(word, &size);  // cached in the str object
    if (data == nullptr) {
      PyErr_Clear();
      fail(ErrorKind::Value, "words[", i, "]: not encodable as UTF-8 (it holds a lone surrogate)");
    }
    views[i] = std::string_view(data, static_cast<size_t>(size));
  }
  std::string text;
  {
    py::gil_scoped_release release;
    text = text::tfree_join(views);
  }
  return utf8_str(text);
}

}  // namespace

void register_text_words(py::module_& m) {
  m.def("tfree_split", &tfree_split, py::arg("text"),
        "T-FREE words of UTF-8 `text` (the official text_to_words); ValueError on invalid UTF-8.");
  m.def("tfree_join", &tfree_join, py::arg("words"),
        "The text whose T-FREE split is `words` (the official words_to_text).");
}

}  // namespace lmk::bindings
