// Binding of the batched T-FREE encoder: a list of str/bytes in, numpy CSR arrays out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "bindings/families.h"
#include "common/errors.h"
#include "text/tfree_encode.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

// The buffer as a 1-D numpy array that owns it (no copy).
template <typename T>
py::array_t<T> owning_array(text::Buffer<T>&& buffer) {
  T* data = buffer.data.release();
  py::capsule free_when_done(data, [](void* p) { delete[] static_cast<T*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(buffer.size)}, {static_cast<py::ssize_t>(sizeof(T))}, data,
                        free_when_done);
}

// UTF-8 views of the texts; `keep` holds a reference to each so that they outlive the GIL release.
std::vector<std::string_view> utf8_views(py::sequence texts, std::vector<py::object>& keep) {
  std::vector<std::string_view> views;
  const size_t count = py::len(texts);
  views.reserve(count);
  keep.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    py::object item = texts[i];
    if (PyUnicode_Check(item.ptr())) {
      Py_ssize_t size = 0;
      const char* data = PyUnicode_AsUTF8AndSize(item.ptr(), &size);
      if (data == nullptr) {
        PyErr_Clear();
        fail(ErrorKind::Value, "texts[", i, "]: not encodable as UTF-8 (lone surrogate)");
      }
      views.emplace_back(data, static_cast<size_t>(size));
    } else if (PyBytes_Check(item.ptr())) {
      views.emplace_back(PyBytes_AS_STRING(item.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(item.ptr())));
    } else {
      fail(ErrorKind::Type, "texts[", i, "]: expected str or bytes, got ", Py_TYPE(item.ptr())->tp_name);
    }
    keep.push_back(std::move(item));
  }
  return views;
}

py::tuple tfree_encode(text::PatternTable& table, py::sequence texts, bool split_words, bool entire_words) {
  std::vector<py::object> keep;
  const std::vector<std::string_view> views = utf8_views(texts, keep);
  text::Encoding encoding;
  {
    py::gil_scoped_release release;
    encoding = text::tfree_encode(table, views, text::EncodeOptions{split_words, entire_words});
  }
  return py::make_tuple(owning_array(std::move(encoding.word_offsets)), owning_array(std::move(encoding.row_offsets)),
                        owning_array(std::move(encoding.rows)), owning_array(std::move(encoding.trigram_ids)),
                        owning_array(std::move(encoding.is_endoftext)));
}

}  // namespace

void register_text_encode(py::module_& m) {
  m.def("tfree_encode", &tfree_encode, py::arg("table"), py::arg("texts"), py::arg("split_words") = true,
        py::arg("entire_words") = false,
        "Encode texts into (word_offsets, row_offsets, rows, trigram_ids, is_endoftext) numpy arrays.");
}

}  // namespace lmk::bindings
