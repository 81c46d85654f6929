#include "bindings/tensor_import.h"

#include "bindings/dlpack.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

DType to_dtype(const dlpack::DLDataType& t, const char* name) {
  if (t.lanes == 1) {
    switch (t.code) {
      case dlpack::kDLFloat:
        if (t.bits == 32) return DType::Float32;
        if (t.bits == 16) return DType::Float16;
        break;
      case dlpack::kDLBfloat:
        if (t.bits == 16) return DType::BFloat16;
        break;
      case dlpack::kDLInt:
        if (t.bits == 8) return DType::Int8;
        if (t.bits == 32) return DType::Int32;
        if (t.bits == 64) return DType::Int64;
        break;
      case dlpack::kDLUInt:
        if (t.bits == 8) return DType::UInt8;
        break;
      case dlpack::kDLBool:
        if (t.bits == 8) return DType::Bool;
        break;
      case dlpack::kDLFloat8_e4m3fn:
        if (t.bits == 8) return DType::Float8E4M3FN;
        break;
      case dlpack::kDLFloat8_e5m2:
        if (t.bits == 8) return DType::Float8E5M2;
        break;
    }
  }
  fail(ErrorKind::Type, name, ": unsupported DLPack dtype (code ", int(t.code), ", bits ", int(t.bits), ", lanes ",
       t.lanes, ")");
}

TensorView to_view(const dlpack::DLTensor& t, bool read_only, const char* name) {
  TensorView v;
  switch (t.device.device_type) {
    case dlpack::kDLCPU:
    case dlpack::kDLCUDAHost: v.device = DeviceType::CPU; break;
    case dlpack::kDLCUDA:
    case dlpack::kDLCUDAManaged: v.device = DeviceType::CUDA; break;
    default: fail(ErrorKind::Value, name, ": unsupported device type ", t.device.device_type, " (expected CPU or CUDA)");
  }
  v.device_index = v.device == DeviceType::CPU ? 0 : t.device.device_id;
  v.dtype = to_dtype(t.dtype, name);
  if (t.ndim < 0 || t.ndim > kMaxDims)
    fail(ErrorKind::Value, name, ": expected at most ", kMaxDims, " dimensions, got ", t.ndim);
  v.ndim = t.ndim;
  int64_t compact_stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.sizes[d] = t.shape[d];
    if (v.sizes[d] < 0) fail(ErrorKind::Value, name, ": negative size in dimension ", d);
    v.strides[d] = t.strides ? t.strides[d] : compact_stride;
    compact_stride *= v.sizes[d];
  }
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  v.read_only = read_only;
  return v;
}

py::object export_capsule(py::handle obj, const char* name) {
  if (PyCapsule_CheckExact(obj.ptr())) return py::reinterpret_borrow<py::object>(obj);
  if (!py::hasattr(obj, "__dlpack__"))
    fail(ErrorKind::Type, name, ": expected a tensor or array supporting DLPack (torch.Tensor, numpy.ndarray, ...), got ",
         std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::dict kwargs;
  if (py::hasattr(obj, "__dlpack_device__")) {
    py::tuple device = obj.attr("__dlpack_device__")();
    // Kernels run on the caller's current stream: ask the producer not to synchronise.
    if (device[0].cast<int>() == dlpack::kDLCUDA) kwargs["stream"] = -1;
  }
  kwargs["max_version"] = py::make_tuple(1, 0);
  try {
    return obj.attr("__dlpack__")(**kwargs);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;  // producers older than DLPack 1.0 reject max_version
  }
  kwargs.attr("pop")("max_version");
  return obj.attr("__dlpack__")(**kwargs);
}

}  // namespace

TensorView TensorImports::require(py::handle obj, const char* name) {
  if (obj.is_none()) fail(ErrorKind::Type, name, ": expected a tensor, got None");
  py::object capsule = export_capsule(obj, name);
  const char* capsule_name = PyCapsule_GetName(capsule.ptr());
  TensorView view;
  if (capsule_name && std::string(capsule_name) == "dltensor_versioned") {
    auto* m = static_cast<dlpack::DLManagedTensorVersioned*>(PyCapsule_GetPointer(capsule.ptr(), capsule_name));
    if (!m) throw py::error_already_set();
    if (m->version.major != 1)
      fail(ErrorKind::Value, name, ": unsupported DLPack major version ", m->version.major);
    view = to_view(m->dl_tensor, (m->flags & dlpack::kFlagReadOnly) != 0, name);
  } else if (capsule_name && std::string(capsule_name) == "dltensor") {
    auto* m = static_cast<dlpack::DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), capsule_name));
    if (!m) throw py::error_already_set();
    view = to_view(m->dl_tensor, false, name);
  } else {
    fail(ErrorKind::Value, name, ": the DLPack capsule was already consumed or is not a DLPack tensor");
  }
  // The producer's capsule destructor frees the tensor once the capsule goes: keep it until the call ends.
  capsules_.push_back(std::move(capsule));
  return view;
}

OptionalView TensorImports::optional(py::handle obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return require(obj, name);
}

py::object retag_float8(py::object capsule, int code) {
  if (code != dlpack::kDLFloat8_e4m3fn && code != dlpack::kDLFloat8_e5m2)
    fail(ErrorKind::Value, "code: expected DLPack's float8 e4m3fn (", int(dlpack::kDLFloat8_e4m3fn), ") or e5m2 (",
         int(dlpack::kDLFloat8_e5m2), "), got ", code);
  const char* capsule_name = PyCapsule_CheckExact(capsule.ptr()) ? PyCapsule_GetName(capsule.ptr()) : nullptr;
  if (!capsule_name || std::string(capsule_name) != "dltensor")
    fail(ErrorKind::Value, "capsule: expected an unconsumed DLPack capsule (\"dltensor\")");
  auto* m = static_cast<dlpack::DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), capsule_name));
  if (!m) throw py::error_already_set();
  dlpack::DLDataType& dtype = m->dl_tensor.dtype;
  if (dtype.code != dlpack::kDLUInt || dtype.bits != 8 || dtype.lanes != 1)
    fail(ErrorKind::Type, "capsule: expected uint8 bytes to retag, got DLPack dtype code ", int(dtype.code), ", bits ",
         int(dtype.bits));
  dtype.code = uint8_t(code);
  return capsule;
}

void require_error_flag(const OptionalView& flag, const TensorView& like) {
  if (like.device != DeviceType::CUDA) return;
#ifndef LMK_WITH_CUDA
  fail(ErrorKind::Runtime, "lmkernels was built without CUDA: rebuild with LMK_CUDA=on to run on GPU tensors");
#endif
  if (!flag) fail(ErrorKind::Value, "error_flag: required for CUDA tensors (an int32 tensor of shape [1], zeroed)");
  check_dtype(*flag, "error_flag", {DType::Int32});
  check_ndim(*flag, "error_flag", 1);
  check_size(*flag, "error_flag", 0, 1);
  check_writable(*flag, "error_flag");
  check_same_device(*flag, "error_flag", like, "the inputs");
}

}  // namespace lmk::bindings
