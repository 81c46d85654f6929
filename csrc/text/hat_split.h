// The HAT word splitter, exact to the official `hat-splitter` 0.1.10 (Rust): UAX #29 word
// boundaries (unicode-segmentation 1.12.0, no dictionary segmentation), a cut after every
// punctuation character (general category P*) and between a lowercase and an uppercase letter,
// runs of single-space segments merged, then the segments grouped: one leading space joins the
// word after it and punctuation joins the word or punctuation before it. Unicode 16.0.0.
//
// A split is a partition of the text, so words are given by their end offsets in bytes.
// With a byte limit, a longer word is cut into chunks of at most `max_bytes` bytes, each cut moved
// back to the last character boundary inside the chunk when there is one (else the cut falls
// inside a character: chunks need not be valid UTF-8).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace lmk::text {

constexpr size_t kNoByteLimit = SIZE_MAX;

// Appends the end offset of each word of `text` (UTF-8) to `word_ends`; max_bytes >= 1, or
// kNoByteLimit. Invalid UTF-8 throws lmk::Error(Value) and leaves `word_ends` as it was.
void hat_split(std::string_view text, size_t max_bytes, std::vector<size_t>& word_ends);

// A special token of the HAT models (e.g. "<|eot_id|>"): where its text occurs, it becomes a
// one-byte word with this byte (never valid UTF-8 on its own, e.g. 192).
struct HatSpecialToken {
  std::string_view text;  // not empty
  uint8_t byte;
};

// Texts split as the HAT models' splitter does, into flat arrays that the caller sizes: words
// never outgrow the texts (a special token shrinks to one byte), so `bytes` needs the total
// size of the texts and `word_offsets` one more element than that.
struct HatBatchOutput {
  uint8_t* bytes;                // the words back to back
  size_t bytes_capacity;
  int64_t* word_offsets;         // [words + 1]: word w is bytes[word_offsets[w] .. word_offsets[w+1])
  size_t word_offsets_capacity;
  int64_t* text_word_offsets;    // [texts + 1]: the words of text t are text_word_offsets[t] .. [t+1]
};

struct HatBatchCounts {
  size_t bytes;
  size_t words;
};

// Each text is cut at the occurrences of the special tokens (leftmost first; at one position the
// first token of `specials` that matches), the pieces between them split with `max_bytes`, and
// every special token is a one-byte word. Texts run in parallel (parallel_for). Throws
// lmk::Error(Value) naming the text on invalid UTF-8, and when an output is too small.
HatBatchCounts hat_split_batch(const std::vector<std::string_view>& texts, size_t max_bytes,
                               const std::vector<HatSpecialToken>& specials, const HatBatchOutput& out);

}  // namespace lmk::text
