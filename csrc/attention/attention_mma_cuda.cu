// The attention forward on tensor cores, for bf16 and fp16 (see attention.h for the math): every
// option of the plain kernel (masks, window, GQA, prefix, KV-cache queries, varlen, additive bias,
// multiplicative factor with its row minimum), FlashAttention-2's schedule.
//
// A block of 4 warps owns 64 or 128 query rows of one (item, query head) and walks the 64-key tiles
// that any of its rows sees. Key and value tiles arrive by cp.async into two shared stages, so the
// next tile loads while this one computes. Per tile, each warp computes the scores of its rows with
// mma.sync m16n8k16 (fp32 accumulation; q fragments stay in registers, k fragments come by
// ldmatrix), masks and suppresses them in fp32, runs the online softmax over its rows (a row
// belongs to the 4 lanes of an mma row group, combined by two xor shuffles), and multiplies the
// probabilities, rounded to the input type, by the value tile (ldmatrix.trans) into fp32
// accumulators. A multiplicative factor first takes a pass over the counted keys for the row
// minimum. Each score comes from the same mma sequence in every pass, so a factor or bias that
// changes nothing leaves the output bitwise unchanged.
//
// 32 rows per warp: with 16, each k and v fragment a warp reads by ldmatrix feeds one mma, and
// shared-memory bandwidth, not the tensor cores, bounds a long causal problem (4 warps x 16 KB of
// fragments per tile per block against about 400 cycles of mma on an H200). With two 16-row m-tiles
// a warp reads each fragment once for both. A 128-row block is two 64-row halves (rows i0.. and
// i0 + 64..; warp w owns rows 16w.. of each), each exactly the block of the 64-row kernel: its own
// masks, key tiles, online softmax and factor minimum. The block walks the union of the halves'
// tiles, and a half does nothing in a tile outside its own, so outputs and lse are bitwise those of
// the 64-row kernel (and a NaN value reaches the same rows). The accumulators, products and q
// fragments of two halves take nearly all of 255 registers, so two blocks fit an SM and only heads
// up to 64 wide fit at all; per-thread and block-wide state waits in shared memory.
//
// Dispatch: 128 rows where the grid still has about two waves of blocks at two per SM (at least 4
// blocks per SM) and the head is at most 64 wide, else 64 rows, so that short problems keep their
// parallelism; LMK_ATTENTION_QUERY_ROWS overrides (see forced_query_rows).
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

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string_view>

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

// A 64-row half of a block's query rows as the key loop needs it: QueryBlock with key indices in
// 32 bits (there are at most kMaxKeys keys), so that it costs less shared memory and fewer integer
// instructions.
struct Half {
  int count;         // real rows, 0..64
  int lo[2], hi[2];  // the keys the lane's two rows see; empty where not real rows
  int start, end;    // its key tiles [start, end); empty where count is 0
  int all_lo, all_hi;  // the keys every row sees

  // Whether the half walks the key tile at j0: only its own tiles, so that a NaN in a value reaches
  // only the rows of a half whose tiles hold it, as in the 64-row kernel.
  __device__ bool walks(int j0) const { return j0 >= start && j0 < end; }
  __device__ bool unmasked(int j0) const { return j0 >= all_lo && j0 + kTileRows <= all_hi; }
  __device__ TileColumns columns(int j0) const {
    TileColumns c;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int first = lo[h] - j0, last = hi[h] - j0;
      c.lo[h] = first < 0 ? 0 : first > kTileRows ? kTileRows : first;
      c.hi[h] = last < 0 ? 0 : last > kTileRows ? kTileRows : last;
    }
    return c;
  }
};

__device__ inline Half half_at(const AttentionOptions& o, const DeviceItem& it, int64_t i0, int lane) {
  const QueryBlock b = query_block(o, it, i0, lane);
  Half h;
  h.count = b.count < 0 ? 0 : int(b.count);
#pragma unroll
  for (int r = 0; r < 2; ++r) h.lo[r] = int(b.vis[r].lo), h.hi[r] = int(b.vis[r].hi);
  h.start = int(b.start);
  h.end = h.count > 0 ? int(b.start + b.tiles * kTileRows) : h.start;
  h.all_lo = int(b.last_row.lo);
  h.all_hi = int(b.first_row.hi);
  return h;
}

// The logits of a warp's 16 rows of one half against the key tile at j0: the unmasked path where
// every row sees the whole tile and nothing multiplies, else the masked one.
__device__ __forceinline__ void logits(Product& s, const Half& half, int j0, bool with_bias, bool with_factor,
                                       float scale, const float* bias, const float* factor,
                                       const float (&minimum)[2], int t) {
  if (half.unmasked(j0) && !with_factor) {
    if (with_bias) scaled_scores<true>(s, scale, bias, t);
    else scaled_scores<false>(s, scale, bias, t);
    return;
  }
  const TileColumns seen = half.columns(j0);
  if (with_factor) {
    if (with_bias) masked_scores<true, true>(s, seen, scale, bias, factor, minimum, t);
    else masked_scores<false, true>(s, seen, scale, bias, factor, minimum, t);
  } else {
    if (with_bias) masked_scores<true, false>(s, seen, scale, bias, factor, minimum, t);
    else masked_scores<false, false>(s, seen, scale, bias, factor, minimum, t);
  }
}

// Blocks per SM the forward's registers are sized for. 64 rows with a 64-wide head on Hopper: four
// (128 registers a thread, where ptxas would otherwise take 168 and allow three; 4 x 51 KB of shared
// memory fit its 228 KB); an A100's 164 KB fit three. 128 rows (64-wide heads only) need about
// twice the accumulators and q fragments: two.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr int kForwardBlocksAtDim64 = 4;
#else
constexpr int kForwardBlocksAtDim64 = 3;
#endif
template <int kDim, int kHalves>
constexpr int kForwardBlocksPerSM = kHalves == 2 ? 2 : kDim == 64 ? kForwardBlocksAtDim64 : 2;

// kHalves 64-row halves of query rows per block (1 or 2); warp w owns rows 16w.. of each half.
template <typename T, int kDim, int kHalves>
__global__ void __launch_bounds__(kThreads, (kForwardBlocksPerSM<kDim, kHalves>))
    forward_mma_kernel(AttentionProblem p, Operand out, Operand lse_out, Operand row_min_out, Operand row_argmin_out,
                       int32_t* flag) {
  using L = Tile<kDim>;
  constexpr int kRows = kHalves * kTileRows;
  extern __shared__ uint4 shared_raw[];
  uint16_t* q_s = reinterpret_cast<uint16_t*>(shared_raw);  // one tile per half
  uint16_t* k_s = q_s + kHalves * L::kElements;              // two stages each
  uint16_t* v_s = k_s + 2 * L::kElements;
  float* bias_s = reinterpret_cast<float*>(v_s + 2 * L::kElements);  // [2][64]
  float* factor_s = bias_s + 2 * kTileRows;

  // Blocks go out in order of blockIdx.x: the last query tiles first, as in a causal problem they
  // see the most keys, and the short blocks then fill the gaps at the end.
  const DeviceItem it = item_at(p, blockIdx.y, flag);
  const int64_t head = blockIdx.x % p.q_heads;
  const int64_t i0 = (gridDim.x / p.q_heads - 1 - blockIdx.x / p.q_heads) * int64_t(kRows);
  if (!it.valid || i0 >= it.queries) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int dim_chunks = int(p.dim / 8);
  const float scale = float(p.options.scale);
  // Each thread's halves wait in shared memory, read where used: held in registers across the key
  // loop, they would push the two halves' products into spills.
  __shared__ Half half_s[kHalves][kThreads];
  auto half = [&](int r) -> const Half& { return half_s[r][threadIdx.x]; };
#pragma unroll
  for (int r = 0; r < kHalves; ++r) {
    half_s[r][threadIdx.x] = half_at(p.options, it, i0 + r * kTileRows, lane);
    load_tile<kDim>(q_s + r * L::kElements, half(r).count, dim_chunks,
                    row_at<const T>(p.q, it, head, i0 + r * kTileRows), p.q.row);
  }
  // Block-wide values that the key loop and the end read, from shared memory: in registers
  // across the loop they would spill (so would the item and head that give the output rows).
  __shared__ KeySource<T> src;
  __shared__ T* out_rows;
  __shared__ float* lse_rows;
  if (threadIdx.x == 0) {
    src = key_source<T>(p, it, head / (p.q_heads / p.kv_heads));
    out_rows = row_at<T>(out, it, head, i0);
    lse_rows = row_at<float>(lse_out, it, head, i0);
  }
  commit_copies();
  wait_copies<0>();
  __syncthreads();
  // The warp's q fragments: read only by this warp, so its rows of q_s are free afterwards for the output.
  uint32_t qf[kHalves][kDim / 16][4];
#pragma unroll
  for (int r = 0; r < kHalves; ++r) load_rows<kDim>(qf[r], q_s + r * L::kElements + warp * 16 * L::kStride, lane);

  // The lane's rows of half r: i0 + 64 r + local[h], real where local[h] < half(r).count.
  const int local[2] = {warp * 16 + g, warp * 16 + g + 8};
  float minimum[kHalves][2];
#pragma unroll
  for (int r = 0; r < kHalves; ++r) minimum[r][0] = minimum[r][1] = INFINITY;
  // The rare path, half by half: the minimum is final before the first tile, so it goes out now.
#pragma unroll
  for (int r = 0; r < kHalves; ++r) {
    if (!p.key_factor || half(r).count == 0) continue;
    int64_t argmin[2] = {0, 0};
    const bool all = p.options.factor_min_all;
    // The tiles of the keys any row of the half counts.
    const int lo = all ? 0 : half(r).start, hi = all ? int(it.keys) : half(r).end;
    for (int j0 = lo; j0 < hi; j0 += kTileRows) {
      const int n = int(it.keys) - j0 < kTileRows ? int(it.keys) - j0 : kTileRows;
      load_head_rows<kDim>(k_s, src.keys, j0, n, dim_chunks);
      commit_copies();
      wait_copies<0>();
      __syncthreads();
      Product s;
      multiply_rows<T, kDim>(s, qf[r], k_s, lane);
#pragma unroll
      for (int nt = 0; nt < kColumnTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e / 2, j = j0 + nt * 8 + 2 * t + e % 2;
          const bool counted = all ? j < it.keys : (j >= half(r).lo[h] && j < half(r).hi[h]);
          const float x = s[nt][e] * scale;
          if (local[h] < half(r).count && counted && x < minimum[r][h]) minimum[r][h] = x, argmin[h] = j;
        }
      __syncthreads();  // k_s is reloaded
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_argmin(minimum[r][h], argmin[h]);
      if (t == 0 && local[h] < half(r).count) {
        const int64_t row = i0 + r * kTileRows + local[h];
        *row_at<float>(row_min_out, it, head, row) = minimum[r][h];
        *row_at<int64_t>(row_argmin_out, it, head, row) = argmin[h];
      }
    }
  }

  float o[kHalves][kDim / 8][4];
  float m[kHalves][2], l[kHalves][2];  // l: this lane's share of the row sum
#pragma unroll
  for (int r = 0; r < kHalves; ++r) {
#pragma unroll
    for (int d = 0; d < kDim / 8; ++d) o[r][d][0] = o[r][d][1] = o[r][d][2] = o[r][d][3] = 0.f;
    m[r][0] = m[r][1] = -INFINITY;
    l[r][0] = l[r][1] = 0.f;
  }

  // The block walks the union of its halves' key tiles (64-aligned, so the same tiles), in order.
  int first = half(0).start, end = half(0).end;
#pragma unroll
  for (int r = 1; r < kHalves; ++r)
    if (half(r).count > 0) {
      first = half(r).start < first ? half(r).start : first;
      end = half(r).end > end ? half(r).end : end;
    }
  auto load_tile_keys = [&](int64_t tile, int stage) {
    load_keys_values<kDim>(src, dim_chunks, first + tile * kTileRows, k_s + stage * L::kElements,
                           v_s + stage * L::kElements, bias_s + stage * kTileRows, factor_s + stage * kTileRows);
  };

  // One key tile for the halves in `used` (bit r: half r); two share every k and v fragment.
  auto tile_step = [&](auto used, int stage, int j0) {
    constexpr int kUsed = decltype(used)::value;
    constexpr int kOnly = kUsed / 2;  // the half, where one
    const uint16_t* keys = k_s + stage * L::kElements;
    const uint16_t* values = v_s + stage * L::kElements;
    const float* bias = bias_s + stage * kTileRows;
    const float* factor = factor_s + stage * kTileRows;
    Product s[kHalves];
    if constexpr (kUsed == 3) multiply_row_groups<T, kDim, kHalves>(s, qf, keys, lane);
    else multiply_rows<T, kDim>(s[kOnly], qf[kOnly], keys, lane);
#pragma unroll
    for (int r = 0; r < kHalves; ++r) {
      if (!(kUsed >> r & 1)) continue;
      logits(s[r], half(r), j0, p.key_bias, p.key_factor, scale, bias, factor, minimum[r], t);
      softmax_update(s[r], m[r], l[r], o[r]);
    }
    if constexpr (kUsed == 3) accumulate_row_groups<T, kDim, kHalves>(o, s, values, lane);
    else accumulate<T, kDim>(o[kOnly], s[kOnly], values, lane);
  };

  pipelined((end - first) / kTileRows, load_tile_keys, [&](int64_t tile, int stage) {
    const int j0 = first + int(tile) * kTileRows;
    if constexpr (kHalves == 1) {
      tile_step(std::integral_constant<int, 1>{}, stage, j0);
    } else {
      const bool sees0 = half(0).walks(j0), sees1 = half(1).walks(j0);
      if (sees0 && sees1) tile_step(std::integral_constant<int, 3>{}, stage, j0);
      else if (sees0) tile_step(std::integral_constant<int, 1>{}, stage, j0);
      else if (sees1) tile_step(std::integral_constant<int, 2>{}, stage, j0);
    }
  });

  // The output through the warp's own rows of q_s, then out in 16-byte stores.
#pragma unroll
  for (int r = 0; r < kHalves; ++r) {
    uint16_t* staged = q_s + r * L::kElements + warp * 16 * L::kStride;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l[r][h] = row_sum(l[r][h]);
      const float inverse = l[r][h] == 0.f ? 0.f : 1.f / l[r][h];
#pragma unroll
      for (int d = 0; d < kDim / 8; ++d)
        *reinterpret_cast<uint32_t*>(staged + (g + 8 * h) * L::kStride + d * 8 + 2 * t) =
            pack<T>(o[r][d][2 * h] * inverse, o[r][d][2 * h + 1] * inverse);
      if (t == 0 && local[h] < half(r).count)
        lse_rows[(r * kTileRows + local[h]) * lse_out.row] =
            l[r][h] == 0.f ? -INFINITY : (m[r][h] == -INFINITY ? 0.f : m[r][h]) + logf(l[r][h]);
    }
    __syncwarp();
    for (int c = lane; c < 16 * dim_chunks; c += 32) {
      const int row = c / dim_chunks, chunk = c % dim_chunks;
      if (warp * 16 + row < half(r).count)
        *reinterpret_cast<uint4*>(out_rows + (r * kTileRows + warp * 16 + row) * out.row + chunk * 8) =
            *reinterpret_cast<const uint4*>(staged + row * L::kStride + chunk * 8);
    }
  }
}

// Query rows per block: LMK_ATTENTION_QUERY_ROWS = "64" or "128" forces one kernel (128 applies to
// heads of dimension up to 64; wider ones always take 64), unset or empty leaves the choice to the
// grid size (0 here). Read on every call, so that tests and benchmarks can run both in one process.
int forced_query_rows() {
  const char* value = std::getenv("LMK_ATTENTION_QUERY_ROWS");
  const std::string_view setting = value ? value : "";
  if (setting.empty()) return 0;
  if (setting == "64") return 64;
  if (setting == "128") return 128;
  fail(ErrorKind::Value, "LMK_ATTENTION_QUERY_ROWS: expected 64 or 128, got '", setting, "'");
}

// The current device's SM count, asked once per device.
int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> counts[kMaxDevices];
  int device = 0, count = 0;
  LMK_CUDA_CHECK(cudaGetDevice(&device));
  if (device < kMaxDevices && (count = counts[device].load(std::memory_order_relaxed)) > 0) return count;
  LMK_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device < kMaxDevices) counts[device].store(count, std::memory_order_relaxed);
  return count;
}

// The kernel's static shared memory (the halves' state beside the dynamic tiles), asked once: a
// driver query per call would add host time to every short one.
template <auto kKernel>
size_t static_shared_bytes() {
  static const size_t bytes = [] {
    cudaFuncAttributes attributes;
    LMK_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kKernel));
    return attributes.sharedSizeBytes;
  }();
  return bytes;
}

}  // namespace

bool attention_forward_mma_cuda(const AttentionProblem& p, const AttentionForwardOutputs& out,
                                const TensorView& error_flag, void* stream) {
  const int forced_rows = forced_query_rows();
  const bool varlen = p.cu_seqlens != nullptr;
  const Operand out_op = operand_of(out.out, varlen);
  if (!tensor_core_problem(p) || !chunk_aligned(out_op)) return false;
  const Operand lse = operand_of(out.lse, varlen);
  const Operand row_min = out.row_min ? operand_of(*out.row_min, varlen) : Operand{};
  const Operand row_argmin = out.row_argmin ? operand_of(*out.row_argmin, varlen) : Operand{};
  bool fits = true;
  dispatch_tile(p, [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int kDim = decltype(dim)::value;
    auto launch = [&](auto halves) {
      constexpr int kHalves = decltype(halves)::value;
      constexpr auto kernel = forward_mma_kernel<T, kDim, kHalves>;
      const int64_t rows = int64_t(kHalves) * kTileRows;
      const dim3 grid(unsigned((p.queries + rows - 1) / rows * p.q_heads), unsigned(p.items));
      const size_t shared = sizeof(uint16_t) * (kHalves + 4) * Tile<kDim>::kElements + sizeof(float) * 4 * kTileRows;
      fits = shared + static_shared_bytes<kernel>() <= max_block_shared_memory();
      if (!fits) return;
      launch_tiles(kernel, grid, shared, stream, p, out_op, lse, row_min, row_argmin, error_flag.as<int32_t>());
    };
    if constexpr (kDim == 64) {
      const int64_t wide_blocks = (p.queries + 2 * kTileRows - 1) / (2 * kTileRows) * p.q_heads * p.items;
      if (forced_rows ? forced_rows == 128 : wide_blocks >= 4 * int64_t(sm_count())) {
        launch(std::integral_constant<int, 2>{});
        return;
      }
    }
    launch(std::integral_constant<int, 1>{});
  });
  return fits;
}

}  // namespace lmk::attention
