// Tensor-core building blocks of the bf16 / fp16 attention kernels (attention_mma_cuda.cu,
// attention_mma_backward_cuda.cu), for sm_80 and later: 64-row tiles of a head in shared memory
// filled by cp.async, and a warp's 16 x 64 products by mma.sync m16n8k16 with fp32 accumulation.
//
// Fragment layout (PTX ISA, mma.m16n8k16): with g = lane / 4 and t = lane % 4, a warp's 16 x 64
// fp32 product is s[n][e], n the 8-column block: s[n][0..1] at row g, columns 8n + 2t + {0, 1}, and
// s[n][2..3] at row g + 8, the same columns. The pair s[2c], s[2c + 1] is exactly the a operand of
// columns 16c.. of the next product, so probabilities go from one mma to the next in registers.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "attention/attention.h"
#include "attention/attention_device.cuh"
#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/numeric.h"

namespace lmk::attention::mma {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTileRows = 16 * kWarps;      // rows of every shared tile; a warp owns 16 of a block's
constexpr int kColumnTiles = kTileRows / 8;  // 8-column blocks of a warp's 16 x 64 product
constexpr int kPad = 8;  // extra elements per shared row: the 8 rows an ldmatrix reads hit distinct banks
constexpr float kLog2e = 1.4426950408889634f;

using Product = float[kColumnTiles][4];

// The shared layout of a 64-row tile, head dimension up to kDim (64 or 128).
template <int kDim>
struct Tile {
  static constexpr int kStride = kDim + kPad;  // elements per row
  static constexpr int kChunks = kDim / 8;     // 16-byte chunks per row
  static constexpr int kElements = kTileRows * kStride;
};

__device__ __forceinline__ uint32_t shared_address(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void copy_async_16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(dst)), "l"(src));
}

// The same, or 16 zero bytes (nothing read) where not `live`.
__device__ __forceinline__ void copy_async_16_or_zero(void* dst, const void* src, bool live) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(live ? 16 : 0));
}

// One float, or +0 (nothing read) where not `live`.
__device__ __forceinline__ void copy_async_4_or_zero(float* dst, const float* src, bool live) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(live ? 4 : 0));
}

__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Whether cp.async and 16-byte stores can move the operand's rows: 16-byte aligned, strides in whole chunks.
inline bool chunk_aligned(const Operand& o) {
  return reinterpret_cast<uintptr_t>(o.data) % 16 == 0 && o.batch % 8 == 0 && o.head % 8 == 0 && o.row % 8 == 0;
}

// Whether results can go out in column pairs: float2 stores of fp32, 32-bit stores of two 16-bit values.
inline bool pair_aligned(const Operand& o) {
  return reinterpret_cast<uintptr_t>(o.data) % 8 == 0 && o.batch % 2 == 0 && o.head % 2 == 0 && o.row % 2 == 0;
}

// Whether the tensor-core kernels take the problem: bf16 or fp16, head dimension a multiple of 8 up
// to 128, and the inputs chunk-aligned.
inline bool tensor_core_problem(const AttentionProblem& p) {
  return (p.dtype == DType::BFloat16 || p.dtype == DType::Float16) && p.dim % 8 == 0 && p.dim <= 128 &&
         chunk_aligned(p.q) && chunk_aligned(p.k) && chunk_aligned(p.v) &&
         (p.prefix == 0 || (chunk_aligned(p.prefix_k) && chunk_aligned(p.prefix_v)));
}

// f(TypeTag<T>{}, std::integral_constant<int, kDim>{}) for a tensor-core problem: kDim = 64 or 128.
template <typename F>
void dispatch_tile(const AttentionProblem& p, F&& f) {
  auto with_type = [&](auto tag) {
    if (p.dim <= 64) f(tag, std::integral_constant<int, 64>{});
    else f(tag, std::integral_constant<int, 128>{});
  };
  if (p.dtype == DType::BFloat16) with_type(TypeTag<bfloat16>{});
  else with_type(TypeTag<float16>{});
}

template <typename Kernel, typename... Args>
void launch_tiles(Kernel kernel, dim3 grid, size_t shared_bytes, void* stream, Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  LMK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  kernel<<<grid, kThreads, shared_bytes, static_cast<cudaStream_t>(stream)>>>(args...);
  LMK_CUDA_CHECK(cudaGetLastError());
}

// The columns [lo[h], hi[h]) of a key tile that the lane's row h sees, as offsets into the tile (32-bit,
// so that per-element masks cost two integer compares).
struct TileColumns {
  int lo[2], hi[2];
};

// A block's query rows [i0, i0 + count), the keys they see, and this lane's two of them (h = 0:
// fragment row g of its warp's 16, h = 1: row g + 8); the forward's and the dq kernel's view.
struct QueryBlock {
  int64_t i0, count;
  int64_t row[2];
  bool on[2];       // a real row
  Interval vis[2];  // the keys it sees; empty where not on
  // Keys any row sees are [first_row.lo, last_row.hi), walked in `tiles` key tiles from `start`; keys
  // every row sees are [last_row.lo, first_row.hi).
  Interval first_row, last_row;
  int64_t start, tiles;

  // Whether every row sees every key of the tile at j0, so it needs no mask (rows past count go unread).
  __device__ bool unmasked(int64_t j0) const { return j0 >= last_row.lo && j0 + kTileRows <= first_row.hi; }

  __device__ TileColumns tile_columns(int64_t j0) const {
    TileColumns c;
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // rows that are not on see nothing: vis is empty
      const int64_t lo = vis[h].lo - j0, hi = vis[h].hi - j0;
      c.lo[h] = int(lo < 0 ? 0 : lo > kTileRows ? kTileRows : lo);
      c.hi[h] = int(hi < 0 ? 0 : hi > kTileRows ? kTileRows : hi);
    }
    return c;
  }
};

__device__ inline QueryBlock query_block(const AttentionOptions& o, const DeviceItem& it, int64_t i0, int lane) {
  QueryBlock b;
  b.i0 = i0;
  b.count = it.queries - i0 < kTileRows ? it.queries - i0 : kTileRows;
  for (int h = 0; h < 2; ++h) {
    const int local = int(threadIdx.x / 32) * 16 + lane / 4 + 8 * h;
    b.row[h] = i0 + local;
    b.on[h] = local < b.count;
    b.vis[h] = b.on[h] ? visible_keys(o, it, b.row[h]) : Interval{0, 0};
  }
  b.first_row = visible_keys(o, it, i0);
  b.last_row = visible_keys(o, it, i0 + b.count - 1);
  b.start = b.first_row.lo / kTileRows * kTileRows;
  b.tiles = b.last_row.hi > b.start ? (b.last_row.hi - b.start + kTileRows - 1) / kTileRows : 0;
  return b;
}

// Four 8x8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void load_matrices(uint32_t (&r)[4], const uint16_t* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

__device__ __forceinline__ void load_matrices_transposed(uint32_t (&r)[4], const uint16_t* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}

// c += a b for a 16x16 row-major a, a 16x8 column-major b.
template <typename T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats rounded to nearest even into one register of T, `low` in the low half.
template <typename T>
__device__ __forceinline__ uint32_t pack(float low, float high) {
  uint32_t r;
  if constexpr (std::is_same_v<T, bfloat16>) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(high), "f"(low));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(high), "f"(low));
  }
  return r;
}

// e^x in one MUFU instruction (2 ulp): e^-inf = 0, NaN stays NaN.
__device__ __forceinline__ float exp_approx(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x * kLog2e));
  return r;
}

// Reductions over the 4 lanes of a fragment row (a fixed butterfly: reproducible).
__device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (int offset = 1; offset < 4; offset *= 2) {
    const float y = __shfl_xor_sync(0xffffffffu, x, offset);
    x = y > x ? y : x;
  }
  return x;
}

__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int offset = 1; offset < 4; offset *= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The smaller (minimum, key) pair of the row; ties go to the lower key.
__device__ __forceinline__ void row_argmin(float& value, int64_t& key) {
#pragma unroll
  for (int offset = 1; offset < 4; offset *= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, value, offset);
    const int64_t other_key = __shfl_xor_sync(0xffffffffu, key, offset);
    if (other < value || (other == value && other_key < key)) value = other, key = other_key;
  }
}

// Starts copying rows [0, count) of a tile, row r at first + r * stride (elements); rows past count
// and columns past the head dimension are zero, so they add nothing (and no NaN) to any product.
// Each thread copies one 16-byte column chunk of every kThreads / kChunks-th row, without branches;
// the copies it does not make read nothing (their address is the tile's first row).
template <int kDim, typename T>
__device__ __forceinline__ void load_tile(uint16_t* tile, int count, int dim_chunks, const T* first, int64_t stride) {
  using L = Tile<kDim>;
  constexpr int kRowStep = kThreads / L::kChunks;
  const int chunk = int(threadIdx.x) % L::kChunks, row = int(threadIdx.x) / L::kChunks;
  const bool chunk_live = chunk < dim_chunks;
  const T* src = first + row * stride + chunk * 8;
#pragma unroll
  for (int i = 0; i < kTileRows / kRowStep; ++i, src += kRowStep * stride) {
    const int r = row + i * kRowStep;
    const bool live = chunk_live && r < count;
    copy_async_16_or_zero(tile + r * L::kStride + chunk * 8, live ? src : first, live);
  }
}

// The same with row r at rows(r), for rows that do not lie one stride apart.
template <int kDim, typename RowFn>
__device__ __forceinline__ void load_tile_rows(uint16_t* tile, int count, int dim_chunks, RowFn rows) {
  using L = Tile<kDim>;
  constexpr int kRowStep = kThreads / L::kChunks;
  const int chunk = int(threadIdx.x) % L::kChunks, row = int(threadIdx.x) / L::kChunks;
  const bool chunk_live = chunk < dim_chunks;
#pragma unroll
  for (int i = 0; i < kTileRows / kRowStep; ++i) {
    const int r = row + i * kRowStep;
    const bool live = chunk_live && r < count;
    copy_async_16_or_zero(tile + r * L::kStride + chunk * 8, rows(live ? r : 0) + (live ? chunk * 8 : 0), live);
  }
}

// load_tile of rows [j0, j0 + n) of a head (n >= 1): one base and stride where they lie on one side
// of the prefix boundary (every tile but one).
template <int kDim, typename T>
__device__ __forceinline__ void load_head_rows(uint16_t* tile, const HeadRows<T>& rows, int64_t j0, int n,
                                               int dim_chunks) {
  if (rows.one_side(j0, n)) load_tile<kDim>(tile, n, dim_chunks, rows(j0), rows.stride_at(j0));
  else load_tile_rows<kDim>(tile, n, dim_chunks, [&](int r) { return rows(j0 + r); });
}

// What the tile loaders read of one item and key/value head: key and value rows, and the per-key
// bias and factor rows (null where absent).
template <typename T>
struct KeySource {
  HeadRows<T> keys, values;
  const float* bias;
  const float* factor;
  int64_t count;  // keys of the item, prefix included
};

template <typename T>
__device__ inline KeySource<T> key_source(const AttentionProblem& p, const DeviceItem& it, int64_t kv_head) {
  return KeySource<T>{head_rows<T>(p, p.prefix_k, p.k, it, kv_head), head_rows<T>(p, p.prefix_v, p.v, it, kv_head),
                      p.key_bias ? p.key_bias + it.index * p.bias_stride : nullptr,
                      p.key_factor ? p.key_factor + it.index * p.factor_stride : nullptr, it.keys};
}

// Starts loading the key tile at j0: keys, values and the per-key bias (0 where absent) into one
// stage's buffers, and the factor (1 where absent) where `factor` is given; commits. Past the last
// key the bias and factor are 0, and every row masks those keys.
template <int kDim, typename T>
__device__ void load_keys_values(const KeySource<T>& src, int dim_chunks, int64_t j0, uint16_t* keys, uint16_t* values,
                                 float* bias, float* factor) {
  const int n = int(src.count - j0 < kTileRows ? src.count - j0 : kTileRows);
  load_head_rows<kDim>(keys, src.keys, j0, n, dim_chunks);
  load_head_rows<kDim>(values, src.values, j0, n, dim_chunks);
  if (threadIdx.x < kTileRows) {
    const int jj = int(threadIdx.x);
    const bool real = jj < n;
    if (src.bias) copy_async_4_or_zero(bias + jj, src.bias + j0 + (real ? jj : 0), real);
    else bias[jj] = 0.f;
    if (factor && src.factor) copy_async_4_or_zero(factor + jj, src.factor + j0 + (real ? jj : 0), real);
    else if (factor) factor[jj] = 1.f;
  }
  commit_copies();
}

// The a fragments of 16 rows of a tile, all kDim columns (for operands a warp keeps in registers).
template <int kDim>
__device__ __forceinline__ void load_rows(uint32_t (&a)[kDim / 16][4], const uint16_t* rows, int lane) {
  const int matrix = lane / 8, r = lane % 8;
#pragma unroll
  for (int kc = 0; kc < kDim / 16; ++kc)
    load_matrices(a[kc], rows + ((matrix % 2) * 8 + r) * Tile<kDim>::kStride + kc * 16 + (matrix / 2) * 8);
}

// s = a b^T: a warp's 16 rows (a fragments) against the 64 rows of tile b, over kDim columns.
template <typename T, int kDim>
__device__ __forceinline__ void multiply_rows(Product& s, const uint32_t (&a)[kDim / 16][4], const uint16_t* b,
                                              int lane) {
#pragma unroll
  for (int n = 0; n < kColumnTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
  const int matrix = lane / 8, r = lane % 8;
#pragma unroll
  for (int kc = 0; kc < kDim / 16; ++kc) {
#pragma unroll
    for (int n = 0; n < kColumnTiles; n += 2) {
      // b's rows 8n.. at columns 16kc.. and 16kc + 8.., then rows 8n + 8.. at the same columns.
      uint32_t f[4];
      load_matrices(f, b + (n * 8 + (matrix / 2) * 8 + r) * Tile<kDim>::kStride + kc * 16 + (matrix % 2) * 8);
      mma<T>(s[n], a[kc], f[0], f[1]);
      mma<T>(s[n + 1], a[kc], f[2], f[3]);
    }
  }
}

// As multiply_rows, with the warp's 16 rows of a read from a shared tile, one 16-column slice at a time.
template <typename T, int kDim>
__device__ __forceinline__ void multiply_shared(Product& s, const uint16_t* a_rows, const uint16_t* b, int lane) {
#pragma unroll
  for (int n = 0; n < kColumnTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
  const int matrix = lane / 8, r = lane % 8;
#pragma unroll
  for (int kc = 0; kc < kDim / 16; ++kc) {
    uint32_t a[4];
    load_matrices(a, a_rows + ((matrix % 2) * 8 + r) * Tile<kDim>::kStride + kc * 16 + (matrix / 2) * 8);
#pragma unroll
    for (int n = 0; n < kColumnTiles; n += 2) {
      uint32_t f[4];
      load_matrices(f, b + (n * 8 + (matrix / 2) * 8 + r) * Tile<kDim>::kStride + kc * 16 + (matrix % 2) * 8);
      mma<T>(s[n], a, f[0], f[1]);
      mma<T>(s[n + 1], a, f[2], f[3]);
    }
  }
}

// acc += w b: a warp's 16 x 64 weights w (fp32 fragments, rounded to T here) times the 64 x kDim tile b.
template <typename T, int kDim>
__device__ __forceinline__ void accumulate(float (&acc)[kDim / 8][4], const Product& w, const uint16_t* b, int lane) {
  const int matrix = lane / 8, r = lane % 8;
#pragma unroll
  for (int kc = 0; kc < kTileRows / 16; ++kc) {
    const uint32_t a[4] = {pack<T>(w[2 * kc][0], w[2 * kc][1]), pack<T>(w[2 * kc][2], w[2 * kc][3]),
                           pack<T>(w[2 * kc + 1][0], w[2 * kc + 1][1]), pack<T>(w[2 * kc + 1][2], w[2 * kc + 1][3])};
#pragma unroll
    for (int d = 0; d < kDim / 8; d += 2) {
      // Transposed: b's rows 16kc.. and 16kc + 8.. at columns 8d.., then the same rows at columns 8d + 8...
      uint32_t f[4];
      load_matrices_transposed(f, b + (kc * 16 + (matrix % 2) * 8 + r) * Tile<kDim>::kStride + d * 8 + (matrix / 2) * 8);
      mma<T>(acc[d], a, f[0], f[1]);
      mma<T>(acc[d + 1], a, f[2], f[3]);
    }
  }
}

// body(step, stage) for each step, with step + 1's tiles loading into the other stage meanwhile;
// load(step, stage) issues one step's copies (and plain stores) and commits them.
template <typename Load, typename Body>
__device__ __forceinline__ void pipelined(int64_t steps, Load load, Body body) {
  if (steps > 0) load(0, 0);
  for (int64_t step = 0; step < steps; ++step) {
    const int stage = int(step % 2);
    if (step + 1 < steps) {
      load(step + 1, stage ^ 1);  // the stage the previous step read, free after its closing barrier
      wait_copies<1>();
    } else {
      wait_copies<0>();
    }
    __syncthreads();
    body(step, stage);
    __syncthreads();
  }
}

}  // namespace lmk::attention::mma
