// Attention on the CPU (see attention.h for the math).
//
// Forward: a task per (item, query head, tile of 64 queries). The query tile is packed once as
// fp32 (pre-multiplied by the scale, the head dimension zero-padded to a multiple of 16); then,
// for each 64-key tile that some row of the tile can see, the keys are packed transposed and the
// values row-major, S = Q K^T is formed in a [64 x 64] buffer, each row is suppressed, masked and
// folded into the running maximum and sum (online softmax), and O += P V. Only the key tiles
// between the first row's first visible key and the last row's last one are visited. With a
// multiplicative factor a first pass over the counted keys finds each row's minimum score.
//
// Backward: delta_i = grad_out_i . out_i first, then tasks that each own what they write, so no
// two tasks add to the same value. Where there are at least twice as many (item, key/value head)
// pairs as threads, no factor, and room for an item's dq sums, one task per pair walks its key
// tiles, and for each the query heads of its group and the query tiles that can see the tile: a
// block's P and dS are recomputed once and feed dv, dk and dq (summed in the task's scratch).
// Otherwise two passes recompute each block twice: pass 1 (dq, dm) a task per (item, query head,
// query tile) over its key tiles, pass 2 (dk, dv, dbias, dfactor) a task per (item, key/value
// head, key tile) over the query tiles that see it. Both ways sum every gradient in the same
// order, so they give the same bits. P comes from the saved log-sum-exp (and the multiplicative
// form's saved row minimum).
//
// Every product is one register-blocked kernel, C (+)= A B with A read at any two strides (so
// that P^T and dS^T need no transposed copy): four rows of C by sixteen columns in eight vector
// accumulators. Scratch is allocated once per parallel chunk, never per tile. Results do not
// depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "attention/attention.h"
#include "common/dispatch.h"
#include "common/index_math.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/vec.h"
#include "common/vec_math.h"

namespace lmk::attention {
namespace {

using vec::f32x16;
using vec::f32x8;
using vec::i32x8;

constexpr int64_t kTileQ = 64;
constexpr int64_t kTileK = 64;
constexpr float kInf = std::numeric_limits<float>::infinity();

// One batch item (or packed sequence): where its rows start and how many queries and keys it has.
struct Item {
  int64_t index = 0;      // b, or the sequence number
  int64_t first_row = 0;  // varlen: cu_seqlens[n]
  int64_t queries = 0, keys = 0;  // Sq and N = P + Sk

  // Absolute position of query i among the keys.
  int64_t position(int64_t i) const { return keys - queries + i; }
};

int64_t seq_start(const AttentionProblem& p, int64_t n) {
  return p.cu_dtype == DType::Int32 ? int64_t(static_cast<const int32_t*>(p.cu_seqlens)[n])
                                    : static_cast<const int64_t*>(p.cu_seqlens)[n];
}

Item item_of(const AttentionProblem& p, int64_t n) {
  if (!p.cu_seqlens) return Item{n, 0, p.queries, p.prefix + p.keys};
  const int64_t start = seq_start(p, n), length = seq_start(p, n + 1) - start;
  return Item{n, start, length, length};
}

int64_t longest_item(const AttentionProblem& p) {
  if (!p.cu_seqlens) return p.queries;
  int64_t longest = 0;
  for (int64_t n = 0; n < p.items; ++n) longest = std::max(longest, seq_start(p, n + 1) - seq_start(p, n));
  return longest;
}

template <typename T>
T* row_of(const Operand& o, const Item& it, int64_t head, int64_t row) {
  return static_cast<T*>(o.data) + it.index * o.batch + head * o.head + (it.first_row + row) * o.row;
}

// Row `row` of a q, k or v gradient from its fp32 values: copied into a float32 gradient, or
// rounded once into T (`narrow`).
template <typename T>
void store_gradient_row(const Operand& o, bool narrow, const Item& it, int64_t head, int64_t row, const float* src,
                        int64_t dim) {
  if (!narrow) return void(std::copy(src, src + dim, row_of<float>(o, it, head, row)));
  T* dst = row_of<T>(o, it, head, row);
  for (int64_t d = 0; d < dim; ++d) dst[d] = from_float<T>(src[d]);
}

// Key j of the concatenated prefix ⊕ own keys.
template <typename T>
const T* key_row(const AttentionProblem& p, const Operand& prefix, const Operand& own, const Item& it, int64_t head,
                 int64_t j) {
  if (j < p.prefix) return static_cast<const T*>(prefix.data) + it.index * prefix.batch + head * prefix.head +
                           j * prefix.row;
  return row_of<const T>(own, it, head, j - p.prefix);
}

// The interval [lo, hi) of keys that query i sees.
struct Visible {
  int64_t lo, hi;
};

Visible visible_keys(const AttentionOptions& o, const Item& it, int64_t i) {
  const int64_t pos = it.position(i);
  return Visible{o.window > 0 ? std::max<int64_t>(0, pos - o.window + 1) : 0, o.causal ? pos + 1 : it.keys};
}

// The query rows [lo, hi) that see some key in [j0, j1).
Visible rows_seeing(const AttentionOptions& o, const Item& it, int64_t j0, int64_t j1) {
  const int64_t offset = it.keys - it.queries;
  int64_t lo = 0, hi = it.queries;
  if (o.causal) lo = std::max(lo, j0 - offset);
  if (o.window > 0) hi = std::min(hi, j1 - 1 + o.window - offset);
  return Visible{lo, std::max(lo, hi)};
}

// C[kRows x n] (+)= A(kRows x k) B[k x n], A(r, c) = a[r * a_row + c * a_col]; n a multiple of 16.
// A kRows x 16 register tile of 16-lane vectors: kRows AVX-512 accumulators, or 2 kRows AVX ones.
template <bool kAccumulate, int kRows>
__attribute__((always_inline)) inline void gemm_rows(float* c, int64_t ldc, const float* a, int64_t a_row,
                                                     int64_t a_col, const float* b, int64_t ldb, int64_t n,
                                                     int64_t k) {
  for (int64_t j = 0; j < n; j += 16) {
    f32x16 acc[kRows];
    for (int r = 0; r < kRows; ++r) acc[r] = kAccumulate ? vec::load16(c + r * ldc + j) : f32x16{};
    for (int64_t kk = 0; kk < k; ++kk) {
      const f32x16 bk = vec::load16(b + kk * ldb + j);
      const float* ak = a + kk * a_col;
      for (int r = 0; r < kRows; ++r) acc[r] += ak[r * a_row] * bk;
    }
    for (int r = 0; r < kRows; ++r) vec::store16(c + r * ldc + j, acc[r]);
  }
}

// C[m x n] (+)= A(m x k) B[k x n]; m a multiple of 4, n of 16. Rows go kMaxRows at a time: 8 where
// the CPU has AVX-512 (eight independent accumulators hide the FMA latency; AVX2 has too few
// registers for them), else 4. Every element sums in increasing k either way: the same bits.
template <bool kAccumulate, int kMaxRows>
__attribute__((always_inline)) inline void gemm(float* c, int64_t ldc, const float* a, int64_t a_row, int64_t a_col,
                                                const float* b, int64_t ldb, int64_t m, int64_t n, int64_t k) {
  int64_t i = 0;
  if constexpr (kMaxRows == 8)
    for (; i + 8 <= m; i += 8) gemm_rows<kAccumulate, 8>(c + i * ldc, ldc, a + i * a_row, a_row, a_col, b, ldb, n, k);
  for (; i < m; i += 4) gemm_rows<kAccumulate, 4>(c + i * ldc, ldc, a + i * a_row, a_row, a_col, b, ldb, n, k);
}

template <typename T>
__attribute__((always_inline)) inline void pack_row(float* dst, const T* src, int64_t dim, float scale) {
  for (int64_t d = 0; d < dim; ++d) dst[d] = scale * to_float(src[d]);
}

// Per-chunk scratch, sized once for the problem; the padding columns stay zero.
struct Scratch {
  int64_t dim_padded;
  std::vector<float> q, grad_out, keys_t, keys, values_t, values, scores, grad_scores, acc_a, acc_b;
  std::vector<float> raw_scores, bias, factor, row_min, row_max, row_sum, lse, delta, bias_acc, factor_acc;
  std::vector<int64_t> argmin;
  std::vector<Visible> visible;
  // The forward's key tiles of one (item, key head), packed once and reused by the chunk's later
  // query tiles of that head: keys transposed, [tile][dim_padded][kTileK], values [key][dim_padded].
  // Only the tiles from head_first_tile to the last one visited are held, so that a query tile whose
  // sliding window reaches a few tiles of a long item costs O(window), not O(keys).
  std::vector<float> head_keys_t, head_values;
  // The fused backward's dq sums of one (item, key/value head): [group heads][query tiles x kTileQ][dim_padded].
  std::vector<float> head_grad_q;
  std::vector<char> head_tile_packed;
  int64_t head_item = -1, head_kv = -1, head_first_tile = 0;

  explicit Scratch(int64_t dim) : dim_padded(round_up(dim, 16)) {
    const size_t tile = size_t(kTileQ * dim_padded), key_tile = size_t(kTileK * dim_padded);
    for (auto* v : {&q, &grad_out, &acc_a}) v->assign(tile, 0.f);
    for (auto* v : {&keys_t, &keys, &values_t, &values, &acc_b}) v->assign(key_tile, 0.f);
    for (auto* v : {&scores, &grad_scores, &raw_scores}) v->assign(size_t(kTileQ * kTileK), 0.f);
    for (auto* v : {&bias, &factor, &bias_acc, &factor_acc}) v->assign(size_t(kTileK), 0.f);
    for (auto* v : {&row_min, &row_max, &row_sum, &lse, &delta}) v->assign(size_t(kTileQ), 0.f);
    argmin.assign(size_t(kTileQ), 0);
    visible.assign(size_t(kTileQ), Visible{0, 0});
  }
};

// The bias and factor of keys [j0, j0 + count) (0 and 1 past them).
__attribute__((always_inline)) inline void pack_key_weights(const AttentionProblem& p, const Item& it, int64_t j0,
                                                            int64_t count, Scratch& s) {
  const int64_t b = it.index;
  for (int64_t jj = 0; jj < kTileK; ++jj) {
    if (p.key_bias) s.bias[size_t(jj)] = jj < count ? p.key_bias[b * p.bias_stride + j0 + jj] : 0.f;
    if (p.key_factor) s.factor[size_t(jj)] = jj < count ? p.key_factor[b * p.factor_stride + j0 + jj] : 1.f;
  }
}

// Packs keys [j0, j0 + count) of one head: transposed into keys_t (and row-major into keys when
// asked), values row-major and/or transposed, the bias and factor of those keys.
template <typename T>
__attribute__((always_inline)) inline void pack_keys(const AttentionProblem& p, const Item& it, int64_t kv_head,
                                                     int64_t j0, int64_t count, Scratch& s, bool keys_row_major,
                                                     bool values_row_major, bool values_transposed) {
  const int64_t dp = s.dim_padded;
  for (int64_t jj = 0; jj < count; ++jj) {
    const T* k = key_row<T>(p, p.prefix_k, p.k, it, kv_head, j0 + jj);
    const T* v = key_row<T>(p, p.prefix_v, p.v, it, kv_head, j0 + jj);
    for (int64_t d = 0; d < p.dim; ++d) s.keys_t[size_t(d * kTileK + jj)] = to_float(k[d]);
    if (keys_row_major) pack_row(s.keys.data() + jj * dp, k, p.dim, 1.f);
    if (values_row_major) pack_row(s.values.data() + jj * dp, v, p.dim, 1.f);
    if (values_transposed)
      for (int64_t d = 0; d < p.dim; ++d) s.values_t[size_t(d * kTileK + jj)] = to_float(v[d]);
  }
  pack_key_weights(p, it, j0, count, s);
}

// The forward's key tile at j0 of one head, (keys transposed, values row-major), from the scratch's
// head cache, packed on first use: repacking it for every query tile cost about a tenth of the
// forward. Padding (keys past the item, dims past dim) stays zero.
template <typename T>
__attribute__((always_inline)) inline std::pair<const float*, const float*> head_key_tile(
    const AttentionProblem& p, const Item& it, int64_t kv_head, int64_t j0, Scratch& s) {
  const int64_t dp = s.dim_padded, tile = j0 / kTileK;
  const size_t tile_floats = size_t(kTileK * dp);
  if (s.head_item != it.index || s.head_kv != kv_head) {  // clear() keeps the capacity for the next head
    s.head_keys_t.clear();
    s.head_values.clear();
    s.head_tile_packed.clear();
    s.head_item = it.index, s.head_kv = kv_head, s.head_first_tile = tile;
  }
  // A chunk that began inside a query head meets lower tiles at the group's next head: zeroed tiles
  // go in front, at most once per (item, key head).
  if (tile < s.head_first_tile) {
    const size_t added = size_t(s.head_first_tile - tile);
    s.head_keys_t.insert(s.head_keys_t.begin(), added * tile_floats, 0.f);
    s.head_values.insert(s.head_values.begin(), added * tile_floats, 0.f);
    s.head_tile_packed.insert(s.head_tile_packed.begin(), added, 0);
    s.head_first_tile = tile;
  }
  const size_t slot = size_t(tile - s.head_first_tile);
  if (slot >= s.head_tile_packed.size()) {
    s.head_keys_t.resize((slot + 1) * tile_floats, 0.f);
    s.head_values.resize((slot + 1) * tile_floats, 0.f);
    s.head_tile_packed.resize(slot + 1, 0);
  }
  float* keys_t = s.head_keys_t.data() + slot * tile_floats;
  float* values = s.head_values.data() + slot * tile_floats;
  if (!s.head_tile_packed[slot]) {
    for (int64_t jj = 0; jj < std::min(kTileK, it.keys - j0); ++jj) {
      const T* k = key_row<T>(p, p.prefix_k, p.k, it, kv_head, j0 + jj);
      for (int64_t d = 0; d < p.dim; ++d) keys_t[d * kTileK + jj] = to_float(k[d]);
      pack_row(values + jj * dp, key_row<T>(p, p.prefix_v, p.v, it, kv_head, j0 + jj), p.dim, 1.f);
    }
    s.head_tile_packed[slot] = 1;
  }
  return {keys_t, values};
}

// Packs queries [i0, i0 + count) of one head (scaled), and their visible intervals.
template <typename T>
__attribute__((always_inline)) inline void pack_queries(const AttentionProblem& p, const Item& it, int64_t head,
                                                        int64_t i0, int64_t count, Scratch& s) {
  const int64_t dp = s.dim_padded;
  const float scale = float(p.options.scale);
  for (int64_t r = 0; r < kTileQ; ++r) {
    float* dst = s.q.data() + r * dp;
    if (r < count) pack_row(dst, row_of<const T>(p.q, it, head, i0 + r), p.dim, scale);
    else std::fill(dst, dst + p.dim, 0.f);
    if (r < count) s.visible[size_t(r)] = visible_keys(p.options, it, i0 + r);
  }
}

// Query tile `tile` of one head of an item: its first row, row count (0 past the item's end), the
// key/value head, the rows padded for the micro-kernels, and the keys any of its rows sees,
// [first_key, last_key). The queries are packed (pack_queries) when there are any.
struct QueryTile {
  int64_t i0, count, kv_head, rows, first_key, last_key;
};

template <typename T>
__attribute__((always_inline)) inline QueryTile pack_query_tile(const AttentionProblem& p, const Item& it,
                                                                int64_t head, int64_t tile, Scratch& s) {
  const int64_t i0 = tile * kTileQ, count = std::min(kTileQ, it.queries - i0);
  if (count <= 0) return QueryTile{i0, 0, 0, 0, 0, 0};
  pack_queries<T>(p, it, head, i0, count, s);
  return QueryTile{i0, count, head / (p.q_heads / p.kv_heads), round_up(count, 4), s.visible[0].lo,
                   s.visible[size_t(count - 1)].hi};
}

// One row of scores for keys [j0, j0 + kTileK): the factor around the row minimum, the bias, and
// -inf outside [lo, hi). Returns the row's maximum (NaN never wins: it reaches the sum instead).
__attribute__((always_inline)) inline float suppress_and_mask(float* row, const Scratch& s, const AttentionProblem& p,
                                                              int64_t j0, Visible vis, float row_min) {
  const bool masked = vis.lo > j0 || vis.hi < j0 + kTileK;
  const i32x8 lanes = {0, 1, 2, 3, 4, 5, 6, 7};
  f32x8 best = vec::splat(-kInf);
  for (int64_t j = 0; j < kTileK; j += 8) {
    f32x8 x = vec::load8(row + j);
    if (p.key_factor) {
      const f32x8 c = vec::load8(s.factor.data() + j);
      x = (i32x8)(c == 1.f) ? x : row_min + c * (x - row_min);
    }
    if (p.key_bias) x += vec::load8(s.bias.data() + j);
    if (masked) {
      const i32x8 key = lanes + int32_t(j0 + j);
      x = (key >= int32_t(vis.lo) && key < int32_t(vis.hi)) ? x : vec::splat(-kInf);
    }
    vec::store8(row + j, x);
    best = (i32x8)(x > best) ? x : best;
  }
  float lanes_out[8];
  std::memcpy(lanes_out, &best, sizeof lanes_out);
  float m = -kInf;
  for (float x : lanes_out) m = x > m ? x : m;
  return m;
}

// The outputs as operands (varlen or dense alike).
struct ForwardOperands {
  Operand out, lse, row_min, row_argmin, out_residual;
};


template <typename T, int kRows>
__attribute__((always_inline)) inline void forward_task(const AttentionProblem& p, const ForwardOperands& out,
                                                        const Item& it, int64_t head, int64_t tile, Scratch& s) {
  const auto [i0, count, kv_head, rows, first_key, last_key] = pack_query_tile<T>(p, it, head, tile, s);
  if (count == 0) return;
  const int64_t dp = s.dim_padded;

  if (p.key_factor) {  // the minimum of each row's counted raw scores, and its first key
    const bool all = p.options.factor_min_all;
    std::fill(s.row_min.begin(), s.row_min.end(), kInf);
    std::fill(s.argmin.begin(), s.argmin.end(), int64_t(0));
    const int64_t lo = all ? 0 : first_key, hi = all ? it.keys : last_key;
    for (int64_t j0 = lo / kTileK * kTileK; j0 < hi; j0 += kTileK) {
      const int64_t n = std::min(kTileK, it.keys - j0);
      const float* keys_t = head_key_tile<T>(p, it, kv_head, j0, s).first;
      gemm<false, kRows>(s.scores.data(), kTileK, s.q.data(), dp, 1, keys_t, kTileK, rows, kTileK, dp);
      for (int64_t r = 0; r < count; ++r) {
        const Visible counted = all ? Visible{0, it.keys} : s.visible[size_t(r)];
        const float* row = s.scores.data() + r * kTileK;
        float m = s.row_min[size_t(r)];
        int64_t argmin = s.argmin[size_t(r)];
        for (int64_t j = std::max(counted.lo, j0); j < std::min(counted.hi, j0 + n); ++j)
          if (row[j - j0] < m) m = row[j - j0], argmin = j;
        s.row_min[size_t(r)] = m;
        s.argmin[size_t(r)] = argmin;
      }
    }
  }

  std::fill(s.row_max.begin(), s.row_max.end(), -kInf);
  std::fill(s.row_sum.begin(), s.row_sum.end(), 0.f);
  std::fill(s.acc_a.begin(), s.acc_a.end(), 0.f);
  for (int64_t j0 = first_key / kTileK * kTileK; j0 < last_key; j0 += kTileK) {
    const int64_t n = std::min(kTileK, it.keys - j0);
    const auto [keys_t, values] = head_key_tile<T>(p, it, kv_head, j0, s);
    pack_key_weights(p, it, j0, n, s);
    gemm<false, kRows>(s.scores.data(), kTileK, s.q.data(), dp, 1, keys_t, kTileK, rows, kTileK, dp);
    for (int64_t r = 0; r < count; ++r) {
      float* row = s.scores.data() + r * kTileK;
      const float tile_max = suppress_and_mask(row, s, p, j0, s.visible[size_t(r)], s.row_min[size_t(r)]);
      const float old_max = s.row_max[size_t(r)], new_max = tile_max > old_max ? tile_max : old_max;
      const float base = new_max == -kInf ? 0.f : new_max;
      const float rescale = std::exp(old_max - base);
      f32x16 sum = {};
      for (int64_t j = 0; j < kTileK; j += 16) {
        const f32x16 e = vec::exp(vec::load16(row + j) - base);
        vec::store16(row + j, e);
        sum += e;
      }
      float lanes[16];
      std::memcpy(lanes, &sum, sizeof lanes);
      float total = 0.f;
      for (float x : lanes) total += x;
      s.row_sum[size_t(r)] = s.row_sum[size_t(r)] * rescale + total;
      s.row_max[size_t(r)] = new_max;
      if (rescale != 1.f) {
        float* o = s.acc_a.data() + r * dp;
        for (int64_t d = 0; d < dp; ++d) o[d] *= rescale;
      }
    }
    gemm<true, kRows>(s.acc_a.data(), dp, s.scores.data(), kTileK, 1, values, dp, rows, dp, n);
  }

  for (int64_t r = 0; r < count; ++r) {
    const float sum = s.row_sum[size_t(r)], m = s.row_max[size_t(r)];
    const float inverse = sum == 0.f ? 0.f : 1.f / sum;  // a row that sees no key (all bias -inf) gives 0
    const float* o = s.acc_a.data() + r * dp;
    T* dst = row_of<T>(out.out, it, head, i0 + r);
    for (int64_t d = 0; d < p.dim; ++d) dst[d] = from_float<T>(o[d] * inverse);
    if (out.out_residual.data) {
      T* residual = row_of<T>(out.out_residual, it, head, i0 + r);
      for (int64_t d = 0; d < p.dim; ++d) residual[d] = from_float<T>(o[d] * inverse - to_float(dst[d]));
    }
    *row_of<float>(out.lse, it, head, i0 + r) = sum == 0.f ? -kInf : (m == -kInf ? 0.f : m) + std::log(sum);
    if (p.key_factor) {
      *row_of<float>(out.row_min, it, head, i0 + r) = s.row_min[size_t(r)];
      *row_of<int64_t>(out.row_argmin, it, head, i0 + r) = s.argmin[size_t(r)];
    }
  }
}


// delta_i = grad_out_i . (out_i + residual_i) in fp32 (increasing d) of queries [i0, i0 + count) of
// one head, into g.delta: with the residual, within a few fp32 roundings of sum_j P_ij dP_ij.
template <typename T>
void write_deltas(const AttentionProblem& p, const GradientOperands& g, const Item& it, int64_t head, int64_t i0,
                  int64_t count) {
  for (int64_t i = i0; i < i0 + count; ++i) {
    const T* grad_out = row_of<const T>(g.grad_out, it, head, i);
    const T* out = row_of<const T>(g.out, it, head, i);
    const T* residual = g.out_residual.data ? row_of<const T>(g.out_residual, it, head, i) : nullptr;
    float delta = 0.f;
    for (int64_t d = 0; d < p.dim; ++d)
      delta += to_float(grad_out[d]) * (residual ? to_float(out[d]) + to_float(residual[d]) : to_float(out[d]));
    *row_of<float>(g.delta, it, head, i) = delta;
  }
}

// Packs the grad_out rows, lse, delta and the row minimum and its key (multiplicative form) of
// queries [i0, i0 + count) of one head.
template <typename T>
__attribute__((always_inline)) inline void pack_gradient_rows(const AttentionProblem& p, const GradientOperands& g,
                                                              const Item& it, int64_t head, int64_t i0, int64_t count,
                                                              Scratch& s) {
  const int64_t dp = s.dim_padded;
  for (int64_t r = 0; r < kTileQ; ++r) {
    float* dst = s.grad_out.data() + r * dp;
    if (r >= count) {
      std::fill(dst, dst + p.dim, 0.f);
      continue;
    }
    pack_row(dst, row_of<const T>(g.grad_out, it, head, i0 + r), p.dim, 1.f);
    s.lse[size_t(r)] = *row_of<const float>(g.lse, it, head, i0 + r);
    s.delta[size_t(r)] = *row_of<const float>(g.delta, it, head, i0 + r);
    if (p.key_factor) {
      s.row_min[size_t(r)] = *row_of<const float>(g.row_min, it, head, i0 + r);
      s.argmin[size_t(r)] = *row_of<const int64_t>(g.row_argmin, it, head, i0 + r);
    }
  }
}

// Recomputes one [query tile x key tile] block: the probabilities P in s.scores (the raw scores
// in s.raw_scores with a factor) and dP = grad_out V^T in s.grad_scores. Needs the queries,
// grad_out rows, keys_t and values_t packed.
template <int kRows>
__attribute__((always_inline)) inline void recompute_block(const AttentionProblem& p, Scratch& s, int64_t j0,
                                                           int64_t count) {
  const int64_t dp = s.dim_padded, rows = round_up(count, 4);
  gemm<false, kRows>(s.scores.data(), kTileK, s.q.data(), dp, 1, s.keys_t.data(), kTileK, rows, kTileK, dp);
  gemm<false, kRows>(s.grad_scores.data(), kTileK, s.grad_out.data(), dp, 1, s.values_t.data(), kTileK, rows, kTileK, dp);
  if (p.key_factor) std::copy(s.scores.begin(), s.scores.begin() + count * kTileK, s.raw_scores.begin());
  for (int64_t r = 0; r < count; ++r) {
    float* row = s.scores.data() + r * kTileK;
    suppress_and_mask(row, s, p, j0, s.visible[size_t(r)], s.row_min[size_t(r)]);
    const float lse = s.lse[size_t(r)];
    const bool empty = lse == -kInf;  // the row saw no key: it has no gradient
    for (int64_t j = 0; j < kTileK; j += 16)
      vec::store16(row + j, empty ? f32x16{} : vec::exp(vec::load16(row + j) - lse));
  }
  for (int64_t r = count; r < rows; ++r) {  // padding rows take part in the transposed products
    std::fill(s.scores.begin() + r * kTileK, s.scores.begin() + (r + 1) * kTileK, 0.f);
    std::fill(s.grad_scores.begin() + r * kTileK, s.grad_scores.begin() + (r + 1) * kTileK, 0.f);
  }
}

__attribute__((always_inline)) inline float lane_sum(f32x8 v) {
  float lanes[8];
  std::memcpy(lanes, &v, sizeof lanes);
  float total = 0.f;
  for (float x : lanes) total += x;
  return total;
}

// G = P (dP - delta) of the block's rows < count, in place of dP, times the factor c_j where there
// is one. With `key_sums`, dbias_j += sum_i G_ij and dfactor_j += sum_i G_ij (s_ij - m_i); with
// `grad_min`, dm_i += sum_j G_ij (1 - c_j). The one place G is formed, so that every pass rounds alike.
__attribute__((always_inline)) inline void block_gradients(const AttentionProblem& p, Scratch& s, int64_t count,
                                                           bool key_sums, float* grad_min) {
  for (int64_t r = 0; r < count; ++r) {
    const float* prob_row = s.scores.data() + r * kTileK;
    float* grad_row = s.grad_scores.data() + r * kTileK;
    const float delta = s.delta[size_t(r)], row_min = s.row_min[size_t(r)];
    f32x8 rest = {};
    for (int64_t j = 0; j < kTileK; j += 8) {
      const f32x8 grad = vec::load8(prob_row + j) * (vec::load8(grad_row + j) - delta);
      if (key_sums) {
        float* bias_acc = s.bias_acc.data() + j;
        vec::store8(bias_acc, vec::load8(bias_acc) + grad);
      }
      if (p.key_factor) {
        const f32x8 c = vec::load8(s.factor.data() + j);
        if (key_sums) {
          float* factor_acc = s.factor_acc.data() + j;
          const f32x8 raw = vec::load8(s.raw_scores.data() + r * kTileK + j);
          // Masked keys have G = 0, but their raw score may be anything: select, not multiply.
          const f32x8 term = (i32x8)(grad == 0.f) ? vec::splat(0.f) : grad * (raw - row_min);
          vec::store8(factor_acc, vec::load8(factor_acc) + term);
        }
        if (grad_min) rest += grad * (1.f - c);
        vec::store8(grad_row + j, grad * c);
      } else {
        vec::store8(grad_row + j, grad);
      }
    }
    if (grad_min) grad_min[r] += lane_sum(rest);
  }
}

// Pass 1: dq of one query tile and, with a factor, dm:
//   dq_i = scale (sum_j G_ij c_j k_j + dm_i k_{a_i}),  dm_i = sum_j G_ij (1 - c_j)
template <typename T, int kRows>
__attribute__((always_inline)) inline void grad_query_task(const AttentionProblem& p, const GradientOperands& g,
                                                           const Item& it, int64_t head, int64_t tile, Scratch& s) {
  const auto [i0, count, kv_head, rows, first_key, last_key] = pack_query_tile<T>(p, it, head, tile, s);
  if (count == 0) return;
  const int64_t dp = s.dim_padded;
  write_deltas<T>(p, g, it, head, i0, count);
  pack_gradient_rows<T>(p, g, it, head, i0, count, s);
  std::fill(s.acc_a.begin(), s.acc_a.end(), 0.f);
  float grad_min[kTileQ] = {};
  for (int64_t j0 = first_key / kTileK * kTileK; j0 < last_key; j0 += kTileK) {
    const int64_t n = std::min(kTileK, it.keys - j0);
    pack_keys<T>(p, it, kv_head, j0, n, s, true, false, true);
    recompute_block<kRows>(p, s, j0, count);
    block_gradients(p, s, count, false, p.key_factor ? grad_min : nullptr);
    gemm<true, kRows>(s.acc_a.data(), dp, s.grad_scores.data(), kTileK, 1, s.keys.data(), dp, rows, dp, n);
  }
  const float scale = float(p.options.scale);
  for (int64_t r = 0; r < count; ++r) {
    float* dq = s.acc_a.data() + r * dp;
    for (int64_t d = 0; d < p.dim; ++d) dq[d] *= scale;
    if (p.key_factor) {
      const T* key = key_row<T>(p, p.prefix_k, p.k, it, kv_head, s.argmin[size_t(r)]);
      for (int64_t d = 0; d < p.dim; ++d) dq[d] += scale * grad_min[r] * to_float(key[d]);
      *row_of<float>(g.grad_min, it, head, i0 + r) = grad_min[r];
    }
    store_gradient_row<T>(g.grad_q, g.narrow_q, it, head, i0 + r, dq, p.dim);
  }
}

// The key tile at j0 of one key/value head, over the query heads of its group and the query tiles
// that see it: dv and dk (in acc_a and acc_b) and the per-key sums, and with `head_grad_q` the dq
// sums of those query tiles (head_grad_q: the group's first head, rows of `padded_queries`).
template <typename T, int kRows>
__attribute__((always_inline)) inline void key_tile_gradients(const AttentionProblem& p, const GradientOperands& g,
                                                              const Item& it, int64_t kv_head, int64_t j0, int64_t n,
                                                              Scratch& s, float* head_grad_q, int64_t padded_queries) {
  const int64_t dp = s.dim_padded, group = p.q_heads / p.kv_heads;
  pack_keys<T>(p, it, kv_head, j0, n, s, head_grad_q != nullptr, false, true);
  std::fill(s.acc_a.begin(), s.acc_a.begin() + kTileK * dp, 0.f);  // dv
  std::fill(s.acc_b.begin(), s.acc_b.end(), 0.f);                  // dk
  std::fill(s.bias_acc.begin(), s.bias_acc.end(), 0.f);
  std::fill(s.factor_acc.begin(), s.factor_acc.end(), 0.f);
  const Visible seeing = rows_seeing(p.options, it, j0, j0 + n);
  for (int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head) {
    for (int64_t i0 = seeing.lo / kTileQ * kTileQ; i0 < seeing.hi; i0 += kTileQ) {
      const int64_t count = std::min(kTileQ, it.queries - i0), rows = round_up(count, 4);
      pack_queries<T>(p, it, head, i0, count, s);
      pack_gradient_rows<T>(p, g, it, head, i0, count, s);
      recompute_block<kRows>(p, s, j0, count);
      block_gradients(p, s, count, true, nullptr);
      // dv_j += sum_i P_ij grad_out_i and dk_j += sum_i dS_ij (scale q_i): A read transposed.
      gemm<true, kRows>(s.acc_a.data(), dp, s.scores.data(), 1, kTileK, s.grad_out.data(), dp, kTileK, dp, rows);
      gemm<true, kRows>(s.acc_b.data(), dp, s.grad_scores.data(), 1, kTileK, s.q.data(), dp, kTileK, dp, rows);
      if (head_grad_q) {
        float* dq = head_grad_q + ((head - kv_head * group) * padded_queries + i0) * dp;
        gemm<true, kRows>(dq, dp, s.grad_scores.data(), kTileK, 1, s.keys.data(), dp, rows, dp, n);
      }
    }
  }
}

// dk, dv and the per-key gradients of one key tile from acc_b, acc_a and the per-key sums.
template <typename T>
__attribute__((always_inline)) inline void store_key_tile(const AttentionProblem& p, const GradientOperands& g,
                                                          const Item& it, int64_t kv_head, int64_t j0, int64_t n,
                                                          const Scratch& s) {
  const int64_t dp = s.dim_padded;
  for (int64_t jj = 0; jj < n; ++jj) {
    store_gradient_row<T>(g.grad_k, g.narrow_kv, it, kv_head, j0 + jj, s.acc_b.data() + jj * dp, p.dim);
    store_gradient_row<T>(g.grad_v, g.narrow_kv, it, kv_head, j0 + jj, s.acc_a.data() + jj * dp, p.dim);
    if (p.key_bias) *row_of<float>(g.grad_bias, it, kv_head, j0 + jj) = s.bias_acc[size_t(jj)];
    if (p.key_factor) *row_of<float>(g.grad_factor, it, kv_head, j0 + jj) = s.factor_acc[size_t(jj)];
  }
}

// Pass 2: dk, dv and the bias and factor gradients of one key tile of one key/value head:
//   dv_j = sum_i P_ij grad_out_i,  dk_j = sum_i G_ij c_j (scale q_i) + sum_{i : a_i = j} dm_i (scale q_i)
//   dbias_j = sum_i G_ij,  dfactor_j = sum_i G_ij (s_ij - m_i)
template <typename T, int kRows>
__attribute__((always_inline)) inline void grad_key_task(const AttentionProblem& p, const GradientOperands& g,
                                                         const Item& it, int64_t kv_head, int64_t tile, Scratch& s) {
  const int64_t j0 = tile * kTileK, n = std::min(kTileK, it.keys - j0);
  if (n <= 0) return;
  const int64_t dp = s.dim_padded, group = p.q_heads / p.kv_heads;
  key_tile_gradients<T, kRows>(p, g, it, kv_head, j0, n, s, nullptr, 0);
  if (p.key_factor) {  // the rows whose minimum sits on a key of this tile (any row, for factor_min="all")
    const float scale = float(p.options.scale);
    for (int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head)
      for (int64_t i = 0; i < it.queries; ++i) {
        const int64_t a = *row_of<const int64_t>(g.row_argmin, it, head, i);
        if (a < j0 || a >= j0 + n) continue;
        const float weight = scale * *row_of<const float>(g.grad_min, it, head, i);
        const T* q = row_of<const T>(p.q, it, head, i);
        float* dk = s.acc_b.data() + (a - j0) * dp;
        for (int64_t d = 0; d < p.dim; ++d) dk[d] += weight * to_float(q[d]);
      }
  }
  store_key_tile<T>(p, g, it, kv_head, j0, n, s);
}

// The fused backward of one (item, key/value head), without a factor: the key tiles in turn, each
// block recomputed once for dv, dk and the dq sums, which sum over the key tiles in increasing
// order as pass 1's do.
template <typename T, int kRows>
__attribute__((always_inline)) inline void grad_head_task(const AttentionProblem& p, const GradientOperands& g,
                                                          const Item& it, int64_t kv_head, Scratch& s) {
  const int64_t dp = s.dim_padded, group = p.q_heads / p.kv_heads, padded_queries = round_up(it.queries, kTileQ);
  for (int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head)
    write_deltas<T>(p, g, it, head, 0, it.queries);
  s.head_grad_q.assign(size_t(group * padded_queries * dp), 0.f);
  for (int64_t j0 = 0; j0 < it.keys; j0 += kTileK) {
    const int64_t n = std::min(kTileK, it.keys - j0);
    key_tile_gradients<T, kRows>(p, g, it, kv_head, j0, n, s, s.head_grad_q.data(), padded_queries);
    store_key_tile<T>(p, g, it, kv_head, j0, n, s);
  }
  const float scale = float(p.options.scale);
  for (int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head)
    for (int64_t i = 0; i < it.queries; ++i) {
      float* dq = s.head_grad_q.data() + ((head - kv_head * group) * padded_queries + i) * dp;
      for (int64_t d = 0; d < p.dim; ++d) dq[d] *= scale;
      store_gradient_row<T>(g.grad_q, g.narrow_q, it, head, i, dq, p.dim);
    }
}

// Each task compiled for each SIMD level (LMK_SIMD_CLONES, 4-row GEMM tiles) and, on x86, once more
// for AVX-512 with 8-row tiles, which the *_simd functions pick on CPUs that have it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LMK_AVX512_TASK(DECLARATION, ...) __attribute__((target("arch=x86-64-v4"))) DECLARATION { __VA_ARGS__; }
#define LMK_PICK(NAME) (cpu_has_avx512() ? NAME##_avx512 : NAME)
bool cpu_has_avx512() {
  static const bool has = simd_level() == "avx512";
  return has;
}
#else
#define LMK_AVX512_TASK(DECLARATION, ...)
#define LMK_PICK(NAME) NAME
#endif

#define LMK_DEFINE_TASKS(T, SUFFIX)                                                                                   \
  LMK_SIMD_CLONES void forward_##SUFFIX(const AttentionProblem& p, const ForwardOperands& out, const Item& it,        \
                                        int64_t head, int64_t tile, Scratch& s) {                                     \
    forward_task<T, 4>(p, out, it, head, tile, s);                                                                    \
  }                                                                                                                   \
  LMK_SIMD_CLONES void grad_query_##SUFFIX(const AttentionProblem& p, const GradientOperands& g, const Item& it,      \
                                           int64_t head, int64_t tile, Scratch& s) {                                  \
    grad_query_task<T, 4>(p, g, it, head, tile, s);                                                                   \
  }                                                                                                                   \
  LMK_SIMD_CLONES void grad_key_##SUFFIX(const AttentionProblem& p, const GradientOperands& g, const Item& it,        \
                                         int64_t head, int64_t tile, Scratch& s) {                                    \
    grad_key_task<T, 4>(p, g, it, head, tile, s);                                                                     \
  }                                                                                                                   \
  LMK_SIMD_CLONES void grad_head_##SUFFIX(const AttentionProblem& p, const GradientOperands& g, const Item& it,       \
                                          int64_t head, Scratch& s) {                                                 \
    grad_head_task<T, 4>(p, g, it, head, s);                                                                          \
  }                                                                                                                   \
  LMK_AVX512_TASK(void forward_##SUFFIX##_avx512(const AttentionProblem& p, const ForwardOperands& out,              \
                                                 const Item& it, int64_t head, int64_t tile, Scratch& s),             \
                  forward_task<T, 8>(p, out, it, head, tile, s))                                                      \
  LMK_AVX512_TASK(void grad_query_##SUFFIX##_avx512(const AttentionProblem& p, const GradientOperands& g,            \
                                                    const Item& it, int64_t head, int64_t tile, Scratch& s),          \
                  grad_query_task<T, 8>(p, g, it, head, tile, s))                                                     \
  LMK_AVX512_TASK(void grad_key_##SUFFIX##_avx512(const AttentionProblem& p, const GradientOperands& g,              \
                                                  const Item& it, int64_t head, int64_t tile, Scratch& s),            \
                  grad_key_task<T, 8>(p, g, it, head, tile, s))                                                       \
  LMK_AVX512_TASK(void grad_head_##SUFFIX##_avx512(const AttentionProblem& p, const GradientOperands& g,             \
                                                   const Item& it, int64_t head, Scratch& s),                         \
                  grad_head_task<T, 8>(p, g, it, head, s))                                                            \
  void forward_simd(TypeTag<T>, const AttentionProblem& p, const ForwardOperands& out, const Item& it, int64_t head, \
                    int64_t tile, Scratch& s) {                                                                       \
    LMK_PICK(forward_##SUFFIX)(p, out, it, head, tile, s);                                                            \
  }                                                                                                                   \
  void grad_query_simd(TypeTag<T>, const AttentionProblem& p, const GradientOperands& g, const Item& it,             \
                       int64_t head, int64_t tile, Scratch& s) {                                                      \
    LMK_PICK(grad_query_##SUFFIX)(p, g, it, head, tile, s);                                                           \
  }                                                                                                                   \
  void grad_key_simd(TypeTag<T>, const AttentionProblem& p, const GradientOperands& g, const Item& it, int64_t head, \
                     int64_t tile, Scratch& s) {                                                                      \
    LMK_PICK(grad_key_##SUFFIX)(p, g, it, head, tile, s);                                                             \
  }                                                                                                                   \
  void grad_head_simd(TypeTag<T>, const AttentionProblem& p, const GradientOperands& g, const Item& it, int64_t head,\
                      Scratch& s) {                                                                                   \
    LMK_PICK(grad_head_##SUFFIX)(p, g, it, head, s);                                                                  \
  }
LMK_DEFINE_TASKS(float, f32)
LMK_DEFINE_TASKS(bfloat16, bf16)
LMK_DEFINE_TASKS(float16, f16)
#undef LMK_DEFINE_TASKS
#undef LMK_AVX512_TASK
#undef LMK_PICK

// Runs task(item, head, tile, scratch) over every item x heads x tiles, in parallel.
template <typename Task>
void for_each_tile(const AttentionProblem& p, int64_t heads, int64_t tiles, const Task& task) {
  if (tiles == 0 || heads == 0 || p.items == 0) return;
  parallel_for(0, p.items * heads * tiles, 1, [&](int64_t lo, int64_t hi) {
    Scratch scratch(p.dim);
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t tile = t % tiles, head = t / tiles % heads, n = t / tiles / heads;
      task(item_of(p, n), head, tile, scratch);
    }
  });
}

}  // namespace

void attention_forward_cpu(const AttentionProblem& p, const AttentionForwardOutputs& out) {
  check_cu_seqlens_values(p);
  const bool varlen = p.cu_seqlens != nullptr;
  const ForwardOperands ops{operand_of(out.out, varlen), operand_of(out.lse, varlen),
                            out.row_min ? operand_of(*out.row_min, varlen) : Operand{},
                            out.row_argmin ? operand_of(*out.row_argmin, varlen) : Operand{},
                            out.out_residual ? operand_of(*out.out_residual, varlen) : Operand{}};
  const int64_t tiles = (longest_item(p) + kTileQ - 1) / kTileQ;
  dispatch_float(p.dtype, "q", [&](auto tag) {
    for_each_tile(p, p.q_heads, tiles, [&](const Item& it, int64_t head, int64_t tile, Scratch& s) {
      forward_simd(tag, p, ops, it, head, tile, s);
    });
  });
}

void attention_backward_cpu(const AttentionProblem& p, const AttentionGradients& g) {
  check_cu_seqlens_values(p);
  if (g.row_argmin) {  // the keys the backward will read at these indices
    const int64_t* argmin = g.row_argmin->as<const int64_t>();
    for (int64_t e = 0; e < g.row_argmin->numel(); ++e)
      if (argmin[e] < 0 || argmin[e] >= p.prefix + p.keys)
        fail(ErrorKind::Index, "row_argmin: expected keys in [0, ", p.prefix + p.keys, "), got ", argmin[e], " at ",
             e);
  }
  const bool varlen = p.cu_seqlens != nullptr;
  const GradientOperands ops = gradient_operands(g, varlen);
  const int64_t longest = longest_item(p);
  const int64_t longest_keys = varlen ? longest : p.prefix + p.keys;
  // Fused where it leaves no thread idle and its dq sums fit 32 MiB of scratch per thread: the same
  // bits either way.
  const int64_t grad_q_bytes = p.q_heads / p.kv_heads * round_up(longest, kTileQ) * round_up(p.dim, 16) * 4;
  const bool fused = !p.key_factor && p.items * p.kv_heads >= 2 * int64_t(num_threads()) &&
                     grad_q_bytes <= (int64_t(32) << 20);
  dispatch_float(p.dtype, "q", [&](auto tag) {
    if (fused)
      return for_each_tile(p, p.kv_heads, 1, [&](const Item& it, int64_t head, int64_t, Scratch& s) {
        grad_head_simd(tag, p, ops, it, head, s);
      });
    for_each_tile(p, p.q_heads, ceil_div(longest, kTileQ),
                  [&](const Item& it, int64_t head, int64_t tile, Scratch& s) {
                    grad_query_simd(tag, p, ops, it, head, tile, s);
                  });
    for_each_tile(p, p.kv_heads, ceil_div(longest_keys, kTileK),
                  [&](const Item& it, int64_t head, int64_t tile, Scratch& s) {
                    grad_key_simd(tag, p, ops, it, head, tile, s);
                  });
  });
}

}  // namespace lmk::attention
