#include "text/tfree_encode.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "common/errors.h"
#include "common/memory.h"
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

// A block of consecutive texts: enough text (or texts) that one task's allocations and
// bookkeeping are amortised, small enough that the blocks balance across threads and that their
// vectors stay in reused heap memory (at 32 KiB and more a thread ran at half speed, its growing
// vectors page-faulting in fresh mappings).
constexpr size_t kBlockBytes = 16 * 1024;
constexpr size_t kBlockTexts = 256;

// The words and trigram ids of one block of texts, found independently by one task (the first
// pass); the second writes the block's pattern rows straight into the result.
struct BlockEncoding {
  std::vector<int64_t> words_per_text;
  std::vector<int64_t> rows_per_word;
  std::vector<int32_t> trigram_ids;
  std::vector<uint8_t> is_endoftext;
  std::vector<std::pair<size_t, std::string_view>> hashed;  // (row in the block, word) of the words hashed whole
};

template <typename T>
Buffer<T> uninitialised(size_t size) {
  return Buffer<T>{std::unique_ptr<T[]>(new T[size == 0 ? 1 : size]), size};
}

// Splits `text` into words and appends their trigram ids (-1 for a word hashed whole) to `out`.
void split_text(std::string_view text, const EncodeOptions& options, BlockEncoding& out) {
  // Views into `text` (or the splitter's static marker strings): no copy of any word.
  thread_local std::vector<std::string_view> words;
  words.clear();
  if (options.split_words) {
    tfree_split_views(text, words);
  } else {
    if (text.empty()) fail(ErrorKind::Value, "expected a non-empty word");
    words.push_back(text);
  }
  thread_local std::vector<uint32_t> ids;
  out.words_per_text.push_back(static_cast<int64_t>(words.size()));
  for (std::string_view word : words) {
    out.is_endoftext.push_back(word == kEndOfText);
    if (options.entire_words || is_hashed_word(word)) {
      out.hashed.emplace_back(out.trigram_ids.size(), word);
      out.trigram_ids.push_back(-1);
      out.rows_per_word.push_back(1);
      continue;
    }
    word_trigrams(word, ids);
    out.trigram_ids.insert(out.trigram_ids.end(), ids.begin(), ids.end());
    out.rows_per_word.push_back(static_cast<int64_t>(ids.size()));
  }
  // Kept for the next text up to a million views (16 MiB), as the splitter's binding does: a text of
  // millions of words would otherwise leave every thread that split one holding its size for good.
  constexpr size_t kKeptViews = size_t{1} << 20;
  if (words.capacity() > kKeptViews) std::vector<std::string_view>().swap(words);
}

// Writes the pattern rows of a block (m indices each) to rows[]. Trigram rows are looked up in one
// batch per run between words hashed whole, so that the table's random reads overlap (its rows are
// spread over hundreds of megabytes) instead of waiting in turn.
void write_rows(PatternTable& table, const HashedRows& hashed_rows, const BlockEncoding& block, int32_t* rows) {
  const int m = table.config().m;
  const auto* ids = reinterpret_cast<const uint32_t*>(block.trigram_ids.data());
  size_t run = 0;
  const auto lookup = [&](size_t end) {
    if (end > run) table.rows(ids + run, int64_t(end - run), rows + run * m);
  };
  for (const auto& [row, word] : block.hashed) {
    lookup(row);
    hashed_rows.write(table, word, rows + row * m);
    run = row + 1;
  }
  lookup(block.trigram_ids.size());
}

}  // namespace

Encoding tfree_encode(PatternTable& table, const std::vector<std::string_view>& texts, const EncodeOptions& options) {
  std::vector<size_t> block_starts{0};
  for (size_t i = 0, bytes = 0; i < texts.size(); ++i) {
    bytes += texts[i].size();
    if (bytes >= kBlockBytes || i + 1 - block_starts.back() >= kBlockTexts) {
      block_starts.push_back(i + 1);
      bytes = 0;
    }
  }
  if (block_starts.back() != texts.size()) block_starts.push_back(texts.size());
  const int64_t num_blocks = static_cast<int64_t>(block_starts.size()) - 1;

  std::vector<BlockEncoding> blocks(num_blocks);
  parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (size_t i = block_starts[b]; i < block_starts[b + 1]; ++i) {
        try {
          split_text(texts[i], options, blocks[b]);
        } catch (const Error& e) {
          throw Error(e.kind(), concat("texts[", i, "]: ", e.what()));
        }
      }
  });

  // Where each block's words and rows start in the result.
  std::vector<int64_t> first_word(num_blocks + 1, 0), first_row(num_blocks + 1, 0);
  for (int64_t b = 0; b < num_blocks; ++b) {
    first_word[b + 1] = first_word[b] + static_cast<int64_t>(blocks[b].rows_per_word.size());
    first_row[b + 1] = first_row[b] + static_cast<int64_t>(blocks[b].trigram_ids.size());
  }
  const int m = table.config().m;
  Encoding result;
  result.word_offsets = uninitialised<int64_t>(texts.size() + 1);
  result.row_offsets = uninitialised<int64_t>(first_word.back() + 1);
  result.rows = uninitialised<int32_t>(first_row.back() * m);
  result.trigram_ids = uninitialised<int32_t>(first_row.back());
  result.is_endoftext = uninitialised<uint8_t>(first_word.back());
  // The rows are most of the result (40 bytes a trigram at m = 10: tens of megabytes for a megabyte
  // of text): fresh pages faulted 4 KiB at a time inside the lookups had cost a fifth of the call.
  const size_t row_bytes = result.rows.size * sizeof(int32_t);
  advise_huge_pages(result.rows.data.get(), row_bytes);
  prefault_for_overwrite(result.rows.data.get(), row_bytes);
  result.word_offsets.data[0] = result.row_offsets.data[0] = 0;
  const HashedRows hashed_rows(table);
  parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const BlockEncoding& block = blocks[b];
      int64_t words = first_word[b], rows = first_row[b];
      int64_t* word_offsets = result.word_offsets.data.get() + block_starts[b] + 1;
      for (int64_t count : block.words_per_text) *word_offsets++ = words += count;
      int64_t* row_offsets = result.row_offsets.data.get() + first_word[b] + 1;
      for (int64_t count : block.rows_per_word) *row_offsets++ = rows += count;
      write_rows(table, hashed_rows, block, result.rows.data.get() + first_row[b] * m);
      std::copy(block.trigram_ids.begin(), block.trigram_ids.end(), result.trigram_ids.data.get() + first_row[b]);
      std::copy(block.is_endoftext.begin(), block.is_endoftext.end(), result.is_endoftext.data.get() + first_word[b]);
    }
  });
  return result;
}

}  // namespace lmk::text
