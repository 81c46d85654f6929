// Strict UTF-8 decoding (RFC 3629): overlong forms, surrogates (U+D800..U+DFFF) and code points
// above U+10FFFF are invalid, as in Python's codec.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace lmk::text::utf8 {

// One decoded code point and its encoded length; length 0 marks an invalid sequence.
struct Decoded {
  uint32_t code_point;
  uint32_t length;
};

inline bool is_continuation(unsigned char byte) { return (byte & 0xC0u) == 0x80u; }

// Decodes the code point starting at s[pos] (pos < s.size()).
inline Decoded decode(std::string_view s, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[pos + i]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80u) return {lead, 1};
  const size_t left = s.size() - pos;
  if (lead < 0xC2u) return {0, 0};  // a continuation byte, or the lead of an overlong 2-byte form
  if (lead < 0xE0u) {
    if (left < 2 || !is_continuation(byte(1))) return {0, 0};
    return {(lead & 0x1Fu) << 6 | (byte(1) & 0x3Fu), 2};
  }
  if (lead < 0xF0u) {
    if (left < 3 || !is_continuation(byte(1)) || !is_continuation(byte(2))) return {0, 0};
    const uint32_t c = (lead & 0x0Fu) << 12 | (byte(1) & 0x3Fu) << 6 | (byte(2) & 0x3Fu);
    if (c < 0x800u || (c >= 0xD800u && c <= 0xDFFFu)) return {0, 0};
    return {c, 3};
  }
  if (lead < 0xF5u) {
    if (left < 4 || !is_continuation(byte(1)) || !is_continuation(byte(2)) || !is_continuation(byte(3))) {
      return {0, 0};
    }
    const uint32_t c = (lead & 0x07u) << 18 | (byte(1) & 0x3Fu) << 12 | (byte(2) & 0x3Fu) << 6 | (byte(3) & 0x3Fu);
    if (c < 0x10000u || c > 0x10FFFFu) return {0, 0};
    return {c, 4};
  }
  return {0, 0};
}

// Position of the first byte of the first invalid sequence in s, or npos when s is valid.
inline size_t first_invalid(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<unsigned char>(s[pos]) < 0x80u) {
      ++pos;
      continue;
    }
    const Decoded d = decode(s, pos);
    if (d.length == 0) return pos;
    pos += d.length;
  }
  return std::string_view::npos;
}

}  // namespace lmk::text::utf8
