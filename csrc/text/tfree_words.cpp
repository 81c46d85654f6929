// The T-FREE splitter in one pass over the text: the official code's regex splits, whitespace
// compression, newline mapping and run-length merging each look at most one segment ahead, so
// they are fused into a stream over segments that emits words as soon as they are decided.
#include "text/tfree_words.h"

#include <array>
#include <cstdint>

#include "common/errors.h"
#include "text/tfree_unicode.h"
#include "text/utf8.h"

namespace lmk::text {
namespace {

constexpr std::string_view kNoWhitespaceToken = "<|no_ws|>";
constexpr std::string_view kWhitespaceToken = "<|ws|>";
constexpr std::string_view kLinebreakToken = "<|\n|>";
constexpr std::string_view kWhitespaceFactorial = "<-ws->";
constexpr std::string_view kLinebreakFactorial = "<-\n->";
// Run tokens of 2 and 4 base tokens: the only lengths the official encoder writes.
constexpr std::string_view kWhitespaceRuns[2] = {"<|2<-ws->|>", "<|4<-ws->|>"};
constexpr std::string_view kLinebreakRuns[2] = {"<|2<-\n->|>", "<|4<-\n->|>"};

// Per-byte flags of the ASCII characters; bytes >= 0x80 have none.
enum : uint8_t {
  kNoSpaceAfter = 1,   // NO_WHITESPACE_AFTER: no space is expected after this character
  kNoSpaceBefore = 2,  // NO_WHITESPACE_BEFORE: no space is expected before this character
  kRunChar = 4,        // \w but neither \d nor "_": joins its neighbours into one segment
};

constexpr std::array<uint8_t, 256> make_byte_flags() {
  std::array<uint8_t, 256> flags{};
  for (const char c : std::string_view("#$=-+*/'\"\\(<[]~^&@%_\n ")) flags[uint8_t(c)] |= kNoSpaceAfter;
  for (const char c : std::string_view(".,:;?!=-+*/'\"\\)>]~^&@%_\n 1234567890")) flags[uint8_t(c)] |= kNoSpaceBefore;
  for (uint32_t c = 0; c < 128; ++c) {
    if (unicode::is_word(c) && !unicode::is_decimal(c) && c != '_') flags[c] |= kRunChar;
  }
  return flags;
}
constexpr std::array<uint8_t, 256> kByteFlags = make_byte_flags();

bool no_space_after(char c) { return kByteFlags[uint8_t(c)] & kNoSpaceAfter; }
bool no_space_before(char c) { return kByteFlags[uint8_t(c)] & kNoSpaceBefore; }
bool is_ascii_digit(char c) { return c >= '0' && c <= '9'; }

bool is_run_code_point(uint32_t c) { return c != '_' && unicode::is_word(c) && !unicode::is_decimal(c); }

// Python's t.startswith("<|") and t.endswith("|>"): the two may overlap ("<|>").
bool is_special_shaped(std::string_view t) {
  return t.size() >= 3 && t[0] == '<' && t[1] == '|' && t[t.size() - 2] == '|' && t.back() == '>';
}

// Where the regex `<\|.*?\|>` (`.` not matching "\n") next matches in text[from..): [begin, end),
// or begin = npos. Linear: a candidate "<|" that meets a newline before any "|>" rules out every
// candidate before that newline too.
struct Span {
  size_t begin, end;
};

Span find_special(std::string_view text, size_t from) {
  constexpr size_t npos = std::string_view::npos;
  const auto closes_at = [text](size_t pos) {
    return text[pos] == '|' && pos + 1 < text.size() && text[pos + 1] == '>';
  };
  size_t open = from;
  while (true) {
    open = text.find("<|", open);
    if (open == npos) return {npos, npos};
    size_t pos = open + 2;
    while (pos < text.size() && text[pos] != '\n' && !closes_at(pos)) ++pos;
    if (pos == text.size()) return {npos, npos};
    if (text[pos] != '\n') return {open, pos + 2};
    open = pos + 1;
  }
}

// One segment of the character split: a maximal run of run characters, or one other character.
// Filled in place (never copied as a whole: copies of small structs stall store forwarding).
struct Segment {
  enum Kind : uint8_t { Space, Linebreak, Other };
  size_t begin, end;
  Kind kind;
  bool no_space_after;   // its last character is in NO_WHITESPACE_AFTER
  bool no_space_before;  // its first character is in NO_WHITESPACE_BEFORE
};

// Splits `text` and hands each word (a view of `text` or of static storage) to `emit`; throws on
// invalid UTF-8. The state lives per call, so concurrent calls are independent.
template <typename Emit>
class Splitter {
 public:
  Splitter(std::string_view text, Emit& emit) : text_(text), emit_(emit) {}

  void run() {
    size_t pos = 0;
    while (true) {
      const Span special = find_special(text_, pos);
      const size_t piece_end = special.begin == std::string_view::npos ? text_.size() : special.begin;
      piece(pos, piece_end);
      if (special.begin == std::string_view::npos) break;
      check_utf8(special.begin, special.end);
      emit_(text_.data() + special.begin, special.end - special.begin);
      pos = special.end;
    }
  }

 private:
  void emit(std::string_view w) { emit_(w.data(), w.size()); }

  [[noreturn]] static void invalid_utf8(size_t pos) { fail(ErrorKind::Value, "text: invalid UTF-8 at byte ", pos); }

  void check_utf8(size_t begin, size_t end) const {
    const size_t bad = utf8::first_invalid(text_.substr(begin, end - begin));
    if (bad != std::string_view::npos) invalid_utf8(begin + bad);
  }

  // A piece between special tokens. One the regex left whole but shaped like a special token (it
  // holds a newline, or is "<|>") is still kept as one word, as the official code does.
  void piece(size_t begin, size_t end) {
    const std::string_view text = text_.substr(begin, end - begin);
    if (is_special_shaped(text)) {
      check_utf8(begin, end);
      emit(text);
      return;
    }
    pos_ = begin;
    end_ = end;
    if (pos_ == end_) return;
    // Whitespace compression needs each segment's neighbours, so segments go through a window
    // of three slots: the previous one, the current one and the next one.
    Segment slots[3];
    Segment* previous = &slots[0];
    Segment* current = &slots[1];
    Segment* next = &slots[2];
    bool has_previous = false;
    read_segment(*current);
    while (true) {
      const bool has_next = pos_ < end_;
      if (has_next) read_segment(*next);
      if (has_previous && current->kind != Segment::Space && previous->kind != Segment::Space &&
          !previous->no_space_after && !current->no_space_before) {
        word(kNoWhitespaceToken.data(), kNoWhitespaceToken.size());  // an expected space is missing
      }
      if (current->kind == Segment::Space) {
        // A space is dropped only where it is expected: between neighbours that expect one.
        if (!has_previous || !has_next || previous->no_space_after || next->no_space_before) repeat(false);
      } else if (current->kind == Segment::Linebreak) {
        repeat(true);
      } else {
        word(text_.data() + current->begin, current->end - current->begin);
      }
      if (!has_next) break;
      Segment* const free_slot = previous;
      previous = current;
      current = next;
      next = free_slot;
      has_previous = true;
    }
    flush_run();
  }

  void read_segment(Segment& segment) {
    const size_t begin = pos_;
    segment.begin = begin;
    const unsigned char lead = static_cast<unsigned char>(text_[begin]);
    if (lead < 0x80u) {
      if (kByteFlags[lead] & kRunChar) return read_run(segment, begin + 1);
      pos_ = segment.end = begin + 1;
      segment.kind = lead == ' ' ? Segment::Space : lead == '\n' ? Segment::Linebreak : Segment::Other;
      segment.no_space_after = no_space_after(char(lead));
      segment.no_space_before = no_space_before(char(lead));
      return;
    }
    const utf8::Decoded d = utf8::decode(text_.substr(0, end_), begin);
    if (d.length == 0) invalid_utf8(begin);
    if (is_run_code_point(d.code_point)) return read_run(segment, begin + d.length);
    pos_ = segment.end = begin + d.length;
    segment.kind = Segment::Other;
    segment.no_space_after = segment.no_space_before = false;
  }

  // The rest of a run of run characters, from `pos`.
  void read_run(Segment& segment, size_t pos) {
    const std::string_view piece = text_.substr(0, end_);
    while (pos < end_) {
      const unsigned char byte = static_cast<unsigned char>(text_[pos]);
      if (byte < 0x80u) {
        if (!(kByteFlags[byte] & kRunChar)) break;
        ++pos;
        continue;
      }
      const utf8::Decoded d = utf8::decode(piece, pos);
      if (d.length == 0) invalid_utf8(pos);
      if (!is_run_code_point(d.code_point)) break;
      pos += d.length;
    }
    pos_ = segment.end = pos;
    segment.kind = Segment::Other;
    segment.no_space_after = segment.no_space_before = false;  // run characters are in neither set
  }

  void word(const char* data, size_t size) {
    flush_run();
    emit_(data, size);
  }

  // <|ws|> and <|\n|> are merged into run-length tokens when they repeat.
  void repeat(bool linebreak) {
    if (run_count_ > 0 && run_is_linebreak_ != linebreak) flush_run();
    run_is_linebreak_ = linebreak;
    ++run_count_;
  }

  // A run of c base tokens: (c div 2) pairs written as 4-runs while more than two pairs are left,
  // then a 2- or 4-run of the rest, then the odd token.
  void flush_run() {
    if (run_count_ == 0) return;
    const std::string_view* runs = run_is_linebreak_ ? kLinebreakRuns : kWhitespaceRuns;
    size_t pairs = run_count_ / 2;
    for (; pairs > 2; pairs -= 2) emit(runs[1]);
    if (pairs > 0) emit(runs[pairs - 1]);
    if (run_count_ % 2) emit(run_is_linebreak_ ? kLinebreakToken : kWhitespaceToken);
    run_count_ = 0;
  }

  std::string_view text_;
  Emit& emit_;
  size_t pos_ = 0, end_ = 0;
  bool run_is_linebreak_ = false;
  size_t run_count_ = 0;
};

template <typename Word>
void split_into(std::string_view text, std::vector<Word>& words) {
  const size_t before = words.size();
  auto emit = [&words](const char* data, size_t size) { words.emplace_back(data, size); };
  try {
    Splitter<decltype(emit)>(text, emit).run();
  } catch (...) {
    words.resize(before);
    throw;
  }
}

// A run-length token's expansion: `count` copies of `character` (0 for a word that is no such token).
struct RunLength {
  char character;
  size_t count;
};

// Python's rule: "<|" + digits + ... + "|>" containing "<-ws->" (spaces, checked first) or "<-\n->".
RunLength parse_run_length(std::string_view w, size_t index) {
  if (w.size() < 4 || !is_ascii_digit(w[2])) return {0, 0};
  char character;
  if (w.find(kWhitespaceFactorial) != std::string_view::npos) character = ' ';
  else if (w.find(kLinebreakFactorial) != std::string_view::npos) character = '\n';
  else return {0, 0};
  size_t count = 0;
  for (size_t i = 2; is_ascii_digit(w[i]); ++i) {  // stops at the closing "|>" at the latest
    count = count * 10 + size_t(w[i] - '0');
    if (count > kMaxRunLength)
      fail(ErrorKind::Value, "words[", index, "]: run-length token counts more than ", kMaxRunLength, " characters");
  }
  return {character, count};
}

}  // namespace

void tfree_split(std::string_view text, std::vector<std::string>& words) { split_into(text, words); }

void tfree_split_views(std::string_view text, std::vector<std::string_view>& words) { split_into(text, words); }

std::string tfree_join(const std::vector<std::string_view>& words) {
  size_t size = 0;
  for (const std::string_view w : words) size += w.size() + 1;
  std::string text;
  text.reserve(size);
  // Whether the last word written was an ordinary word, and its last byte: a space goes between
  // two ordinary words unless either side says none is expected.
  bool previous_ordinary = false;
  char previous_last = 0;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string_view w = words[i];
    if (w.empty()) fail(ErrorKind::Value, "words[", i, "]: empty word (the splitter never writes one)");
    if (!is_special_shaped(w)) {
      if (previous_ordinary && !no_space_after(previous_last) && !no_space_before(w[0])) text += ' ';
      text += w;
      previous_ordinary = true;
      previous_last = w.back();
      continue;
    }
    const RunLength run = parse_run_length(w, i);
    if (run.character != 0) {
      if (run.count == 0) continue;  // expands to nothing: its neighbours meet
      text.append(run.count, run.character);
    } else if (w == kWhitespaceToken) {
      text += ' ';
    } else if (w == kLinebreakToken) {
      text += '\n';
    } else if (w != kNoWhitespaceToken) {
      text += w;
    }
    previous_ordinary = false;
  }
  return text;
}

}  // namespace lmk::text
