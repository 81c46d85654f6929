// Batched T-FREE encoding: texts -> words -> trigram pattern rows, as flat CSR arrays.
//
// For texts t_0..t_{B-1} (UTF-8):
//   words of t_b          = word_offsets[b] .. word_offsets[b+1]
//   pattern rows of word w = row_offsets[w] .. row_offsets[w+1], each row m indices in rows[]
//   trigram_ids[r]         = the row's trigram id, or -1 for a word hashed whole
// so rows[] read as indices with offsets m * row_offsets is exactly the embedding-bag input
// (one bag per word, every index of every trigram, with multiplicity).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "text/trigram_patterns.h"

namespace lmk::text {

struct EncodeOptions {
  bool split_words = true;    // false: every text is a single word (dictionary entries, generated words)
  bool entire_words = false;  // hash every word whole instead of by trigrams
};

// An uninitialised array: the encoder writes every element, so zero-filling first would only
// cost time (and page faults on a fresh allocation).
template <typename T>
struct Buffer {
  std::unique_ptr<T[]> data;
  size_t size = 0;
};

struct Encoding {
  Buffer<int64_t> word_offsets;  // [texts + 1]
  Buffer<int64_t> row_offsets;   // [words + 1]
  Buffer<int32_t> rows;          // [rows * m]
  Buffer<int32_t> trigram_ids;   // [rows]
  Buffer<uint8_t> is_endoftext;  // [words]: the word is <|endoftext|>
};

// Encodes the texts in parallel (parallel_for over texts); invalid UTF-8 throws a Value error
// naming the text's position in the batch.
Encoding tfree_encode(PatternTable& table, const std::vector<std::string_view>& texts, const EncodeOptions& options);

}  // namespace lmk::text
