// Bindings of the scratch cache (common/scratch.h): large CPU outputs in reused memory, and the
// cache's limit. An output from `cached_bytes` goes back to the cache when its last user (numpy, or
// the torch tensor made from it) lets it go, and the next output of a similar size reuses its pages,
// already faulted in, instead of faulting in fresh ones.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/families.h"
#include "common/errors.h"
#include "common/scratch.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

py::array_t<uint8_t> cached_bytes(int64_t nbytes) {
  if (nbytes < 0) fail(ErrorKind::Value, "nbytes: expected a non-negative size, got ", nbytes);
  auto* memory = new Scratch(acquire_scratch(size_t(nbytes)));
  py::capsule release(memory, [](void* p) { delete static_cast<Scratch*>(p); });
  return py::array_t<uint8_t>({py::ssize_t(nbytes)}, {py::ssize_t(1)}, reinterpret_cast<uint8_t*>(memory->get()),
                              release);
}

void set_limit(int64_t nbytes) {
  if (nbytes < 0) fail(ErrorKind::Value, "nbytes: expected a non-negative limit, got ", nbytes);
  set_scratch_cache_limit(size_t(nbytes));
}

}  // namespace

void register_memory_cache(py::module_& m) {
  m.def("cached_bytes", &cached_bytes, py::arg("nbytes"),
        "An uninitialised uint8 numpy array of nbytes from the scratch cache; returned to it when freed.");
  m.def("scratch_cache_limit", &scratch_cache_limit, "The most bytes the scratch cache keeps from freed blocks.");
  m.def("set_scratch_cache_limit", &set_limit, py::arg("nbytes"),
        "Set the scratch cache's limit in bytes (0 keeps nothing); the oldest cached blocks beyond it are freed.");
  m.def("scratch_cached_bytes", &scratch_cached_bytes, "Bytes the scratch cache holds now.");
}

}  // namespace lmk::bindings
