// The forward word-bound state machine of unicode-segmentation 1.12.0, one segment per call.
//
// It reads characters until the segment is decided. Extend, Format and ZWJ characters after the
// first are skipped without changing the state (rule WB4), except that a pictograph right after
// a ZWJ always continues the segment (WB3c). Across MidLetter / MidNum characters (WB6-7,
// WB11-12) the machine looks one letter or digit ahead and backs up to the punctuation when the
// lookahead fails.
#include "text/uax29_words.h"

namespace lmk::text {
namespace {

using namespace hat_unicode;

enum class State { Start, Letter, HebrewLetter, Numeric, Katakana, ExtendNumLet, RegionalHalf, RegionalFull,
                   AfterFormatExtend, Zwj, Emoji, WSegSpace };

// What AfterFormatExtend waits for: the character that decides the segment after a MidLetter-like
// character (Require*: else back up), or after a run of Extend/Format at the start (AcceptNone).
enum class Expect { AcceptNone, RequireLetter, RequireHebrewLetter, AcceptQuoteLetter, RequireNumeric };

WordBreak word_break(uint16_t properties) { return static_cast<WordBreak>(properties & kWordBreakMask); }
bool is_pictographic(uint16_t properties) { return properties & kExtendedPictographic; }
bool is_ignored(WordBreak w) { return w == kExtend || w == kFormat || w == kZWJ; }
bool is_ascii_letter(unsigned char b) { return static_cast<unsigned char>((b | 0x20u) - 'a') < 26u; }
bool is_ascii_digit(unsigned char b) { return static_cast<unsigned char>(b - '0') < 10u; }

}  // namespace

size_t uax29_segment_end(std::string_view text, size_t start) {
  State state = State::Start;
  Expect expect = Expect::AcceptNone;
  WordBreak current = kOther;  // the category of the last character read (skipped ones included)
  size_t saved = start;        // where to back up to when a Require* lookahead fails
  bool skipped_ignored = false;
  size_t pos = start;
  size_t length = 0;
  bool take_current = true;    // the decided segment ends after (true) or before the character at pos
  bool decided = false;

  while (pos < text.size() && !decided) {
    // Fast path: ASCII letters and digits inside a word continue it (WB5, WB8-WB10, WB13b).
    if (state == State::Letter || state == State::HebrewLetter || state == State::Numeric ||
        state == State::ExtendNumLet) {
      const auto byte = static_cast<unsigned char>(text[pos]);
      if (is_ascii_letter(byte) || is_ascii_digit(byte)) {
        state = is_ascii_digit(byte) ? State::Numeric : State::Letter;
        current = is_ascii_digit(byte) ? kNumeric : kALetter;
        ++pos;
        continue;
      }
    }
    const CharInfo c = char_info_at(text, pos);
    length = c.length;
    const bool after_zwj = current == kZWJ;
    current = word_break(c.properties);

    if (state != State::Start && is_ignored(current)) {  // WB4
      skipped_ignored = true;
      pos += length;
      continue;
    }
    if (after_zwj && is_pictographic(c.properties)) {  // WB3c
      state = State::Emoji;
      pos += length;
      continue;
    }
    const auto stop_before = [&] {
      take_current = false;
      decided = true;
    };
    const auto stop_after = [&] { decided = true; };

    switch (state) {
      case State::Start:
        switch (current) {
          case kCR:  // WB3: CR LF is one segment; WB3a: else CR stands alone
            if (pos + 1 < text.size() && text[pos + 1] == '\n') {
              ++pos;
              length = 1;
            }
            stop_after();
            break;
          case kALetter: state = State::Letter; break;
          case kHebrewLetter: state = State::HebrewLetter; break;
          case kNumeric: state = State::Numeric; break;
          case kKatakana: state = State::Katakana; break;
          case kExtendNumLet: state = State::ExtendNumLet; break;
          case kRegionalIndicator: state = State::RegionalHalf; break;
          case kLF:
          case kNewline: stop_after(); break;
          case kZWJ: state = State::Zwj; break;
          case kWSegSpace: state = State::WSegSpace; break;
          default: {
            // Anything else (Extend and Format included) keeps the ignorable characters after it.
            const size_t next = pos + length;
            if (next < text.size() && is_ignored(word_break(char_info_at(text, next).properties))) {
              state = State::AfterFormatExtend;
              expect = Expect::AcceptNone;
            } else {
              stop_after();  // WB999
            }
          }
        }
        break;
      case State::WSegSpace:  // WB3d, unless an ignored character came between the spaces
        if (current == kWSegSpace && !skipped_ignored) break;
        stop_before();
        break;
      case State::Zwj:
      case State::Emoji:
      case State::RegionalFull:
        stop_before();
        break;
      case State::Letter:
      case State::HebrewLetter:
        switch (current) {
          case kALetter: state = State::Letter; break;             // WB5
          case kHebrewLetter: state = State::HebrewLetter; break;  // WB5
          case kNumeric: state = State::Numeric; break;            // WB9
          case kExtendNumLet: state = State::ExtendNumLet; break;  // WB13a
          case kDoubleQuote:
            if (state == State::HebrewLetter) {  // WB7b
              saved = pos;
              state = State::AfterFormatExtend;
              expect = Expect::RequireHebrewLetter;
            } else {
              stop_before();
            }
            break;
          case kSingleQuote:
            if (state == State::HebrewLetter) {  // WB7a
              state = State::AfterFormatExtend;
              expect = Expect::AcceptQuoteLetter;
              break;
            }
            [[fallthrough]];
          case kMidLetter:
          case kMidNumLet:  // WB6
            saved = pos;
            state = State::AfterFormatExtend;
            expect = Expect::RequireLetter;
            break;
          default: stop_before();
        }
        break;
      case State::Numeric:
        switch (current) {
          case kNumeric: break;                                    // WB8
          case kALetter: state = State::Letter; break;             // WB10
          case kHebrewLetter: state = State::HebrewLetter; break;  // WB10
          case kExtendNumLet: state = State::ExtendNumLet; break;  // WB13a
          case kMidNum:
          case kMidNumLet:
          case kSingleQuote:  // WB12
            saved = pos;
            state = State::AfterFormatExtend;
            expect = Expect::RequireNumeric;
            break;
          default: stop_before();
        }
        break;
      case State::Katakana:
        if (current == kKatakana) break;  // WB13
        if (current == kExtendNumLet) {   // WB13a
          state = State::ExtendNumLet;
          break;
        }
        stop_before();
        break;
      case State::ExtendNumLet:
        switch (current) {
          case kExtendNumLet: break;                               // WB13a
          case kALetter: state = State::Letter; break;             // WB13b
          case kHebrewLetter: state = State::HebrewLetter; break;  // WB13b
          case kNumeric: state = State::Numeric; break;            // WB13b
          case kKatakana: state = State::Katakana; break;          // WB13b
          default: stop_before();
        }
        break;
      case State::RegionalHalf:  // WB15/16: flags pair up
        if (current == kRegionalIndicator) {
          state = State::RegionalFull;
          break;
        }
        stop_before();
        break;
      case State::AfterFormatExtend: {
        const bool wants_letter = expect == Expect::RequireLetter || expect == Expect::AcceptQuoteLetter;
        if (expect == Expect::RequireNumeric && current == kNumeric) {  // WB11
          state = State::Numeric;
        } else if (wants_letter && current == kALetter) {  // WB7
          state = State::Letter;
        } else if ((wants_letter || expect == Expect::RequireHebrewLetter) && current == kHebrewLetter) {  // WB7a-c
          state = State::HebrewLetter;
        } else if (expect == Expect::AcceptNone || expect == Expect::AcceptQuoteLetter) {
          stop_before();
        } else {
          stop_after();  // a failed Require*: backed up below
        }
        break;
      }
    }
    if (!decided) pos += length;
  }

  if (state == State::AfterFormatExtend &&
      (expect == Expect::RequireLetter || expect == Expect::RequireHebrewLetter || expect == Expect::RequireNumeric)) {
    return saved;
  }
  if (!decided) return text.size();
  return take_current ? pos + length : pos;
}

}  // namespace lmk::text
