// T-FREE trigram patterns: each distinct byte trigram of a space-padded word maps to m indices in
// [0, v) through the MD5 rule; words with "<|" are hashed whole. See docs in tfree/patterns.py.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lmk::text {

constexpr uint32_t kTrigramIds = 1u << 24;

struct PatternConfig {
  int64_t vocab_size;   // v, in [m, 2^31]
  int m;                // indices per trigram, in [1, 64]
  int k_lowercase;      // k of the m indices shared with the lowercase trigram, in [0, m]
};

// Validates a config (throws lmk::Error(Value) naming the field).
void check_config(const PatternConfig& config);

// Distinct byte trigrams of " " + word + " ", ids b0 + 256 b1 + 65536 b2, ascending.
void word_trigrams(std::string_view word, std::vector<uint32_t>& ids);

// An edge trigram starts or ends with the padding space.
inline bool is_edge_trigram(uint32_t id) { return (id & 0xFFu) == 0x20u || (id >> 16) == 0x20u; }

// True for words hashed whole (they contain "<|") rather than split into trigrams.
inline bool is_hashed_word(std::string_view word) { return word.find("<|") != std::string_view::npos; }

// The m indices of every trigram id, each row computed once on first use (thread-safe) or all
// at once by precompute(); rows carry the partial-lowercase surgery.
class PatternTable {
 public:
  explicit PatternTable(const PatternConfig& config);
  ~PatternTable();
  PatternTable(const PatternTable&) = delete;
  PatternTable& operator=(const PatternTable&) = delete;

  const PatternConfig& config() const { return config_; }

  // Writes the m indices of trigram `id` (< 2^24, else throws Index) to out[0..m).
  void row(uint32_t id, int32_t* out);
  // Writes the rows of ids[0..n) (each < 2^24) to out[0..n*m), computing missing rows in
  // parallel and in SIMD batches (much faster than n calls of row() on a fresh table).
  void rows(const uint32_t* ids, int64_t n, int32_t* out);
  // Writes the m indices of a word hashed whole to out[0..m). The word is UTF-8, lowercased as
  // Python's str.lower() does (invalid UTF-8 throws Value when k_lowercase > 0).
  void hashed_word(std::string_view word, int32_t* out) const;

  // Computes every row not yet computed, in parallel (parallel_for).
  void precompute();
  int64_t rows_computed() const;

  // Binary file with the config and every computed row; load() checks the config it holds and
  // throws Value on a truncated or corrupt file (Runtime when the file cannot be opened).
  void save(const std::string& path) const;
  static PatternTable* load(const std::string& path);

 private:
  struct Storage;
  PatternConfig config_;
  Storage* storage_;
};

}  // namespace lmk::text
