// Streaming (non-temporal) stores of sixteen values, for outputs far larger than the last-level
// cache that nothing reads soon (a dense embedding gradient, say). A streaming store sends the
// line to memory without first reading it into cache (halving the output's memory traffic) and
// without evicting the inputs that the kernel keeps re-reading from cache.
//
// x86-64: SSE2 stores, which every x86-64 level has, so they compile unchanged inside each
// LMK_SIMD_CLONES clone (the AVX clones encode them with VEX); the write-combining buffers merge the
// 16-byte pieces into whole lines. Elsewhere: the plain store16 of vec.h. Values are the same bits
// either way; only the cache policy differs.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/vec.h"

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace lmk::vec {

// Whether rows of `row_bytes` bytes starting at `data` can be written by stream16 (16-byte aligned).
inline bool streamable(const void* data, int64_t row_bytes) {
  return reinterpret_cast<uintptr_t>(data) % 16 == 0 && row_bytes % 16 == 0;
}

#if defined(__x86_64__)
__attribute__((always_inline)) inline void stream32_bytes(void* out, const void* bytes) {
  __m128i lo, hi;
  std::memcpy(&lo, bytes, 16);
  std::memcpy(&hi, static_cast<const char*>(bytes) + 16, 16);
  _mm_stream_si128(static_cast<__m128i*>(out), lo);
  _mm_stream_si128(static_cast<__m128i*>(out) + 1, hi);
}

// Streaming stores are weakly ordered: a thread must fence them before another thread reads the data.
inline void stream_fence() { _mm_sfence(); }
#else
__attribute__((always_inline)) inline void stream32_bytes(void* out, const void* bytes) { std::memcpy(out, bytes, 32); }
inline void stream_fence() {}
#endif

// store16 with a streaming store; `out` 16-byte aligned. fp32: elements 0-7 then 8-15.
template <typename T>
__attribute__((always_inline)) inline void stream16(T* out, f32x8 a, f32x8 b) {
  store16(out, a, b);
}

template <>
__attribute__((always_inline)) inline void stream16(float* out, f32x8 a, f32x8 b) {
  stream32_bytes(out, &a);
  stream32_bytes(out + 8, &b);
}

// bf16: the even and the odd elements, rounded and interleaved as store16 does.
template <>
__attribute__((always_inline)) inline void stream16(bfloat16* out, f32x8 even, f32x8 odd) {
  const u32x8 pairs = (round_to_bf16_high(even) >> 16) | round_to_bf16_high(odd);
  stream32_bytes(out, &pairs);
}

// fp16: elements 0-7 then 8-15, rounded as store16 does.
template <>
__attribute__((always_inline)) inline void stream16(float16* out, f32x8 a, f32x8 b) {
  const u16x8 halves[2] = {round_to_fp16(a), round_to_fp16(b)};
  stream32_bytes(out, halves);
}

// store16 (kStream false) or stream16 (true), for kernels templated on the output path.
template <bool kStream, typename T>
__attribute__((always_inline)) inline void store_or_stream16(T* out, f32x8 a, f32x8 b) {
  if constexpr (kStream)
    stream16(out, a, b);
  else
    store16(out, a, b);
}

}  // namespace lmk::vec
