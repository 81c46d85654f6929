// The HAT splitter in one pass: the official code's stages (word bounds, punctuation and camelCase
// cuts, space merging, classification, grouping, byte limit) each look at most one piece ahead,
// so they are fused into a stream over pieces that emits a word as soon as the next group starts.
#include "text/hat_split.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <string>

#include "common/errors.h"
#include "common/parallel.h"
#include "text/hat_unicode.h"
#include "text/uax29_words.h"
#include "text/utf8.h"

namespace lmk::text {
namespace {

using hat_unicode::kLowercaseLetter;
using hat_unicode::kPunctuation;
using hat_unicode::kUppercaseLetter;
using hat_unicode::kWhiteSpace;

// The official token kinds; a word is a group of tokens.
enum class Kind { Space, Whitespace, Punctuation, Word };

// The stages after the piece cuts, fed one piece at a time. Pieces tile the text in order.
class WordStream {
 public:
  WordStream(std::string_view text, size_t max_bytes, std::vector<size_t>& word_ends)
      : text_(text), max_bytes_(max_bytes), word_ends_(word_ends) {}

  // The piece text[begin, end), made of `chars` characters of which the first has `properties`.
  void add_piece(size_t begin, size_t end, size_t chars, uint16_t properties, bool all_white_space) {
    const bool single_space = end - begin == 1 && text_[begin] == ' ';
    if (single_space && has_token_ && token_all_spaces_) {  // combine_spaces
      token_end_ = end;
      return;
    }
    if (has_token_) finish_token();
    has_token_ = true;
    token_begin_ = begin;
    token_end_ = end;
    token_chars_ = chars;
    token_first_properties_ = properties;
    token_all_white_space_ = all_white_space;
    token_all_spaces_ = std::all_of(text_.begin() + begin, text_.begin() + end, [](char c) { return c == ' '; });
  }

  // Flushes the last token and group.
  void finish() {
    if (has_token_) finish_token();
    if (has_group_) emit_word(group_begin_, text_.size());
  }

 private:
  Kind token_kind() const {
    if (token_end_ - token_begin_ == 1 && text_[token_begin_] == ' ') return Kind::Space;
    if (token_all_white_space_) return Kind::Whitespace;  // merged spaces are all spaces too
    if (token_chars_ == 1 && (token_first_properties_ & kPunctuation)) return Kind::Punctuation;
    return Kind::Word;
  }

  void finish_token() {
    const Kind kind = token_kind();
    const bool joins = has_group_ && ((last_kind_ == Kind::Space && kind == Kind::Word) ||
                                      (last_kind_ != Kind::Whitespace && kind == Kind::Punctuation));
    if (!joins) {
      if (has_group_) emit_word(group_begin_, token_begin_);
      has_group_ = true;
      group_begin_ = token_begin_;
    }
    last_kind_ = kind;
  }

  // split_long_words: chunks of at most max_bytes, cut at the last character boundary that
  // leaves a non-empty chunk, or mid-character when there is none.
  void emit_word(size_t begin, size_t end) {
    while (end - begin > max_bytes_) {
      size_t cut = begin + max_bytes_;
      while (cut > begin + 1 && utf8::is_continuation(static_cast<unsigned char>(text_[cut]))) --cut;
      if (utf8::is_continuation(static_cast<unsigned char>(text_[cut]))) cut = begin + max_bytes_;
      word_ends_.push_back(cut);
      begin = cut;
    }
    word_ends_.push_back(end);
  }

  std::string_view text_;
  size_t max_bytes_;
  std::vector<size_t>& word_ends_;

  bool has_token_ = false;
  size_t token_begin_ = 0, token_end_ = 0, token_chars_ = 0;
  uint16_t token_first_properties_ = 0;
  bool token_all_white_space_ = false, token_all_spaces_ = false;

  bool has_group_ = false;
  size_t group_begin_ = 0;
  Kind last_kind_ = Kind::Word;
};

// Cuts the segment text[begin, end) after every punctuation character and between a lowercase
// and an uppercase letter, feeding the pieces to `words`.
void cut_segment(std::string_view text, size_t begin, size_t end, WordStream& words) {
  size_t piece_begin = begin, chars = 0;
  uint16_t first_properties = 0;
  bool all_white_space = true;
  CharInfo c = char_info_at(text, begin);
  for (size_t pos = begin; pos < end;) {
    const size_t next = pos + c.length;
    if (chars == 0) first_properties = c.properties;
    ++chars;
    all_white_space = all_white_space && (c.properties & kWhiteSpace);
    bool cut = c.properties & kPunctuation;
    CharInfo following{0, 0};
    if (next < end) {
      following = char_info_at(text, next);
      cut = cut || ((c.properties & kLowercaseLetter) && (following.properties & kUppercaseLetter));
    }
    if (cut || next == end) {
      words.add_piece(piece_begin, next, chars, first_properties, all_white_space);
      piece_begin = next;
      chars = 0;
      all_white_space = true;
    }
    pos = next;
    c = following;
  }
}

// Raises ValueError naming `what` (`what[index]` for an item of a batch) at the first invalid byte.
// The name is formatted only then: once per text, it had cost more than splitting a paragraph.
void check_utf8(std::string_view text, const char* what, std::optional<size_t> index = std::nullopt) {
  const size_t bad = utf8::first_invalid(text);
  if (bad == std::string_view::npos) return;
  if (index) fail(ErrorKind::Value, what, "[", *index, "]: invalid UTF-8 at byte ", bad);
  fail(ErrorKind::Value, what, ": invalid UTF-8 at byte ", bad);
}

// hat_split of valid UTF-8.
void split_valid(std::string_view text, size_t max_bytes, std::vector<size_t>& word_ends) {
  WordStream words(text, max_bytes, word_ends);
  for (size_t begin = 0; begin < text.size();) {
    const size_t end = uax29_segment_end(text, begin);
    cut_segment(text, begin, end, words);
    begin = end;
  }
  words.finish();
}

// One text of a batch, split with its special tokens: the words' bytes (only when a special token
// occurred, else they are the text) and the words' end offsets into them.
struct SplitText {
  std::string replaced;
  bool has_special = false;
  std::vector<size_t> word_ends;
  size_t bytes = 0;
};

// The special tokens, and which bytes start one (the tokens are compared only where one may start).
struct Specials {
  const std::vector<HatSpecialToken>& tokens;
  std::array<bool, 256> starts_one{};

  explicit Specials(const std::vector<HatSpecialToken>& t) : tokens(t) {
    for (const HatSpecialToken& special : tokens) starts_one[static_cast<unsigned char>(special.text[0])] = true;
  }

  // The first token that starts at text[pos], or nullptr.
  const HatSpecialToken* at(std::string_view text, size_t pos) const {
    if (!starts_one[static_cast<unsigned char>(text[pos])]) return nullptr;
    for (const HatSpecialToken& special : tokens) {
      if (text.compare(pos, special.text.size(), special.text) == 0) return &special;
    }
    return nullptr;
  }
};

void split_with_specials(std::string_view text, size_t max_bytes, const Specials& specials, SplitText& out) {
  size_t chunk_begin = 0;
  std::vector<size_t> chunk_ends;
  const auto add_chunk = [&](size_t end) {
    if (end == chunk_begin) return;
    const std::string_view chunk = text.substr(chunk_begin, end - chunk_begin);
    chunk_ends.clear();
    split_valid(chunk, max_bytes, chunk_ends);
    const size_t base = out.replaced.size();
    out.replaced.append(chunk);
    for (const size_t e : chunk_ends) out.word_ends.push_back(base + e);
  };
  for (size_t pos = 0; pos < text.size();) {
    const HatSpecialToken* special = specials.at(text, pos);
    if (special == nullptr) {
      ++pos;
      continue;
    }
    add_chunk(pos);
    out.replaced.push_back(static_cast<char>(special->byte));
    out.word_ends.push_back(out.replaced.size());
    out.has_special = true;
    pos += special->text.size();
    chunk_begin = pos;
  }
  add_chunk(text.size());
  out.bytes = out.replaced.size();
}

}  // namespace

void hat_split(std::string_view text, size_t max_bytes, std::vector<size_t>& word_ends) {
  if (max_bytes == 0) fail(ErrorKind::Value, "max_bytes: expected at least 1, got 0");
  check_utf8(text, "text");
  split_valid(text, max_bytes, word_ends);
}

HatBatchCounts hat_split_batch(const std::vector<std::string_view>& texts, size_t max_bytes,
                               const std::vector<HatSpecialToken>& specials, const HatBatchOutput& out) {
  if (max_bytes == 0) fail(ErrorKind::Value, "max_bytes: expected at least 1, got 0");
  for (size_t i = 0; i < specials.size(); ++i) {
    if (specials[i].text.empty()) fail(ErrorKind::Value, "special_tokens[", i, "]: empty token text");
  }
  size_t total = 0;
  for (size_t t = 0; t < texts.size(); ++t) {
    check_utf8(texts[t], "texts", t);
    total += texts[t].size();
  }
  if (out.bytes_capacity < total) fail(ErrorKind::Value, "bytes: holds ", out.bytes_capacity, " bytes, the texts need ", total);
  if (out.word_offsets_capacity < total + 1) {
    fail(ErrorKind::Value, "word_offsets: holds ", out.word_offsets_capacity, " offsets, the texts need ", total + 1);
  }

  const Specials special_tokens(specials);
  std::vector<SplitText> split(texts.size());
  const auto split_range = [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      if (specials.empty()) {
        split_valid(texts[t], max_bytes, split[t].word_ends);
        split[t].bytes = texts[t].size();
      } else {
        split_with_specials(texts[t], max_bytes, special_tokens, split[t]);
      }
    }
  };
  parallel_for(0, static_cast<int64_t>(texts.size()), 1, split_range);

  // Where each text's bytes and words go.
  std::vector<size_t> byte_base(texts.size() + 1, 0), word_base(texts.size() + 1, 0);
  for (size_t t = 0; t < texts.size(); ++t) {
    byte_base[t + 1] = byte_base[t] + split[t].bytes;
    word_base[t + 1] = word_base[t] + split[t].word_ends.size();
  }
  const auto write_range = [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const SplitText& s = split[t];
      const char* source = s.has_special ? s.replaced.data() : texts[t].data();
      if (s.bytes > 0) std::memcpy(out.bytes + byte_base[t], source, s.bytes);
      int64_t* offsets = out.word_offsets + word_base[t] + 1;
      for (size_t w = 0; w < s.word_ends.size(); ++w) offsets[w] = static_cast<int64_t>(byte_base[t] + s.word_ends[w]);
      out.text_word_offsets[t + 1] = static_cast<int64_t>(word_base[t + 1]);
    }
  };
  out.word_offsets[0] = 0;
  out.text_word_offsets[0] = 0;
  // Serial: copying is a few percent of splitting, and a second parallel region would cost another
  // wait for the slowest thread (most of the copy's time when the cores are shared).
  write_range(0, static_cast<int64_t>(texts.size()));
  return {byte_base.back(), word_base.back()};
}

}  // namespace lmk::text
