// The attention forward on tensor cores, for bf16 and fp16 (see attention.h for the math): every
// option of the plain kernel (masks, window, GQA, prefix, KV-cache queries, varlen, additive bias,
// multiplicative factor with its row minimum), FlashAttention-2's schedule.
//
// A block of 4 warps owns 64 query rows of one (item, query head), 16 rows per warp, and walks the
// 64-key tiles that any of its rows sees. Key and value tiles arrive by cp.async into two shared
// stages, so the next tile loads while this one computes. Per tile, each warp computes its 16 x 64
// scores with mma.sync m16n8k16 (fp32 accumulation; q fragments stay in registers, k fragments come
// by ldmatrix), masks and suppresses them in fp32, runs the online softmax over its rows (a row
// belongs to the 4 lanes of an mma row group, combined by two xor shuffles), and multiplies the
// probabilities, rounded to the input type, by the value tile (ldmatrix.trans) into fp32
// accumulators. A multiplicative factor first takes a pass over the counted keys for the row
// minimum. Each score comes from the same mma sequence in every pass, so a factor or bias that
// changes nothing leaves the output bitwise unchanged.
//
// Requirements (checked on the host, else the plain kernel runs): head dimension a multiple of 8
// and at most 128, and every operand 16-byte aligned with row, head and batch strides multiples of
// 8 elements, as cp.async and the 16-byte output stores need.
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/attention.h"
#include "attention/attention_device.cuh"
#include "attention/mma_tiles.cuh"
#include "common/cuda_utils.cuh"

namespace lmk::attention {
namespace {

using namespace mma;

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads) forward_mma_kernel(AttentionProblem p, Operand out, Operand lse_out,
                                                               Operand row_min_out, Operand row_argmin_out,
                                                               int32_t* flag) {
  using L = Tile<kDim>;
  extern __shared__ uint4 shared_raw[];
  uint16_t* q_s = reinterpret_cast<uint16_t*>(shared_raw);
  uint16_t* k_s = q_s + L::kElements;  // two stages each
  uint16_t* v_s = k_s + 2 * L::kElements;
  float* bias_s = reinterpret_cast<float*>(v_s + 2 * L::kElements);  // [2][64]
  float* factor_s = bias_s + 2 * kTileRows;

  const DeviceItem it = item_at(p, blockIdx.z, flag);
  const int64_t head = blockIdx.y, i0 = int64_t(blockIdx.x) * kTileRows;
  if (!it.valid || i0 >= it.queries) return;
  const int64_t kv_head = head / (p.q_heads / p.kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int dim_chunks = int(p.dim / 8);
  const float scale = float(p.options.scale);
  const QueryBlock qb = query_block(p.options, it, i0, lane);

  load_tile<kDim>(q_s, qb.count, dim_chunks, [&](int r) { return row_at<const T>(p.q, it, head, i0 + r); });
  commit_copies();
  wait_copies<0>();
  __syncthreads();
  // The warp's q fragments: read only by this warp, so its rows of q_s are free afterwards for the output.
  uint32_t qf[kDim / 16][4];
  load_rows<kDim>(qf, q_s + warp * 16 * L::kStride, lane);

  float minimum[2] = {INFINITY, INFINITY};
  int64_t argmin[2] = {0, 0};
  if (p.key_factor) {
    const bool all = p.options.factor_min_all;
    const int64_t lo = all ? 0 : qb.first_row.lo, hi = all ? it.keys : qb.last_row.hi;
    for (int64_t j0 = lo / kTileRows * kTileRows; j0 < hi; j0 += kTileRows) {
      const int64_t n = it.keys - j0 < kTileRows ? it.keys - j0 : kTileRows;
      load_tile<kDim>(k_s, n, dim_chunks, key_rows<T>(p, p.prefix_k, p.k, it, kv_head, j0));
      commit_copies();
      wait_copies<0>();
      __syncthreads();
      Product s;
      multiply_rows<T, kDim>(s, qf, k_s, lane);
#pragma unroll
      for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e / 2;
          const int64_t j = j0 + nt * 8 + 2 * t + e % 2;
          const bool counted = all ? j < it.keys : (j >= qb.vis[h].lo && j < qb.vis[h].hi);
          const float x = s[nt][e] * scale;
          if (qb.on[h] && counted && x < minimum[h]) minimum[h] = x, argmin[h] = j;
        }
      __syncthreads();  // k_s is reloaded
    }
    row_argmin(minimum[0], argmin[0]);
    row_argmin(minimum[1], argmin[1]);
  }

  float o[kDim / 8][4];
#pragma unroll
  for (int d = 0; d < kDim / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this lane's share of the row sum
  auto load_tile_keys = [&](int64_t tile, int stage) {
    load_keys_values<kDim, T>(p, it, kv_head, qb.start + tile * kTileRows, k_s + stage * L::kElements,
                              v_s + stage * L::kElements, bias_s + stage * kTileRows, factor_s + stage * kTileRows);
  };

  pipelined(qb.tiles, load_tile_keys, [&](int64_t tile, int stage) {
    const float* bias = bias_s + stage * kTileRows;
    const float* factor = factor_s + stage * kTileRows;
    const int64_t j0 = qb.start + tile * kTileRows;
    const bool unmasked = qb.unmasked(j0);

    Product s;
    multiply_rows<T, kDim>(s, qf, k_s + stage * L::kElements, lane);
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2, jj = nt * 8 + 2 * t + e % 2;
        const int64_t j = j0 + jj;
        float x = -INFINITY;
        if (unmasked || (qb.on[h] && j >= qb.vis[h].lo && j < qb.vis[h].hi)) {
          x = s[nt][e] * scale;
          if (p.key_factor && factor[jj] != 1.f) x = minimum[h] + factor[jj] * (x - minimum[h]);
          if (p.key_bias) x += bias[jj];
        }
        s[nt][e] = x;
        tile_max[h] = x > tile_max[h] ? x : tile_max[h];
      }
    float base[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float mx = row_max(tile_max[h]);
      const float new_max = mx > m[h] ? mx : m[h];
      base[h] = new_max == -INFINITY ? 0.f : new_max;
      const float rescale = exp_approx(m[h] - base[h]);
      m[h] = new_max;
      l[h] *= rescale;
#pragma unroll
      for (int d = 0; d < kDim / 8; ++d) o[d][2 * h] *= rescale, o[d][2 * h + 1] *= rescale;
    }
#pragma unroll
    for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp_approx(s[nt][e] - base[e / 2]);
        l[e / 2] += s[nt][e];
      }
    accumulate<T, kDim>(o, s, v_s + stage * L::kElements, lane);
  });

  // The output through the warp's own rows of q_s, then out in 16-byte stores.
  uint16_t* staged = q_s + warp * 16 * L::kStride;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] = row_sum(l[h]);
    const float inverse = l[h] == 0.f ? 0.f : 1.f / l[h];
#pragma unroll
    for (int d = 0; d < kDim / 8; ++d)
      *reinterpret_cast<uint32_t*>(staged + (g + 8 * h) * L::kStride + d * 8 + 2 * t) =
          pack<T>(o[d][2 * h] * inverse, o[d][2 * h + 1] * inverse);
    if (t == 0 && qb.on[h]) {
      *row_at<float>(lse_out, it, head, qb.row[h]) = l[h] == 0.f ? -INFINITY : (m[h] == -INFINITY ? 0.f : m[h]) + logf(l[h]);
      if (p.key_factor) {
        *row_at<float>(row_min_out, it, head, qb.row[h]) = minimum[h];
        *row_at<int64_t>(row_argmin_out, it, head, qb.row[h]) = argmin[h];
      }
    }
  }
  __syncwarp();
  for (int c = lane; c < 16 * dim_chunks; c += 32) {
    const int r = c / dim_chunks, chunk = c % dim_chunks, local = warp * 16 + r;
    if (local < qb.count)
      *reinterpret_cast<uint4*>(row_at<T>(out, it, head, i0 + local) + chunk * 8) =
          *reinterpret_cast<const uint4*>(staged + r * L::kStride + chunk * 8);
  }
}

}  // namespace

bool attention_forward_mma_cuda(const AttentionProblem& p, const AttentionForwardOutputs& out,
                                const TensorView& error_flag, void* stream) {
  const bool varlen = p.cu_seqlens != nullptr;
  const Operand out_op = operand_of(out.out, varlen);
  if (!tensor_core_problem(p) || !chunk_aligned(out_op)) return false;
  const Operand lse = operand_of(out.lse, varlen);
  const Operand row_min = out.row_min ? operand_of(*out.row_min, varlen) : Operand{};
  const Operand row_argmin = out.row_argmin ? operand_of(*out.row_argmin, varlen) : Operand{};
  dispatch_tile(p, [&](auto tag, auto dim) {
    const dim3 grid(unsigned((p.queries + kTileRows - 1) / kTileRows), unsigned(p.q_heads), unsigned(p.items));
    const size_t shared = sizeof(uint16_t) * 5 * Tile<dim>::kElements + sizeof(float) * 4 * kTileRows;
    launch_tiles(forward_mma_kernel<typename decltype(tag)::type, dim>, grid, shared, stream, p, out_op, lse, row_min,
                 row_argmin, error_flag.as<int32_t>());
  });
  return true;
}

}  // namespace lmk::attention
