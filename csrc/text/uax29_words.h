// UAX #29 word boundaries as the Rust crate unicode-segmentation 1.12.0 finds them going forward
// (`split_word_bounds`), Unicode 16.0.0, without dictionary segmentation: every Han or Hiragana
// character and every Thai letter run ends where the default rules say.
//
// The HAT models were trained on the crate's output, so this is a port of its forward state
// machine rather than of the rules, whose corners it treats its own way (for instance a ZWJ and
// a pictograph after a letter and an apostrophe end the pending MidLetter lookahead without
// backing up: "a'" + ZWJ + pictograph is one segment, where the rules break before the "'").
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "text/hat_unicode.h"
#include "text/utf8.h"

namespace lmk::text {

// The encoded length and the packed hat_unicode properties of the character at text[pos].
struct CharInfo {
  uint32_t length;
  uint16_t properties;
};

// The properties of the ASCII characters, one load away (most text is mostly ASCII).
struct AsciiProperties {
  uint16_t of[128];
};
inline constexpr AsciiProperties kAsciiProperties = [] {
  AsciiProperties table{};
  for (uint32_t c = 0; c < 128; ++c) table.of[c] = hat_unicode::properties(c);
  return table;
}();

// text[pos] starts a valid UTF-8 sequence.
inline CharInfo char_info_at(std::string_view text, size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80u) return {1, kAsciiProperties.of[lead]};
  const utf8::Decoded decoded = utf8::decode(text, pos);
  return {decoded.length, hat_unicode::properties(decoded.code_point)};
}

// The end of the word-bound segment that starts at `start` (< text.size(), a character boundary)
// of valid UTF-8 `text`.
size_t uax29_segment_end(std::string_view text, size_t start);

}  // namespace lmk::text
