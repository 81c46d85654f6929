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
// What keeps the instruction count per tile down (the first version, at 45-64 TFLOP/s on an H100,
// spent most of its issue slots on integer work): tiles that every row sees whole (all but the
// diagonal and window-edge tiles) take a path without per-element masks, the others compare 32-bit
// offsets into the tile; tile loads are branch-free (cp.async zero-fills the rows past the end) from
// one base pointer and stride. Blocks go out longest first.
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

// The logits of a warp's 16 x 64 scores where every row sees every key: scale * s (+ bias), rounded
// as masked_scores rounds them, so that a tile's scores do not depend on which path took it.
template <bool kBias>
__device__ __forceinline__ void scaled_scores(Product& s, float scale, const float* bias, int t) {
#pragma unroll
  for (int nt = 0; nt < kColumnTiles; ++nt) {
    const float2 b = kBias ? *reinterpret_cast<const float2*>(bias + nt * 8 + 2 * t) : make_float2(0.f, 0.f);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float x = __fmul_rn(s[nt][e], scale);
      s[nt][e] = kBias ? __fadd_rn(x, e % 2 ? b.y : b.x) : x;
    }
  }
}

// The same with the mask (-inf where the row does not see the key) and, with kFactor, the
// multiplicative factor about the row minimum.
template <bool kBias, bool kFactor>
__device__ __forceinline__ void masked_scores(Product& s, const TileColumns& seen, float scale, const float* bias,
                                              const float* factor, const float (&minimum)[2], int t) {
#pragma unroll
  for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = e / 2, jj = nt * 8 + 2 * t + e % 2;
      float x = __fmul_rn(s[nt][e], scale);
      if (kFactor) {
        const float f = factor[jj], moved = minimum[h] + f * (x - minimum[h]);
        x = f != 1.f ? moved : x;
      }
      if (kBias) x = __fadd_rn(x, bias[jj]);
      s[nt][e] = jj >= seen.lo[h] && jj < seen.hi[h] ? x : -INFINITY;
    }
}

// One tile's step of the online softmax: the running maxima m and sums l of the lane's two rows
// move to the tile's, o is rescaled to match, and s becomes the tile's unnormalised probabilities
// e^(s - m). (Not 2^(s log2 e - m log2 e) in one FFMA: m log2 e overflows for a row whose visible
// keys all carry a bias of float32's lowest value, a common padding mask, and the row turns NaN.)
template <int kDimOver8>
__device__ __forceinline__ void softmax_update(Product& s, float (&m)[2], float (&l)[2], float (&o)[kDimOver8][4]) {
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) tile_max[e / 2] = fmaxf(tile_max[e / 2], s[nt][e]);
  float base[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float new_max = fmaxf(m[h], row_max(tile_max[h]));
    base[h] = new_max == -INFINITY ? 0.f : new_max;  // a row that has seen no key: all 0, no NaN
    const float rescale = exp_approx(m[h] - base[h]);
    m[h] = new_max;
    l[h] *= rescale;
#pragma unroll
    for (int d = 0; d < kDimOver8; ++d) o[d][2 * h] *= rescale, o[d][2 * h + 1] *= rescale;
  }
#pragma unroll
  for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = exp_approx(s[nt][e] - base[e / 2]);
      l[e / 2] += s[nt][e];
    }
}

// Blocks per SM the forward's registers are sized for. With a 64-wide head on Hopper, four (128
// registers a thread, where ptxas would otherwise take 168 and allow three; 4 x 47 KB of shared
// memory fit its 228 KB); an A100's 164 KB fit three.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr int kForwardBlocksAtDim64 = 4;
#else
constexpr int kForwardBlocksAtDim64 = 3;
#endif
template <int kDim>
constexpr int kForwardBlocksPerSM = kDim == 64 ? kForwardBlocksAtDim64 : 2;

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads, kForwardBlocksPerSM<kDim>)
    forward_mma_kernel(AttentionProblem p, Operand out, Operand lse_out, Operand row_min_out, Operand row_argmin_out,
                       int32_t* flag) {
  using L = Tile<kDim>;
  extern __shared__ uint4 shared_raw[];
  uint16_t* q_s = reinterpret_cast<uint16_t*>(shared_raw);
  uint16_t* k_s = q_s + L::kElements;  // two stages each
  uint16_t* v_s = k_s + 2 * L::kElements;
  float* bias_s = reinterpret_cast<float*>(v_s + 2 * L::kElements);  // [2][64]
  float* factor_s = bias_s + 2 * kTileRows;

  // Blocks go out in order of blockIdx.x: the last query tiles first, as in a causal problem they
  // see the most keys, and the short blocks then fill the gaps at the end.
  const DeviceItem it = item_at(p, blockIdx.y, flag);
  const int64_t head = blockIdx.x % p.q_heads;
  const int64_t i0 = (gridDim.x / p.q_heads - 1 - blockIdx.x / p.q_heads) * int64_t(kTileRows);
  if (!it.valid || i0 >= it.queries) return;
  const KeySource<T> src = key_source<T>(p, it, head / (p.q_heads / p.kv_heads));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int dim_chunks = int(p.dim / 8);
  const float scale = float(p.options.scale);
  const QueryBlock qb = query_block(p.options, it, i0, lane);

  load_tile<kDim>(q_s, int(qb.count), dim_chunks, row_at<const T>(p.q, it, head, i0), p.q.row);
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
      const int n = int(it.keys - j0 < kTileRows ? it.keys - j0 : kTileRows);
      load_head_rows<kDim>(k_s, src.keys, j0, n, dim_chunks);
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
    load_keys_values<kDim>(src, dim_chunks, qb.start + tile * kTileRows, k_s + stage * L::kElements,
                           v_s + stage * L::kElements, bias_s + stage * kTileRows, factor_s + stage * kTileRows);
  };

  pipelined(qb.tiles, load_tile_keys, [&](int64_t tile, int stage) {
    const float* bias = bias_s + stage * kTileRows;
    const int64_t j0 = qb.start + tile * kTileRows;
    Product s;
    multiply_rows<T, kDim>(s, qf, k_s + stage * L::kElements, lane);
    // Most tiles are seen whole by every row: there the scores need no per-element mask.
    if (qb.unmasked(j0) && !p.key_factor) {
      if (p.key_bias) scaled_scores<true>(s, scale, bias, t);
      else scaled_scores<false>(s, scale, bias, t);
    } else {
      const TileColumns seen = qb.tile_columns(j0);
      const float* factor = factor_s + stage * kTileRows;
      if (p.key_factor) {
        if (p.key_bias) masked_scores<true, true>(s, seen, scale, bias, factor, minimum, t);
        else masked_scores<false, true>(s, seen, scale, bias, factor, minimum, t);
      } else {
        if (p.key_bias) masked_scores<true, false>(s, seen, scale, bias, factor, minimum, t);
        else masked_scores<false, false>(s, seen, scale, bias, factor, minimum, t);
      }
    }
    softmax_update(s, m, l, o);
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
  bool fits = true;
  dispatch_tile(p, [&](auto tag, auto dim) {
    const dim3 grid(unsigned((p.queries + kTileRows - 1) / kTileRows * p.q_heads), unsigned(p.items));
    const size_t shared = sizeof(uint16_t) * 5 * Tile<dim>::kElements + sizeof(float) * 4 * kTileRows;
    fits = shared <= max_block_shared_memory();
    if (!fits) return;
    launch_tiles(forward_mma_kernel<typename decltype(tag)::type, dim>, grid, shared, stream, p, out_op, lse, row_min,
                 row_argmin, error_flag.as<int32_t>());
  });
  return fits;
}

}  // namespace lmk::attention
