// The attention backward on tensor cores, for bf16 and fp16 without a multiplicative factor (see
// attention.h for the math; a factor, fp32 or an unaligned operand takes the plain kernels). Two
// kernels, so that every gradient element has one writer and no atomics are needed:
//
// grad_query_mma_kernel: a block per 64 query rows of one (item, query head), as in the forward,
// walks the key tiles twice. First for delta_i = sum_j P_ij dP_ij, with P recomputed from lse and
// dP = grad_out v^T, both by mma (written for the second kernel), then for
// dq_i = scale sum_j P_ij (dP_ij - delta_i) k_j.
//
// grad_key_mma_kernel: a block per 64 keys of one (item, key/value head), a warp per 16 keys, walks
// every query head of the group and each query tile that sees its keys. It computes the transposed
// products S^T = k q^T and dP^T = v grad_out^T, so that P^T and dS^T come out as the a operands of
// dv += P^T grad_out and dk += dS^T q; the bias gradient sums the rows of dS^T.
//
// dq, dk and dv go out as float32 or, rounded once from their fp32 accumulators, in q's dtype.
//
// A row whose visible keys all have bias -inf has lse = -inf and no gradient: its lse is read as
// +inf, so that every P_ij of the row is 0. Rows past the end of a tile are read the same way.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "attention/attention.h"
#include "attention/attention_device.cuh"
#include "attention/mma_tiles.cuh"
#include "common/cuda_utils.cuh"

namespace lmk::attention {
namespace {

using namespace mma;

__device__ __forceinline__ float lse_of_row(const Operand& lse, const DeviceItem& it, int64_t head, int64_t i) {
  const float value = *row_at<const float>(lse, it, head, i);
  return value == -INFINITY ? INFINITY : value;
}

// fp32 pairs (columns 8d + 2t and + 1 of rows g and g + 8 of a warp's fragments) into row `row` of a
// gradient: row h of the lane's two, times `scale`, up to dim columns; as float2 into a float32
// gradient, or rounded once into a pair of T (`narrow`).
template <typename T, int kDim>
__device__ __forceinline__ void store_row(const Operand& o, bool narrow, const DeviceItem& it, int64_t head,
                                          int64_t row, const float (&acc)[kDim / 8][4], int h, int t, int64_t dim,
                                          float scale) {
  float* wide = row_at<float>(o, it, head, row);
  T* narrowed = row_at<T>(o, it, head, row);
#pragma unroll
  for (int d = 0; d < kDim / 8; ++d) {
    const int64_t column = d * 8 + 2 * t;
    if (column >= dim) continue;
    const float x = scale * acc[d][2 * h], y = scale * acc[d][2 * h + 1];
    if (narrow) *reinterpret_cast<uint32_t*>(narrowed + column) = pack<T>(x, y);
    else *reinterpret_cast<float2*>(wide + column) = make_float2(x, y);
  }
}

// The forward's probabilities of a warp's 16 x 64 tile, P = e^(scale s + bias - lse), from its
// scores s and its rows' log-sum-exp; with kMasked, 0 at the keys a row does not see.
template <bool kMasked>
__device__ __forceinline__ void recomputed_probabilities(Product& s, float scale, const float* bias,
                                                         const float (&lse)[2], const TileColumns& seen, int t) {
#pragma unroll
  for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e / 2, jj = nt * 8 + 2 * t + e % 2;
      const float prob = exp_approx(s[nt][e] * scale + bias[jj] - lse[h]);
      s[nt][e] = !kMasked || (jj >= seen.lo[h] && jj < seen.hi[h]) ? prob : 0.f;
    }
}

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads) grad_query_mma_kernel(AttentionProblem p, GradientOperands g,
                                                                  int32_t* flag) {
  using L = Tile<kDim>;
  extern __shared__ uint4 shared_raw[];
  uint16_t* q_s = reinterpret_cast<uint16_t*>(shared_raw);
  uint16_t* do_s = q_s + L::kElements;
  uint16_t* k_s = do_s + L::kElements;  // two stages each
  uint16_t* v_s = k_s + 2 * L::kElements;
  float* bias_s = reinterpret_cast<float*>(v_s + 2 * L::kElements);  // [2][64]

  const DeviceItem it = item_at(p, blockIdx.z, flag);
  const int64_t head = blockIdx.y, i0 = int64_t(blockIdx.x) * kTileRows;
  if (!it.valid || i0 >= it.queries) return;
  const KeySource<T> src = key_source<T>(p, it, head / (p.q_heads / p.kv_heads));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
  const int dim_chunks = int(p.dim / 8);
  const float scale = float(p.options.scale);
  const QueryBlock qb = query_block(p.options, it, i0, lane);
  float lse[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) lse[h] = qb.on[h] ? lse_of_row(g.lse, it, head, qb.row[h]) : INFINITY;

  load_tile<kDim>(q_s, int(qb.count), dim_chunks, row_at<const T>(p.q, it, head, i0), p.q.row);
  load_tile<kDim>(do_s, int(qb.count), dim_chunks, row_at<const T>(g.grad_out, it, head, i0), g.grad_out.row);
  commit_copies();
  const uint16_t* q_rows = q_s + warp * 16 * L::kStride;
  const uint16_t* do_rows = do_s + warp * 16 * L::kStride;

  auto load_tile_keys = [&](int64_t tile, int stage) {
    load_keys_values<kDim>(src, dim_chunks, qb.start + tile * kTileRows, k_s + stage * L::kElements,
                           v_s + stage * L::kElements, bias_s + stage * kTileRows, nullptr);
  };
  // P (in s) and dP of a tile; P = 0 at keys the row does not see.
  auto probabilities = [&](Product& s, Product& dp, int64_t tile, int stage) {
    const int64_t j0 = qb.start + tile * kTileRows;
    const float* bias = bias_s + stage * kTileRows;
    multiply_shared<T, kDim>(s, q_rows, k_s + stage * L::kElements, lane);
    multiply_shared<T, kDim>(dp, do_rows, v_s + stage * L::kElements, lane);
    if (qb.unmasked(j0)) recomputed_probabilities<false>(s, scale, bias, lse, TileColumns{}, t);
    else recomputed_probabilities<true>(s, scale, bias, lse, qb.tile_columns(j0), t);
  };

  float delta[2] = {0.f, 0.f};
  pipelined(qb.tiles, load_tile_keys, [&](int64_t tile, int stage) {
    Product s, dp;
    probabilities(s, dp, tile, stage);
#pragma unroll
    for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) delta[e / 2] += s[nt][e] * dp[nt][e];
  });
  wait_copies<0>();  // the q and grad_out tiles, where no key tile was loaded
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    delta[h] = row_sum(delta[h]);
    if (t == 0 && qb.on[h]) *row_at<float>(g.delta, it, head, qb.row[h]) = delta[h];
  }

  float dq[kDim / 8][4];
#pragma unroll
  for (int d = 0; d < kDim / 8; ++d) dq[d][0] = dq[d][1] = dq[d][2] = dq[d][3] = 0.f;
  pipelined(qb.tiles, load_tile_keys, [&](int64_t tile, int stage) {
    Product s, dp;
    probabilities(s, dp, tile, stage);
#pragma unroll
    for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] *= dp[nt][e] - delta[e / 2];
    accumulate<T, kDim>(dq, s, k_s + stage * L::kElements, lane);
  });
#pragma unroll
  for (int h = 0; h < 2; ++h)
    if (qb.on[h]) store_row<T, kDim>(g.grad_q, g.narrow_q, it, head, qb.row[h], dq, h, t, p.dim, scale);
}

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads) grad_key_mma_kernel(AttentionProblem p, GradientOperands g,
                                                                int32_t* flag) {
  using L = Tile<kDim>;
  extern __shared__ uint4 shared_raw[];
  uint16_t* k_s = reinterpret_cast<uint16_t*>(shared_raw);
  uint16_t* v_s = k_s + L::kElements;
  uint16_t* q_s = v_s + L::kElements;  // two stages each
  uint16_t* do_s = q_s + 2 * L::kElements;
  float* lse_s = reinterpret_cast<float*>(do_s + 2 * L::kElements);  // [2][64]
  float* delta_s = lse_s + 2 * kTileRows;                             // [2][64]

  const DeviceItem it = item_at(p, blockIdx.z, flag);
  const int64_t kv_head = blockIdx.y, j0 = int64_t(blockIdx.x) * kTileRows;
  if (!it.valid || j0 >= it.keys) return;
  const int64_t n = it.keys - j0 < kTileRows ? it.keys - j0 : kTileRows, group = p.q_heads / p.kv_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
  const int dim_chunks = int(p.dim / 8);
  const float scale = float(p.options.scale);

  // This lane's two keys (rows of the transposed products).
  int64_t key[2];
  bool real[2];
  float bias[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int local = warp * 16 + lane / 4 + 8 * h;
    key[h] = j0 + local;
    real[h] = local < n;
    bias[h] = p.key_bias && real[h] ? p.key_bias[it.index * p.bias_stride + key[h]] : 0.f;
  }
  load_head_rows<kDim>(k_s, head_rows<T>(p, p.prefix_k, p.k, it, kv_head), j0, int(n), dim_chunks);
  load_head_rows<kDim>(v_s, head_rows<T>(p, p.prefix_v, p.v, it, kv_head), j0, int(n), dim_chunks);
  commit_copies();
  const uint16_t* k_rows = k_s + warp * 16 * L::kStride;
  const uint16_t* v_rows = v_s + warp * 16 * L::kStride;

  // The query rows that see some key of the tile, in 64-row tiles, for each head of the group.
  const int64_t offset = it.keys - it.queries;
  int64_t lo = 0, hi = it.queries;
  if (p.options.causal && j0 - offset > lo) lo = j0 - offset;
  if (p.options.window > 0 && j0 + n - 1 + p.options.window - offset < hi) hi = j0 + n - 1 + p.options.window - offset;
  const int64_t start = lo / kTileRows * kTileRows;
  const int64_t per_head = hi > start ? (hi - start + kTileRows - 1) / kTileRows : 0;

  auto step_rows = [&](int64_t step, int64_t& head, int64_t& i0, int64_t& count) {
    head = kv_head * group + step / per_head;
    i0 = start + step % per_head * kTileRows;
    count = it.queries - i0 < kTileRows ? it.queries - i0 : kTileRows;
  };
  auto load_queries = [&](int64_t step, int stage) {
    int64_t head, i0, count;
    step_rows(step, head, i0, count);
    load_tile<kDim>(q_s + stage * L::kElements, int(count), dim_chunks, row_at<const T>(p.q, it, head, i0), p.q.row);
    load_tile<kDim>(do_s + stage * L::kElements, int(count), dim_chunks, row_at<const T>(g.grad_out, it, head, i0),
                    g.grad_out.row);
    if (threadIdx.x < kTileRows) {
      const int r = threadIdx.x;
      lse_s[stage * kTileRows + r] = r < count ? lse_of_row(g.lse, it, head, i0 + r) : INFINITY;
      delta_s[stage * kTileRows + r] = r < count ? *row_at<const float>(g.delta, it, head, i0 + r) : 0.f;
    }
    commit_copies();
  };

  float dk[kDim / 8][4], dv[kDim / 8][4], bias_grad[2] = {0.f, 0.f};
#pragma unroll
  for (int d = 0; d < kDim / 8; ++d) dk[d][0] = dk[d][1] = dk[d][2] = dk[d][3] = dv[d][0] = dv[d][1] = dv[d][2] =
      dv[d][3] = 0.f;
  pipelined(group * per_head, load_queries, [&](int64_t step, int stage) {
    int64_t head, i0, count;
    step_rows(step, head, i0, count);
    const Interval first_row = visible_keys(p.options, it, i0), last_row = visible_keys(p.options, it, i0 + count - 1);
    const bool unmasked = last_row.lo <= j0 && j0 + kTileRows <= first_row.hi;
    const float* lse = lse_s + stage * kTileRows;
    const float* delta = delta_s + stage * kTileRows;
    Product s, dp;  // transposed: rows are this warp's keys, columns the tile's queries
    multiply_shared<T, kDim>(s, k_rows, q_s + stage * L::kElements, lane);
    multiply_shared<T, kDim>(dp, v_rows, do_s + stage * L::kElements, lane);
    // P^T and dS^T; on a tile that not every query sees whole, P = 0 where a query does not see the key.
    auto gradients = [&](auto masked) {
#pragma unroll
      for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int ii = nt * 8 + 2 * t + c;
          const Interval vis = !masked || ii >= count ? Interval{0, 0} : visible_keys(p.options, it, i0 + ii);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int e = 2 * h + c;
            const float prob = exp_approx(s[nt][e] * scale + bias[h] - lse[ii]);
            s[nt][e] = !masked || (key[h] >= vis.lo && key[h] < vis.hi) ? prob : 0.f;
            dp[nt][e] = s[nt][e] * (dp[nt][e] - delta[ii]);
            bias_grad[h] += dp[nt][e];
          }
        }
    };
    if (unmasked) gradients(std::false_type{});
    else gradients(std::true_type{});
    accumulate<T, kDim>(dv, s, do_s + stage * L::kElements, lane);
    accumulate<T, kDim>(dk, dp, q_s + stage * L::kElements, lane);
  });
  wait_copies<0>();  // the key and value tiles, where no query tile was loaded
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    bias_grad[h] = row_sum(bias_grad[h]);
    if (!real[h]) continue;
    store_row<T, kDim>(g.grad_k, g.narrow_kv, it, kv_head, key[h], dk, h, t, p.dim, scale);
    store_row<T, kDim>(g.grad_v, g.narrow_kv, it, kv_head, key[h], dv, h, t, p.dim, 1.f);
    if (p.key_bias && t == 0) *row_at<float>(g.grad_bias, it, kv_head, key[h]) = bias_grad[h];
  }
}

}  // namespace

bool attention_backward_mma_cuda(const AttentionProblem& p, const AttentionGradients& grads,
                                 const TensorView& error_flag, void* stream) {
  if (p.key_factor || !tensor_core_problem(p)) return false;
  const bool varlen = p.cu_seqlens != nullptr;
  const GradientOperands g = gradient_operands(grads, varlen);
  if (!chunk_aligned(g.grad_out) || !pair_aligned(g.grad_q) || !pair_aligned(g.grad_k) || !pair_aligned(g.grad_v))
    return false;
  const int64_t keys = varlen ? p.queries : p.prefix + p.keys;
  bool fits = true;  // the 128-wide tiles take about 103 KiB: more than GPUs of compute capability 8.6 / 8.9 have
  dispatch_tile(p, [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    const size_t tiles = sizeof(uint16_t) * 6 * Tile<dim>::kElements;
    const size_t query_shared = tiles + sizeof(float) * 2 * kTileRows, key_shared = tiles + sizeof(float) * 4 * kTileRows;
    fits = std::max(query_shared, key_shared) <= max_block_shared_memory();
    if (!fits) return;
    int32_t* flag = error_flag.as<int32_t>();
    launch_tiles(grad_query_mma_kernel<T, dim>,
                 dim3(unsigned((p.queries + kTileRows - 1) / kTileRows), unsigned(p.q_heads), unsigned(p.items)),
                 query_shared, stream, p, g, flag);
    launch_tiles(grad_key_mma_kernel<T, dim>,
                 dim3(unsigned((keys + kTileRows - 1) / kTileRows), unsigned(p.kv_heads), unsigned(p.items)),
                 key_shared, stream, p, g, flag);
  });
  return fits;
}

}  // namespace lmk::attention
