// Element types that cross the native boundary, and their names for error messages.
#pragma once
#include <cstdint>

namespace lmk {

enum class DType : uint8_t {
  Float32, Float16, BFloat16, Float8E4M3FN, Float8E5M2, Int8, UInt8, Int32, Int64, Bool,
};

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Float8E4M3FN: return "float8_e4m3fn";
    case DType::Float8E5M2: return "float8_e5m2";
    case DType::Int8: return "int8";
    case DType::UInt8: return "uint8";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::Bool: return "bool";
  }
  return "unknown";
}

inline int dtype_itemsize(DType t) {
  switch (t) {
    case DType::Float32: case DType::Int32: return 4;
    case DType::Int64: return 8;
    case DType::Float16: case DType::BFloat16: return 2;
    default: return 1;
  }
}

enum class DeviceType : uint8_t { CPU, CUDA };

inline const char* device_name(DeviceType d) { return d == DeviceType::CPU ? "cpu" : "cuda"; }

}  // namespace lmk
