// Dictionary scoring on the CPU, a pass per chunk of up to 32 queries:
//
// 1. Activations: sigmoid of the chunk's logits, stored transposed as act[i][q] (one row of the
//    chunk's queries per vocabulary index, padded to a multiple of 8 lanes), with the per-query
//    totals S_q summed over fixed column blocks and then over the blocks in order.
// 2. Gathers: per word, the rows act[i] of its NE and E indices summed as vectors, so every index
//    load serves all the queries of the chunk; then the normalisation, into a tile of 16 words that
//    goes out as 64-byte runs of each query's row of scores.
//
// A single query (a decoding step) keeps its activations as a plain vector and gathers scalars.
//
// With a row table, a step between 1 and 2 sums each row's activation rows into a row of row sums
// t[r][q], laid out as the activations are, and the gathers of step 2 read those instead.
//
// Every sum has a fixed order that depends on neither the thread count nor the schedule, so the
// scores are bitwise reproducible.
#if defined(__x86_64__) && defined(__GNUC__)
#define LMK_DICTIONARY_GATHERS 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/dispatch.h"
#include "common/index_math.h"
#include "common/parallel.h"
#include "common/scratch.h"
#include "common/simd.h"
#include "common/stream_store.h"
#include "common/vec.h"
#include "sparse/csr_checks.h"
#include "sparse/dictionary_score.h"

namespace lmk::sparse {
namespace {

using vec::f32x8;
using vec::i32x8;

constexpr int64_t kLanes = 8;
// Queries per pass: 128 bytes of activations per index, 4 MiB for v = 32000. 64 queries (8 MiB)
// ran 1.3x slower, 16 queries 1.1x slower (Zen 4, 64 queries against 100,000 words).
constexpr int64_t kMaxChunk = 32;
// Passes share their parallel regions in rounds of this many: each region is a barrier that
// waits for every thread, which a busy machine makes cost milliseconds.
constexpr int64_t kPassesPerRound = 2;
constexpr int64_t kColumnBlock = 512;  // vocabulary columns per partial total (fixed: sets the summation order)
constexpr int64_t kWordBlock = 16;     // words per tile: 64 bytes of each query's scores row
// Indices ahead whose activation rows are prefetched: the rows of a pass come from the
// last-level cache at random, and without prefetching the gathers ran 1.4x slower (measured on
// Zen 4 with 64 queries against 100,000 words; 8 ahead was in between).
constexpr int64_t kAhead = 16;

// Eight consecutive values of any logits type (vec.h loads bf16 only in even/odd pairs).
__attribute__((always_inline)) inline f32x8 load8(const float* p) { return vec::load8(p); }
__attribute__((always_inline)) inline f32x8 load8(const float16* p) { return vec::load8(p); }
__attribute__((always_inline)) inline f32x8 load8(const bfloat16* p) {
  return vec::bitcast<f32x8>(vec::widen(&p->bits) << 16);
}

__attribute__((always_inline)) inline f32x8 select(i32x8 mask, f32x8 a, f32x8 b) { return mask ? a : b; }

// exp(x) for x in [-87.3, 0] (the caller clamps): Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2,
// and the minimax polynomial of Cephes' expf (about 1 ulp), times 2^n built in the exponent bits.
__attribute__((always_inline)) inline f32x8 exp_nonpositive(f32x8 x) {
  const f32x8 shifted = x * 1.44269504088896341f + 0.5f;
  i32x8 n = __builtin_convertvector(shifted, i32x8);  // truncates towards zero; floor below
  n -= (i32x8)(__builtin_convertvector(n, f32x8) > shifted) & 1;
  const f32x8 nf = __builtin_convertvector(n, f32x8);
  const f32x8 r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
  f32x8 p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const f32x8 y = p * (r * r) + r + 1.f;
  return y * vec::bitcast<f32x8>((n + 127) << 23);
}

// 1 / (1 + exp(-x)), through exp(-|x|) so that neither side overflows; NaN stays NaN.
__attribute__((always_inline)) inline f32x8 sigmoid(f32x8 x) {
  const i32x8 is_nan = x != x;
  const f32x8 finite = select(is_nan, f32x8{}, x);
  const f32x8 magnitude = select(finite < 0.f, -finite, finite);
  const f32x8 neg = -magnitude;
  const f32x8 t = exp_nonpositive(select(neg < -87.3f, f32x8{} - 87.3f, neg));
  const f32x8 value = select(finite >= 0.f, 1.f / (1.f + t), t / (1.f + t));
  return select(is_nan, x, value);
}

// a[j][k] <-> a[k][j]: unpack pairs, then quads, then halves.
__attribute__((always_inline)) inline void transpose8(f32x8* a) {
  f32x8 t[kLanes], u[kLanes];
  for (int j = 0; j < kLanes; j += 2) {
    t[j] = __builtin_shufflevector(a[j], a[j + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[j + 1] = __builtin_shufflevector(a[j], a[j + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int j = 0; j < kLanes; j += 4)
    for (int k = 0; k < 2; ++k) {
      u[j + 2 * k] = __builtin_shufflevector(t[j + k], t[j + k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[j + 2 * k + 1] = __builtin_shufflevector(t[j + k], t[j + k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int k = 0; k < 4; ++k) {
    a[k] = __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    a[k + 4] = __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// Columns [c0, c1) of the chunk's rows: act[i * width + q] = sigmoid(logits[q][i]) for q < rows
// (0 in the padding lanes up to width), and partial[q] = sum of those activations in column
// order (8 interleaved partial sums, combined pairwise). Wider than one query, eight queries'
// eight columns at a time are transposed in registers, so that each column goes out as one 32-byte
// store rather than eight scalar ones (64 queries against 100,000 empty sets, which leaves the
// activations and the scores' stores: 9.0-10.1 -> 7.0-7.5 ms, 1 thread).
template <typename T>
__attribute__((always_inline)) inline void activate_columns(const T* logits, int64_t stride, int64_t rows,
                                                            int64_t width, int64_t c0, int64_t c1, float* act,
                                                            float* partial) {
  const int64_t group = width == 1 ? 1 : kLanes;  // queries a step
  for (int64_t q0 = 0; q0 < rows; q0 += group) {
    const int64_t live = std::min(group, rows - q0);  // the group's queries; the rest are padding
    f32x8 acc[kLanes] = {};
    int64_t i = c0;
    if (group == kLanes)
      for (; i + kLanes <= c1; i += kLanes) {
        f32x8 a[kLanes];
        for (int j = 0; j < kLanes; ++j) {
          a[j] = j < live ? sigmoid(load8(logits + (q0 + j) * stride + i)) : f32x8{};
          acc[j] += a[j];
        }
        transpose8(a);
        for (int k = 0; k < kLanes; ++k) std::memcpy(act + (i + k) * width + q0, &a[k], sizeof a[k]);
      }
    for (; i < c1; i += kLanes) {  // one query, or the columns short of eight
      const int64_t columns = std::min(kLanes, c1 - i);
      for (int64_t j = 0; j < group; ++j) {
        T part[kLanes];
        std::memset(part, 0, sizeof part);
        if (j < live) std::memcpy(part, logits + (q0 + j) * stride + i, size_t(columns) * sizeof(T));
        const f32x8 a = j < live ? sigmoid(load8(part)) : f32x8{};
        for (int64_t k = 0; k < columns; ++k) {
          acc[j][k] += a[k];
          act[(i + k) * width + q0 + j] = a[k];
        }
      }
    }
    for (int64_t j = 0; j < live; ++j)
      partial[q0 + j] = ((acc[j][0] + acc[j][1]) + (acc[j][2] + acc[j][3])) +
                        ((acc[j][4] + acc[j][5]) + (acc[j][6] + acc[j][7]));
  }
}

#define LMK_DEFINE_ACTIVATE(T, SUFFIX)                                                                              \
  LMK_SIMD_CLONES void activate_columns_##SUFFIX(const T* logits, int64_t stride, int64_t rows, int64_t width,      \
                                                 int64_t c0, int64_t c1, float* act, float* partial) {             \
    activate_columns(logits, stride, rows, width, c0, c1, act, partial);                                             \
  }                                                                                                                  \
  inline void activate_columns_simd(const T* logits, int64_t stride, int64_t rows, int64_t width, int64_t c0,       \
                                    int64_t c1, float* act, float* partial) {                                       \
    activate_columns_##SUFFIX(logits, stride, rows, width, c0, c1, act, partial);                                   \
  }
LMK_DEFINE_ACTIVATE(float, f32)
LMK_DEFINE_ACTIVATE(bfloat16, bf16)
LMK_DEFINE_ACTIVATE(float16, f16)
#undef LMK_DEFINE_ACTIVATE

// The word-side inputs of one pass, read by the gathers.
struct Words {
  const int32_t* ne_indices;
  const int32_t* ne_offsets;
  const int32_t* edge_indices;
  const int32_t* edge_offsets;
  const int32_t* counts;
  int64_t ne_count;
  int64_t edge_count;
  int64_t bound;  // the sets' entries index [0, bound): v, or R with a row table
  int64_t vocab;
  int64_t m;
  float edge_weight;
  bool contrast;
  bool gathers;  // one query's sets through gather_sets16
};

// A table of pattern rows: row r stands for indices[offsets[r], offsets[r + 1]).
struct Rows {
  const int32_t* indices;
  const int32_t* offsets;
  int64_t count;  // of indices
  int64_t vocab;
  bool gathers;  // one query's rows through gather_sets16
};

// acc[0:kUnits] = sum over positions [begin, end) of the activation rows of indices[p], in
// kChains interleaved partial sums (position p into chain p % kChains) that keep several
// independent add chains in flight, combined pairwise at the end. The rows kAhead positions on
// are prefetched, across word boundaries up to `limit` (the length of indices). Returns false at
// an index outside [0, bound) (the rows of act); the caller's check_ranges then names it.
template <int kUnits, int kChains>
__attribute__((always_inline)) inline bool gather_rows(const float* act, const int32_t* indices, int64_t begin,
                                                          int64_t end, int64_t limit, int64_t bound, f32x8* acc) {
  constexpr int64_t width = kUnits * kLanes;
  f32x8 chains[kChains][kUnits] = {};
  int64_t p = begin;
  for (; p + kChains <= end; p += kChains)
    for (int c = 0; c < kChains; ++c) {
      if (p + c + kAhead < limit) {
        const uint32_t next = uint32_t(indices[p + c + kAhead]);
        if (next < uint64_t(bound))
          for (int64_t byte = 0; byte < width * 4; byte += 64)
            __builtin_prefetch(reinterpret_cast<const char*>(act + int64_t(next) * width) + byte);
      }
      const uint32_t i = uint32_t(indices[p + c]);
      if (i >= uint64_t(bound)) return false;
      const float* row = act + int64_t(i) * width;
      for (int u = 0; u < kUnits; ++u) chains[c][u] += load8(row + u * kLanes);
    }
  for (int c = 0; p < end; ++p, ++c) {
    const uint32_t i = uint32_t(indices[p]);
    if (i >= uint64_t(bound)) return false;
    const float* row = act + int64_t(i) * width;
    for (int u = 0; u < kUnits; ++u) chains[c][u] += load8(row + u * kLanes);
  }
  for (int step = 1; step < kChains; step *= 2)
    for (int c = 0; c + step < kChains; c += 2 * step)
      for (int u = 0; u < kUnits; ++u) chains[c][u] += chains[c + step][u];
  for (int u = 0; u < kUnits; ++u) acc[u] = chains[0][u];
  return true;
}

// The score of one word from its pattern sums s (vectors or scalars of any lanes): on- and
// off-pattern means through reciprocals computed once per word.
template <typename V>
__attribute__((always_inline)) inline V word_score(V s, V total, const Words& words, int64_t w) {
  const int64_t slots = words.m * int64_t(words.counts[w]);
  const float off_pattern = float(words.vocab - slots);
  V score = s * (1.f / float(slots));
  if (words.contrast && off_pattern > 0.f) score += (s - total) * (1.f / off_pattern);
  return score;
}

// tile[(w - w0) * width + q] = score of word w for lane q, for w in [w0, w1). Two chains per
// lane group (four for a single group): with one the gathers waited on the add latency (1.1x
// slower), four per group of four ran out of registers (1.4x slower).
template <int kUnits, int kChains = (kUnits == 1 ? 4 : 2)>
__attribute__((always_inline)) inline bool score_words(const float* act, const float* totals, const Words& words,
                                                       int64_t w0, int64_t w1, float* tile) {
  constexpr int64_t width = kUnits * kLanes;
  for (int64_t w = w0; w < w1; ++w) {
    f32x8 ne[kUnits], edge[kUnits];
    if (!gather_rows<kUnits, kChains>(act, words.ne_indices, words.ne_offsets[w], words.ne_offsets[w + 1],
                                      words.ne_count, words.bound, ne) ||
        !gather_rows<kUnits, kChains>(act, words.edge_indices, words.edge_offsets[w], words.edge_offsets[w + 1],
                                      words.edge_count, words.bound, edge))
      return false;
    for (int u = 0; u < kUnits; ++u) {
      const f32x8 score = word_score(ne[u] + words.edge_weight * edge[u], load8(totals + u * kLanes), words, w);
      std::memcpy(tile + (w - w0) * width + u * kLanes, &score, sizeof score);
    }
  }
  return true;
}

// One query: the activations are a plain vector (a few hundred KiB, cache-resident), gathered as
// scalars in two interleaved partial sums (even and odd positions). A set holds a handful of
// entries (a word's rows: about 7), so the loop is kept short: wider unrolling and a checked tail
// cost more than they saved (one query, 96,000 words: 1.4x slower).
__attribute__((always_inline)) inline bool gather_scalars(const float* act, const int32_t* indices, int64_t begin,
                                                          int64_t end, int64_t bound, float& sum) {
  float even = 0.f, odd = 0.f;
  bool bad = false;
  int64_t p = begin;
  for (; p + 2 <= end; p += 2) {
    const uint64_t i = uint32_t(indices[p]), j = uint32_t(indices[p + 1]);
    bad |= (i >= uint64_t(bound)) | (j >= uint64_t(bound));
    even += act[i < uint64_t(bound) ? i : 0];
    odd += act[j < uint64_t(bound) ? j : 0];
  }
  if (p < end) {
    const uint64_t i = uint32_t(indices[p]);
    bad |= i >= uint64_t(bound);
    even += act[i < uint64_t(bound) ? i : 0];
  }
  sum = even + odd;
  return !bad;
}

#if LMK_DICTIONARY_GATHERS
// One query, up to sixteen sets at a time (words, or rows of a table): lane k sums set k into
// sums[k], taking position j of every set in step j through masked gathers, so the loop ends once
// per sixteen sets, at the longest. A loop per set ends at a branch the predictor cannot learn
// where set lengths vary (100,000 words of random lengths took 1.9x as long as words of one
// length). Even and odd positions go into two sums added at the end, as gather_scalars does, so
// both paths give bitwise the same scores. Returns false at an entry outside [0, bound).
__attribute__((target("avx512f"))) bool gather_sets16(const float* act, const int32_t* indices, const int32_t* offsets,
                                                     int64_t sets, int64_t bound, float* sums) {
  const auto lanes = __mmask16((1u << sets) - 1);  // sets <= 16
  const __m512i begin = _mm512_maskz_loadu_epi32(lanes, offsets);
  const __m512i length = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(lanes, offsets + 1), begin);
  const int longest = _mm512_mask_reduce_max_epi32(lanes, length);
  // Indices compare as unsigned, so a negative one is out of range: at most 2^31 for that.
  const __m512i limit = _mm512_set1_epi32(int32_t(uint32_t(std::min<int64_t>(bound, int64_t(1) << 31))));
  __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  __mmask16 bad = 0;
  for (int j = 0; j < longest; ++j) {
    const __m512i step = _mm512_set1_epi32(j);
    const __mmask16 live = _mm512_mask_cmpgt_epi32_mask(lanes, length, step);
    const __m512i index =
        _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, _mm512_add_epi32(begin, step), indices, 4);
    const __mmask16 in_range = _mm512_mask_cmplt_epu32_mask(live, index, limit);
    bad |= live & ~in_range;
    acc[j % 2] = _mm512_add_ps(acc[j % 2], _mm512_mask_i32gather_ps(_mm512_setzero_ps(), in_range, index, act, 4));
  }
  _mm512_mask_storeu_ps(sums, lanes, _mm512_add_ps(acc[0], acc[1]));
  return !bad;
}
#endif

// Whether one query's sets of `entries` entries over `sets` sets go through gather_sets16: short
// sets on Intel CPUs with AVX-512. Sets of a few entries are where a loop per set mispredicts most
// for its work (a row table's words: about 7 rows); for direct sets (about 60 indices) the gathers'
// idle lanes up to the longest of sixteen cost more (100,000 words: 8.7 against 7.1 ms). On Zen 4
// the gathers themselves cost more than the mispredictions (one query, a row table's 100,000 words,
// 2 threads: 2.10 against 1.80 ms). LMK_DICTIONARY_GATHERS=on or off overrides the choice, so that
// the tests run both paths on one machine ("on" only where the CPU has AVX-512).
bool use_gathers(int64_t entries, int64_t sets) {
#if LMK_DICTIONARY_GATHERS
  static const bool has = __builtin_cpu_supports("avx512f");
  static const bool pays = has && __builtin_cpu_is("intel");
  const char* choice = std::getenv("LMK_DICTIONARY_GATHERS");
  const bool on = choice && std::strcmp(choice, "on") == 0, off = choice && std::strcmp(choice, "off") == 0;
  return (on ? has : !off && pays) && entries < 16 * sets;
#else
  (void)entries, (void)sets;
  return false;
#endif
}

bool score_words_single(const float* act, float total, const Words& words, int64_t w0, int64_t w1, float* tile) {
  static_assert(kWordBlock <= 16, "a block of words fits in gather_sets16's lanes");
#if LMK_DICTIONARY_GATHERS
  if (words.gathers) {
    float ne[kWordBlock], edge[kWordBlock];
    if (!gather_sets16(act, words.ne_indices, words.ne_offsets + w0, w1 - w0, words.bound, ne) ||
        !gather_sets16(act, words.edge_indices, words.edge_offsets + w0, w1 - w0, words.bound, edge))
      return false;
    for (int64_t w = w0; w < w1; ++w)
      tile[w - w0] = word_score(ne[w - w0] + words.edge_weight * edge[w - w0], total, words, w);
    return true;
  }
#endif
  for (int64_t w = w0; w < w1; ++w) {
    float ne, edge;
    if (!gather_scalars(act, words.ne_indices, words.ne_offsets[w], words.ne_offsets[w + 1], words.bound, ne) ||
        !gather_scalars(act, words.edge_indices, words.edge_offsets[w], words.edge_offsets[w + 1], words.bound, edge))
      return false;
    tile[w - w0] = word_score(ne + words.edge_weight * edge, total, words, w);
  }
  return true;
}

// width = 1: one query; otherwise 8 * units lanes. False at an entry out of range.
LMK_SIMD_CLONES bool score_words_simd(int64_t width, const float* act, const float* totals, const Words& words,
                                      int64_t w0, int64_t w1, float* tile) {
  switch (width / kLanes) {
    case 0: return score_words_single(act, totals[0], words, w0, w1, tile);
    case 1: return score_words<1>(act, totals, words, w0, w1, tile);
    case 2: return score_words<2>(act, totals, words, w0, w1, tile);
    case 3: return score_words<3>(act, totals, words, w0, w1, tile);
    default: return score_words<4>(act, totals, words, w0, w1, tile);
  }
}

// table[r * width + q] = t of row r for lane q, for r in [r0, r1); the same chains as the words.
template <int kUnits, int kChains = (kUnits == 1 ? 4 : 2)>
__attribute__((always_inline)) inline bool sum_rows(const float* act, const Rows& rows, int64_t r0, int64_t r1,
                                                    float* table) {
  constexpr int64_t width = kUnits * kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    f32x8 sums[kUnits];
    if (!gather_rows<kUnits, kChains>(act, rows.indices, rows.offsets[r], rows.offsets[r + 1], rows.count,
                                      rows.vocab, sums))
      return false;
    for (int u = 0; u < kUnits; ++u) std::memcpy(table + r * width + u * kLanes, &sums[u], sizeof sums[u]);
  }
  return true;
}

LMK_SIMD_CLONES bool sum_rows_simd(int64_t width, const float* act, const Rows& rows, int64_t r0, int64_t r1,
                                   float* table) {
  switch (width / kLanes) {
    case 0:
#if LMK_DICTIONARY_GATHERS
      if (rows.gathers) return gather_sets16(act, rows.indices, rows.offsets + r0, r1 - r0, rows.vocab, table + r0);
#endif
      for (int64_t r = r0; r < r1; ++r)
        if (!gather_scalars(act, rows.indices, rows.offsets[r], rows.offsets[r + 1], rows.vocab, table[r]))
          return false;
      return true;
    case 1: return sum_rows<1>(act, rows, r0, r1, table);
    case 2: return sum_rows<2>(act, rows, r0, r1, table);
    case 3: return sum_rows<3>(act, rows, r0, r1, table);
    default: return sum_rows<4>(act, rows, r0, r1, table);
  }
}

void check_counts(const int32_t* counts, int64_t num_words) {
  bool below_one = false;  // vectorised, as check_csr_offsets
  for (int64_t w = 0; w < num_words; ++w) below_one |= counts[w] < 1;
  for (int64_t w = 0; below_one && w < num_words; ++w)
    if (counts[w] < 1)
      fail(ErrorKind::Value, "trigram_counts: expected every word to have at least 1 trigram, got trigram_counts[", w,
           "] = ", counts[w]);
}

// Raises IndexError for the first entry out of range, looking in a fixed order (row_indices,
// ne_indices, edge_indices), so that the error names the same entry whatever the query count,
// thread count or gather path; returns if there is none. The gathers only say that they met one.
void check_ranges(const Dictionary& dictionary, int64_t vocab) {
  // `range` names what [0, bound) counts, as in "logits of 300 columns".
  const auto check = [](const TensorView& indices, const char* name, int64_t bound, const char* range,
                        const char* unit) {
    const int32_t* p = indices.as<int32_t>();
    for (int64_t k = 0; k < indices.size(0); ++k)
      if (uint32_t(p[k]) >= uint64_t(bound))
        fail(ErrorKind::Index, name, ": ", name, "[", k, "] = ", p[k], " is out of range for ", range, " of ", bound,
             " ", unit);
  };
  if (dictionary.has_rows()) check(*dictionary.row_indices, "row_indices", vocab, "logits", "columns");
  const int64_t bound = dictionary.set_bound(vocab);
  const char* range = dictionary.has_rows() ? "a table" : "logits";
  const char* unit = dictionary.has_rows() ? "rows" : "columns";
  check(dictionary.ne_indices, "ne_indices", bound, range, unit);
  check(dictionary.edge_indices, "edge_indices", bound, range, unit);
}

// out[q * stride + w] = tile[w * width + q] for the tile's words w < words and queries q < rows: each
// query's scores of the tile as one 64-byte run. A run that fills a whole cache line goes out as
// streaming stores: the scores (25.6 MB for 64 queries x 100,000 words) are not read again, and
// plain stores first read each line in and evict the activations the gathers reuse (1.07x-1.1x
// slower, 64 queries x 100,000 words). Other runs take plain stores: streaming ones leave
// partial lines wherever a row of scores does not start on a cache line (W % 16 != 0), and a
// 96,000-word dictionary's scores then took 1.7x longer to write. The caller fences.
void write_tile(const float* tile, int64_t width, int64_t rows, int64_t words, float* out, int64_t stride) {
  for (int64_t q = 0; q < rows; ++q) {
    float* line = out + q * stride;
    if (words < kWordBlock) {
      for (int64_t w = 0; w < words; ++w) line[w] = tile[w * width + q];
      continue;
    }
    f32x8 run[2];  // a fixed size: one inlined 64-byte copy, not a call
    for (int64_t w = 0; w < kWordBlock; ++w) run[w / kLanes][w % kLanes] = tile[w * width + q];
    if (reinterpret_cast<uintptr_t>(line) % 64 == 0)
      vec::stream16(line, run[0], run[1]);
    else
      std::memcpy(line, run, sizeof run);
  }
}

// Grains of the two parallel loops: at least ~64 K activations, or ~16 K gathered vectors, per
// chunk, so that small problems run on one thread instead of paying for waking the others.
int64_t activation_grain(int64_t rows) { return std::max<int64_t>(1, (int64_t(1) << 16) / (kColumnBlock * rows)); }

int64_t gather_grain(int64_t entries, int64_t num_items, int64_t width) {
  const double entries_per_item = double(entries) / double(std::max<int64_t>(1, num_items));
  const double vectors_per_block = std::max(1.0, entries_per_item) * kWordBlock * double(ceil_div(width, kLanes));
  return std::max<int64_t>(1, int64_t(double(1 << 14) / vectors_per_block));
}

}  // namespace

void dictionary_scores_cpu(const TensorView& logits, const Dictionary& dictionary, const ScoreParams& params,
                           const TensorView& scores) {
  const int64_t num_queries = logits.size(0), vocab = logits.size(1), num_words = dictionary.num_words();
  const int64_t num_rows = dictionary.has_rows() ? dictionary.set_bound(vocab) : 0;
  const Words words{dictionary.ne_indices.as<int32_t>(),  dictionary.ne_offsets.as<int32_t>(),
                    dictionary.edge_indices.as<int32_t>(), dictionary.edge_offsets.as<int32_t>(),
                    dictionary.trigram_counts.as<int32_t>(), dictionary.ne_indices.size(0),
                    dictionary.edge_indices.size(0), dictionary.set_bound(vocab), vocab, params.indices_per_trigram,
                    params.edge_weight, params.variant == ScoreVariant::Contrast,
                    use_gathers(dictionary.ne_indices.size(0) + dictionary.edge_indices.size(0), num_words)};
  check_csr_offsets(words.ne_offsets, num_words, dictionary.ne_indices.size(0), "ne_offsets");
  check_csr_offsets(words.edge_offsets, num_words, dictionary.edge_indices.size(0), "edge_offsets");
  check_counts(words.counts, num_words);
  Rows pattern_rows{};
  if (dictionary.has_rows()) {
    pattern_rows = Rows{dictionary.row_indices->as<int32_t>(), dictionary.row_offsets->as<int32_t>(),
                        dictionary.row_indices->size(0), vocab,
                        use_gathers(dictionary.row_indices->size(0), num_rows)};
    check_csr_offsets(pattern_rows.offsets, num_rows, pattern_rows.count, "row_offsets");
  }
  if (num_queries == 0 || num_words == 0) return check_ranges(dictionary, vocab);

  const int64_t column_blocks = ceil_div(vocab, kColumnBlock);
  const int64_t word_blocks = ceil_div(num_words, kWordBlock);
  const int64_t row_blocks = ceil_div(num_rows, kWordBlock);
  const int64_t max_width = num_queries == 1 ? 1 : std::min(num_queries + kLanes - 1, kMaxChunk) / kLanes * kLanes;
  const int64_t pass_floats = vocab * max_width, table_floats = num_rows * max_width;
  const int64_t max_passes = std::min(kPassesPerRound, ceil_div(num_queries, kMaxChunk));
  // The activations, the row table and the column blocks' partial sums, in a block of the memory
  // cache: repeated calls fault no pages in, and no thread keeps a vocabulary-sized buffer for good.
  // kLanes floats more: one query's gathers read element 0 in place of an index out of range, which
  // must exist even for an empty vocabulary or table (the error is raised after the gathers).
  const size_t act_floats = size_t((pass_floats + table_floats) * max_passes + kLanes);
  const Scratch scratch = acquire_scratch(sizeof(float) * (act_floats + size_t(kPassesPerRound * column_blocks * kMaxChunk)));
  float* act = reinterpret_cast<float*>(scratch.get());
  float* table = act + pass_floats * max_passes;
  float* partial = act + act_floats;
  float* out = scores.as<float>();

  for (int64_t round0 = 0; round0 < num_queries; round0 += kPassesPerRound * kMaxChunk) {
    // Pass p of the round: queries [first[p], first[p] + rows[p]), activations at act + p * pass_floats.
    const int64_t passes = std::min(kPassesPerRound, (num_queries - round0 + kMaxChunk - 1) / kMaxChunk);
    int64_t first[kPassesPerRound], rows[kPassesPerRound], width[kPassesPerRound];
    for (int64_t p = 0; p < passes; ++p) {
      first[p] = round0 + p * kMaxChunk;
      rows[p] = std::min(kMaxChunk, num_queries - first[p]);
      width[p] = rows[p] == 1 ? 1 : (rows[p] + kLanes - 1) / kLanes * kLanes;
    }
    dispatch_float(logits.dtype, "logits", [&](auto tag) {
      using T = typename decltype(tag)::type;
      parallel_for(0, passes * column_blocks, activation_grain(rows[0]), [&](int64_t lo, int64_t hi) {
        for (int64_t task = lo; task < hi; ++task) {
          const int64_t p = task / column_blocks, b = task % column_blocks;
          activate_columns_simd(logits.as<T>() + first[p] * logits.stride(0), logits.stride(0), rows[p], width[p],
                                b * kColumnBlock, std::min(vocab, (b + 1) * kColumnBlock), act + p * pass_floats,
                                partial + task * kMaxChunk);
        }
      });
    });
    alignas(32) float totals[kPassesPerRound][kMaxChunk] = {};
    for (int64_t p = 0; p < passes; ++p)
      for (int64_t b = 0; b < column_blocks; ++b)
        for (int64_t q = 0; q < rows[p]; ++q) totals[p][q] += partial[(p * column_blocks + b) * kMaxChunk + q];

    std::atomic<bool> out_of_range{false};
    // What the words' sets index: the activations, or the row sums.
    const float* sources[kPassesPerRound];
    for (int64_t p = 0; p < passes; ++p)
      sources[p] = dictionary.has_rows() ? table + p * table_floats : act + p * pass_floats;
    if (num_rows > 0) {
      const int64_t grain = gather_grain(pattern_rows.count, num_rows, width[0]);
      parallel_for(0, passes * row_blocks, grain, [&](int64_t lo, int64_t hi) {
        for (int64_t task = lo; task < hi; ++task) {
          const int64_t p = task / row_blocks, b = task % row_blocks;
          if (!sum_rows_simd(width[p], act + p * pass_floats, pattern_rows, b * kWordBlock,
                             std::min(num_rows, (b + 1) * kWordBlock), table + p * table_floats))
            return out_of_range.store(true);
        }
      });
      if (out_of_range) check_ranges(dictionary, vocab);
    }
    const int64_t set_entries = words.ne_count + words.edge_count;
    parallel_for(0, passes * word_blocks, gather_grain(set_entries, num_words, width[0]), [&](int64_t lo, int64_t hi) {
      alignas(32) float tile[kWordBlock * kMaxChunk];
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t p = task / word_blocks, b = task % word_blocks;
        const int64_t w0 = b * kWordBlock, w1 = std::min(num_words, w0 + kWordBlock);
        if (!score_words_simd(width[p], sources[p], totals[p], words, w0, w1, tile)) return out_of_range.store(true);
        write_tile(tile, width[p], rows[p], w1 - w0, out + first[p] * num_words + w0, num_words);
      }
      vec::stream_fence();  // before the caller (another thread) returns the scores
    });
    if (out_of_range) check_ranges(dictionary, vocab);
  }
}

}  // namespace lmk::sparse
