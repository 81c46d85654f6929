// T-FREE dictionary scoring: every candidate word of a dictionary against each row of head logits.
//
//   a_q   = sigmoid(logits[q])                                   (fp32, v = logits.size(1))
//   S_q   = sum_{i < v} a_q[i]
//   s_qw  = sum_{i in NE(w)} a_q[i] + e * sum_{i in E(w)} a_q[i]
//   contrast: scores[q, w] = s_qw / (m * n_w) + (s_qw - S_q) / (v - m * n_w)
//   mean:     scores[q, w] = s_qw / (m * n_w)
//
// NE(w) and E(w) are the word's non-edge and edge index sets, two CSR matrices over the same W
// words (int32 indices in [0, v), int32 offsets [W + 1]); n_w = trigram_counts[w] >= 1; m >= 1 is
// the number of indices per trigram; e is the edge weight. Where v - m * n_w <= 0 (a word with
// more trigram slots than the vocabulary has indices) the off-pattern term is taken as 0, so the
// contrast score falls back to the mean score. NaN logits give NaN scores (every word of that
// row under contrast, through S_q). Sums run in a fixed order, so results are bitwise the same
// for any thread count or schedule.
//
// Row tables: with a table of R pattern rows (CSR of indices in [0, v)), NE(w) and E(w) hold row
// ids in [0, R) and each row stands for its indices, counted with multiplicity:
//   s_qw = sum_{r in NE(w)} t_qr + e * sum_{r in E(w)} t_qr,   t_qr = sum_{i in row r} a_q[i]
// The kernels sum each row once (t) and then each word's rows: a dictionary's words share most of
// their trigrams, and so of their rows (96,000 English words: 684,000 rows, 14,000 distinct).
#pragma once
#include <cstdint>

#include "common/checks.h"
#include "common/tensor_view.h"

namespace lmk::sparse {

enum class ScoreVariant : int { Contrast = 0, Mean = 1 };

struct Dictionary {
  TensorView ne_indices;      // [N_ne]  int32
  TensorView ne_offsets;      // [W + 1] int32; 0, non-decreasing, N_ne
  TensorView edge_indices;    // [N_e]   int32
  TensorView edge_offsets;    // [W + 1] int32; 0, non-decreasing, N_e
  TensorView trigram_counts;  // [W]     int32, each >= 1
  OptionalView row_indices;   // [N_r]   int32 in [0, v): the rows' indices (row tables only)
  OptionalView row_offsets;   // [R + 1] int32; 0, non-decreasing, N_r

  int64_t num_words() const { return ne_offsets.size(0) - 1; }
  bool has_rows() const { return row_indices.has_value(); }
  // What the sets' entries index: vocabulary columns, or rows of the table.
  int64_t set_bound(int64_t vocab) const { return has_rows() ? row_offsets->size(0) - 1 : vocab; }
};

struct ScoreParams {
  int64_t indices_per_trigram = 1;  // m
  float edge_weight = 1.f;          // e
  ScoreVariant variant = ScoreVariant::Contrast;
};

// Shapes, dtypes, devices and layouts (everything but the values of the dictionary, which the
// kernels check where the data lives). logits [Q, v] float32, bfloat16 or float16 with unit last
// stride; scores [Q, W] float32, contiguous.
void check_dictionary_scores(const TensorView& logits, const Dictionary& dictionary, const ScoreParams& params,
                             const TensorView& scores);

// ---- CPU -------------------------------------------------------------------------------------
// Raise IndexError for a set entry outside [0, v) (or [0, R)) or a row index outside [0, v),
// ValueError for malformed offsets or a trigram count < 1.
void dictionary_scores_cpu(const TensorView& logits, const Dictionary& dictionary, const ScoreParams& params,
                           const TensorView& scores);

// ---- CUDA ------------------------------------------------------------------------------------
// Same contract on the given stream. The op allocates the workspace: activations [v, Q] float32
// (sigmoid of the logits, transposed so that one index's activations for all queries are
// adjacent), totals [Q] float32 (S_q) and, with a row table, row_sums [R, Q] float32 (t).
// Dictionary values are not checked on the host: the kernels OR these bits into error_flag (int32
// [1] on the device) and skip the offending element instead.
constexpr int32_t kDictionaryBadIndex = 1;       // a set entry outside [0, v) (or [0, R) with a row table)
constexpr int32_t kDictionaryBadOffsets = 2;     // offsets not 0, non-decreasing, ending at the index count
constexpr int32_t kDictionaryBadCount = 4;       // a trigram count < 1
constexpr int32_t kDictionaryBadRowIndex = 8;    // a row's index outside [0, v)
constexpr int32_t kDictionaryBadRowOffsets = 16;  // row offsets malformed

void check_dictionary_workspace(const TensorView& logits, const Dictionary& dictionary,
                                const TensorView& activations, const TensorView& totals,
                                const OptionalView& row_sums);

#ifdef LMK_WITH_CUDA
void dictionary_scores_cuda(const TensorView& logits, const Dictionary& dictionary, const ScoreParams& params,
                            const TensorView& activations, const TensorView& totals, const OptionalView& row_sums,
                            const TensorView& scores, const TensorView& error_flag, void* stream);
#endif

}  // namespace lmk::sparse
