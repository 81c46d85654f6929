#include "text/tfree_encode.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "common/errors.h"
#include "common/parallel.h"
#include "text/tfree_words.h"

namespace lmk::text {
namespace {

constexpr std::string_view kEndOfText = "<|endoftext|>";

// The whitespace markers the splitter emits (a sixth of all words in English prose) and the
// end-of-text token: their rows are hashed once per call instead of once per occurrence.
constexpr std::string_view kFrequentHashedWords[] = {"<|ws|>", "<|no_ws|>", "<|\n|>", "<|2<-ws->|>", "<|4<-ws->|>",
                                                     "<|2<-\n->|>", "<|4<-\n->|>", kEndOfText};

struct HashedRows {
  explicit HashedRows(const PatternTable& table) : m(table.config().m) {
    rows.resize(std::size(kFrequentHashedWords) * m);
    for (size_t i = 0; i < std::size(kFrequentHashedWords); ++i)
      table.hashed_word(kFrequentHashedWords[i], rows.data() + i * m);
  }
  // Writes the row of `word` to out[0..m).
  void write(const PatternTable& table, std::string_view word, int32_t* out) const {
    for (size_t i = 0; i < std::size(kFrequentHashedWords); ++i)
      if (word == kFrequentHashedWords[i]) {
        std::copy_n(rows.data() + i * m, m, out);
        return;
      }
    table.hashed_word(word, out);
  }
  int m;
  std::vector<int32_t> rows;
};

// One text's words, rows and ids, produced independently by one task.
struct TextEncoding {
  std::vector<int64_t> rows_per_word;
  std::vector<int32_t> rows;
  std::vector<int32_t> trigram_ids;
  std::vector<uint8_t> is_endoftext;
};

// Pattern rows are looked up in one batch per run of trigram rows, so that the table's random
// reads overlap (its rows are spread over hundreds of megabytes) instead of waiting in turn.
void encode_text(PatternTable& table, const HashedRows& hashed_rows, std::string_view text,
                 const EncodeOptions& options, TextEncoding& out) {
  std::vector<std::string> words;
  if (options.split_words) {
    tfree_split(text, words);
  } else {
    if (text.empty()) fail(ErrorKind::Value, "expected a non-empty word");
    words.emplace_back(text);
  }
  std::vector<std::pair<size_t, const std::string*>> hashed;  // (row, word) of the words hashed whole
  std::vector<uint32_t> ids;
  for (const std::string& word : words) {
    out.is_endoftext.push_back(word == kEndOfText);
    if (options.entire_words || is_hashed_word(word)) {
      hashed.emplace_back(out.trigram_ids.size(), &word);
      out.trigram_ids.push_back(-1);
      out.rows_per_word.push_back(1);
      continue;
    }
    word_trigrams(word, ids);
    out.trigram_ids.insert(out.trigram_ids.end(), ids.begin(), ids.end());
    out.rows_per_word.push_back(static_cast<int64_t>(ids.size()));
  }
  const int m = table.config().m;
  out.rows.resize(out.trigram_ids.size() * m);
  auto lookup = [&](size_t begin, size_t end) {
    if (end > begin)
      table.rows(reinterpret_cast<const uint32_t*>(out.trigram_ids.data()) + begin, int64_t(end - begin),
                 out.rows.data() + begin * m);
  };
  size_t run = 0;
  for (const auto& [row, word] : hashed) {
    lookup(run, row);
    hashed_rows.write(table, *word, out.rows.data() + row * m);
    run = row + 1;
  }
  lookup(run, out.trigram_ids.size());
}

}  // namespace

Encoding tfree_encode(PatternTable& table, const std::vector<std::string_view>& texts, const EncodeOptions& options) {
  const int64_t count = static_cast<int64_t>(texts.size());
  std::vector<TextEncoding> parts(texts.size());
  const HashedRows hashed_rows(table);
  parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      try {
        encode_text(table, hashed_rows, texts[i], options, parts[i]);
      } catch (const Error& e) {
        throw Error(e.kind(), concat("texts[", i, "]: ", e.what()));
      }
    }
  });

  Encoding result;
  const int m = table.config().m;
  result.word_offsets.resize(texts.size() + 1);
  std::vector<int64_t> first_row(texts.size() + 1);
  result.word_offsets[0] = first_row[0] = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    result.word_offsets[i + 1] = result.word_offsets[i] + static_cast<int64_t>(parts[i].rows_per_word.size());
    first_row[i + 1] = first_row[i] + static_cast<int64_t>(parts[i].trigram_ids.size());
  }
  const int64_t words = result.word_offsets.back(), rows = first_row.back();
  result.row_offsets.resize(words + 1);
  result.rows.resize(rows * m);
  result.trigram_ids.resize(rows);
  result.is_endoftext.resize(words);
  result.row_offsets[0] = 0;
  parallel_for(0, count, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const TextEncoding& part = parts[i];
      int64_t offset = first_row[i];
      int64_t* row_offsets = result.row_offsets.data() + result.word_offsets[i] + 1;
      for (size_t w = 0; w < part.rows_per_word.size(); ++w) row_offsets[w] = offset += part.rows_per_word[w];
      std::copy(part.rows.begin(), part.rows.end(), result.rows.begin() + first_row[i] * m);
      std::copy(part.trigram_ids.begin(), part.trigram_ids.end(), result.trigram_ids.begin() + first_row[i]);
      std::copy(part.is_endoftext.begin(), part.is_endoftext.end(),
                result.is_endoftext.begin() + result.word_offsets[i]);
    }
  });
  return result;
}

}  // namespace lmk::text
