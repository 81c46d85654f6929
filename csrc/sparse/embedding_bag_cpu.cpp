// Embedding bag on the CPU. Forward and table backward are the same operation, a weighted sum
// of gathered rows (table rows per bag; upstream-gradient rows per table row), computed a tile
// of columns at a time across all gathered rows, so the accumulators stay in registers while
// the row reads go out in parallel. The backward pass visits each table row's
// positions in sorted order, so it needs no atomics and is bitwise reproducible. A gathered source
// larger than a core's L2 and read many times over (the upstream gradient of the table backward)
// is first packed a column block at a time, so that the block's gathers stay in L2. Both ways
// sum in the same order with the same arithmetic, so they agree bit for bit.
#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/dispatch.h"
#include "common/index_math.h"
#include "common/memory.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/stream_store.h"
#include "common/vec.h"
#include "sparse/csr_checks.h"
#include "sparse/embedding_bag.h"

namespace lmk::sparse {
namespace {

template <typename I>
[[noreturn]] void fail_index(const I* indices, int64_t position, int64_t rows) {
  fail(ErrorKind::Index, "indices: indices[", position, "] = ", int64_t(indices[position]),
       " is out of range for a table of ", rows, " rows");
}

// How rows are read into fp32 lanes: vec::load16 (every type, every SIMD level), or for fp16 F16C's
// conversion (the fp16 kernels compiled for x86-64-v3, below). Both give the same values.
struct PortableLoads {
  template <typename T>
  __attribute__((always_inline)) static void load16(const T* p, vec::f32x8& a, vec::f32x8& b) {
    vec::load16(p, a, b);
  }
};

#if LMK_X86_64_LEVELS
struct F16CLoads {
  __attribute__((always_inline)) static void load16(const float16* p, vec::f32x8& a, vec::f32x8& b) {
    a = vec::load8_f16c(p);
    b = vec::load8_f16c(p + 8);
  }
};
#endif

// acc[2u], acc[2u + 1] += w * row[16u : 16u + 16] for u < kUnits (weighted false: plain adds). The
// one accumulation step of both gather paths, so that they round alike.
template <int kUnits, typename Loads = PortableLoads, typename T>
__attribute__((always_inline)) inline void accumulate_row(vec::f32x8* acc, const T* row, bool weighted, float w) {
  vec::f32x8 a, b;
  for (int u = 0; u < kUnits; ++u) {
    Loads::load16(row + 16 * u, a, b);
    acc[2 * u] += weighted ? w * a : a;
    acc[2 * u + 1] += weighted ? w * b : b;
  }
}

// The gathered rows of the output summed next (rows[0:count]). Their lines are prefetched while the
// current output is summed, a tile of columns at a time, so that a whole output's rows are in flight
// at once: prefetching two rows ahead within an output, as before, kept too few misses in flight to
// approach the memory bandwidth (T-FREE fp32 forward 35-48 ms -> 22-30 ms, bf16 81-92 ms -> 46-70
// ms; docs/benchmarks.md). Into L1 (`to_l1`) where the rows come from memory on an Intel CPU
// (l1_prefetch_pays): the T-FREE bf16 forward, 32000 x 4096, ran 60 -> 53 ms so on the Intel machine
// (fp32 level); into L2 where they come from cache, which L1 prefetches slowed by up to a tenth.
template <typename T>
struct NextRows {
  const T* const* rows = nullptr;
  int64_t count = 0;
  bool to_l1 = false;
};

// Prefetches the cache lines of p[0:kBytes) into L1 or L2. Inlined by force: GCC takes a call holding
// only prefetches for one without effects and deletes it.
template <int64_t kBytes>
__attribute__((always_inline)) inline void prefetch_lines(const void* p, bool to_l1) {
  const char* bytes = static_cast<const char*>(p);
  if (to_l1)
    for (int64_t byte = 0; byte < kBytes; byte += 64) __builtin_prefetch(bytes + byte, 0, 3);
  else
    for (int64_t byte = 0; byte < kBytes; byte += 64) __builtin_prefetch(bytes + byte, 0, 2);
}

// out[d0 : d0 + 16 * kUnits] of weighted_row_sum, in 2 * kUnits vector accumulators: independent add
// chains that hide the add latency, with each row's columns read once, and the same columns of the
// next output's rows prefetched. With kStream, out is written with streaming stores (same values,
// see common/stream_store.h).
template <int kUnits, bool kStream, typename Loads, typename T>
__attribute__((always_inline)) inline void weighted_tile_sum(T* __restrict out, const T* const* rows, const float* w,
                                                             int64_t count, int64_t d0, float divisor,
                                                             NextRows<T> next) {
  constexpr int64_t kTileBytes = 16 * kUnits * int64_t(sizeof(T));
  vec::f32x8 acc[2 * kUnits] = {};
  for (int64_t i = 0; i < count; ++i) {
    if (i < next.count) prefetch_lines<kTileBytes>(next.rows[i] + d0, next.to_l1);
    accumulate_row<kUnits, Loads>(acc, rows[i] + d0, w != nullptr, w ? w[i] : 1.f);
  }
  for (int64_t i = count; i < next.count; ++i) prefetch_lines<kTileBytes>(next.rows[i] + d0, next.to_l1);
  for (int u = 0; u < kUnits; ++u)
    vec::store_or_stream16<kStream>(out + d0 + 16 * u, acc[2 * u] / divisor, acc[2 * u + 1] / divisor);
}

// out[0:dim] = (sum_i w[i] * rows[i][0:dim]) / divisor, summing over i in order in fp32 (w null: all 1).
// Always inlined into the SIMD-cloned wrappers below, so it is compiled once per x86-64 level.
template <int kUnits, bool kStream, typename Loads = PortableLoads, typename T>
__attribute__((always_inline)) inline void weighted_row_sum(T* __restrict out, const T* const* rows, const float* w,
                                                            int64_t count, int64_t dim, float divisor,
                                                            NextRows<T> next) {
  int64_t d0 = 0;
  for (; d0 + 16 * kUnits <= dim; d0 += 16 * kUnits)
    weighted_tile_sum<kUnits, kStream, Loads>(out, rows, w, count, d0, divisor, next);
  for (; d0 + 16 <= dim; d0 += 16) weighted_tile_sum<1, kStream, Loads>(out, rows, w, count, d0, divisor, next);
  for (int64_t d = d0; d < dim; ++d) {
    float acc = 0.f;
    for (int64_t i = 0; i < count; ++i) acc += (w ? w[i] : 1.f) * to_float(rows[i][d]);
    out[d] = from_float<T>(acc / divisor);
  }
}

// Units of 16 columns per pass: 64 columns, 128 or 256 bytes of each row, for every value type.
// Measured on an Emerald Rapids VM (docs/benchmarks.md) against 16, 32 and 128 columns, since the
// next output's rows are prefetched: T-FREE-size fp32 forward 48 -> 31 ms (from 16 columns), bf16
// 128 -> 94 ms (from 32), tables in cache alike or faster. (The narrower passes had been chosen on
// Zen 4 before that prefetch.)
constexpr int kPassUnits = 4;

// Where the output goes. Outputs larger than a last-level cache are written with streaming
// stores (when aligned for them); smaller ones stay in cache for whatever reads them next.
enum class OutputPath : int { Cached = 0, Streamed = 1 };

template <typename T>
__attribute__((always_inline)) inline float dot(const T* __restrict a, const T* __restrict b, int64_t dim) {
  // Eight partial sums let the compiler vectorise without reassociating (no -ffast-math needed),
  // and fix the summation order, so the result is the same on every SIMD level.
  float partial[8] = {};
  int64_t d = 0;
  for (; d + 8 <= dim; d += 8)
    for (int k = 0; k < 8; ++k) partial[k] += to_float(a[d + k]) * to_float(b[d + k]);
  for (; d < dim; ++d) partial[d % 8] += to_float(a[d]) * to_float(b[d]);
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

// Sums over a column block of a source packed contiguously ([source rows, block_columns], zero
// padded past `columns`): out[s][0:columns] = sum over j in [starts[s], starts[s + 1]) of
// scales[j] * block[ids[j]] (scales null: all 1), in increasing j in fp32, the arithmetic of
// weighted_tile_sum, so the values are those of the unpacked path bit for bit.
template <int kUnits, bool kStream, typename Loads, typename T>
__attribute__((always_inline)) inline void packed_block_sums(T* out, int64_t out_stride, const T* block,
                                                             int64_t columns, int64_t num_segments,
                                                             const int64_t* starts, const int32_t* ids,
                                                             const float* scales) {
  constexpr int64_t kColumns = 16 * kUnits;
  for (int64_t s = 0; s < num_segments; ++s) {
    vec::f32x8 acc[2 * kUnits] = {};
    for (int64_t j = starts[s]; j < starts[s + 1]; ++j)
      accumulate_row<kUnits, Loads>(acc, block + int64_t(ids[j]) * kColumns, scales != nullptr,
                                    scales ? scales[j] : 1.f);
    T* o = out + s * out_stride;
    for (int u = 0; u < kUnits; ++u) {
      if (16 * (u + 1) <= columns) {
        vec::store_or_stream16<kStream>(o + 16 * u, acc[2 * u], acc[2 * u + 1]);
      } else if (16 * u < columns) {
        T tail[16];
        vec::store16(tail, acc[2 * u], acc[2 * u + 1]);
        std::copy(tail, tail + (columns - 16 * u), o + 16 * u);
      }
    }
  }
}

template <bool kStream, typename Loads = PortableLoads, typename T>
__attribute__((always_inline)) inline void packed_block_sums(T* out, int64_t out_stride, const T* block,
                                                             int64_t block_columns, int64_t columns,
                                                             int64_t num_segments, const int64_t* starts,
                                                             const int32_t* ids, const float* scales) {
  switch (block_columns / 16) {
    case 1:
      return packed_block_sums<1, kStream, Loads>(out, out_stride, block, columns, num_segments, starts, ids, scales);
    case 2:
      return packed_block_sums<2, kStream, Loads>(out, out_stride, block, columns, num_segments, starts, ids, scales);
    case 3:
      return packed_block_sums<3, kStream, Loads>(out, out_stride, block, columns, num_segments, starts, ids, scales);
    default:
      return packed_block_sums<4, kStream, Loads>(out, out_stride, block, columns, num_segments, starts, ids, scales);
  }
}

// The SIMD-cloned entry points, one per value type, and overloads that pick them (`_cloned`).
#define LMK_DEFINE_KERNELS(T, SUFFIX)                                                                       \
  LMK_SIMD_CLONES void weighted_row_sum_##SUFFIX(T* out, const T* const* rows, const float* w, int64_t count, \
                                                 int64_t dim, float divisor, OutputPath path,                \
                                                 NextRows<T> next) {                                         \
    if (path == OutputPath::Streamed)                                                                        \
      weighted_row_sum<kPassUnits, true>(out, rows, w, count, dim, divisor, next);                           \
    else                                                                                                     \
      weighted_row_sum<kPassUnits, false>(out, rows, w, count, dim, divisor, next);                          \
  }                                                                                                          \
  LMK_SIMD_CLONES float dot_##SUFFIX(const T* a, const T* b, int64_t dim) { return dot(a, b, dim); }         \
  inline void weighted_row_sum_cloned(T* out, const T* const* rows, const float* w, int64_t count, int64_t dim, \
                                      float divisor, OutputPath path, NextRows<T> next) {                     \
    weighted_row_sum_##SUFFIX(out, rows, w, count, dim, divisor, path, next);                                \
  }                                                                                                          \
  inline float dot_simd(const T* a, const T* b, int64_t dim) { return dot_##SUFFIX(a, b, dim); }              \
  LMK_SIMD_CLONES void packed_block_sums_##SUFFIX(T* out, int64_t out_stride, const T* block,                 \
                                                  int64_t block_columns, int64_t columns, int64_t num_segments, \
                                                  const int64_t* starts, const int32_t* ids, const float* scales, \
                                                  OutputPath path) {                                         \
    if (path == OutputPath::Streamed)                                                                        \
      packed_block_sums<true>(out, out_stride, block, block_columns, columns, num_segments, starts, ids, scales); \
    else                                                                                                     \
      packed_block_sums<false>(out, out_stride, block, block_columns, columns, num_segments, starts, ids, scales); \
  }                                                                                                          \
  inline void packed_block_sums_cloned(T* out, int64_t out_stride, const T* block, int64_t block_columns,     \
                                       int64_t columns, int64_t num_segments, const int64_t* starts,          \
                                       const int32_t* ids, const float* scales, OutputPath path) {            \
    packed_block_sums_##SUFFIX(out, out_stride, block, block_columns, columns, num_segments, starts, ids, scales, \
                               path);                                                                        \
  }
LMK_DEFINE_KERNELS(float, f32)
LMK_DEFINE_KERNELS(bfloat16, bf16)
LMK_DEFINE_KERNELS(float16, f16)
#undef LMK_DEFINE_KERNELS

#if LMK_X86_64_LEVELS
// fp16 rows through F16C's conversion (x86-64-v3 and up): the clones' portable fp16 decoding costs
// more than the rows' memory reads (32000 x 1024 fp16, 4096 bags of 50: 53 -> 19 ms; torch 13-19 ms).
// flatten inlines the whole kernel here, F16C loads included, which the always-inlined
// helpers could not take in themselves. Same sums in the same order: the same bits as the clones.
__attribute__((target("arch=x86-64-v3"), flatten)) void weighted_row_sum_f16c(
    float16* out, const float16* const* rows, const float* w, int64_t count, int64_t dim, float divisor,
    OutputPath path, NextRows<float16> next) {
  if (path == OutputPath::Streamed)
    weighted_row_sum<kPassUnits, true, F16CLoads>(out, rows, w, count, dim, divisor, next);
  else
    weighted_row_sum<kPassUnits, false, F16CLoads>(out, rows, w, count, dim, divisor, next);
}

__attribute__((target("arch=x86-64-v3"), flatten)) void packed_block_sums_f16c(
    float16* out, int64_t out_stride, const float16* block, int64_t block_columns, int64_t columns,
    int64_t num_segments, const int64_t* starts, const int32_t* ids, const float* scales, OutputPath path) {
  if (path == OutputPath::Streamed)
    packed_block_sums<true, F16CLoads>(out, out_stride, block, block_columns, columns, num_segments, starts, ids,
                                       scales);
  else
    packed_block_sums<false, F16CLoads>(out, out_stride, block, block_columns, columns, num_segments, starts, ids,
                                        scales);
}

// x86-64-v3 or better: the level simd_level() calls "avx2" or "avx512".
bool use_f16c_kernels() {
  static const bool use = simd_level() != "baseline";
  return use;
}
#endif

template <typename T>
void weighted_row_sum_simd(T* out, const T* const* rows, const float* w, int64_t count, int64_t dim, float divisor,
                           OutputPath path, NextRows<T> next) {
#if LMK_X86_64_LEVELS
  if constexpr (std::is_same_v<T, float16>)
    if (use_f16c_kernels()) return weighted_row_sum_f16c(out, rows, w, count, dim, divisor, path, next);
#endif
  weighted_row_sum_cloned(out, rows, w, count, dim, divisor, path, next);
}

template <typename T>
void packed_block_sums_simd(T* out, int64_t out_stride, const T* block, int64_t block_columns, int64_t columns,
                            int64_t num_segments, const int64_t* starts, const int32_t* ids, const float* scales,
                            OutputPath path) {
#if LMK_X86_64_LEVELS
  if constexpr (std::is_same_v<T, float16>)
    if (use_f16c_kernels())
      return packed_block_sums_f16c(out, out_stride, block, block_columns, columns, num_segments, starts, ids, scales,
                                    path);
#endif
  packed_block_sums_cloned(out, out_stride, block, block_columns, columns, num_segments, starts, ids, scales, path);
}

// The rows one output gathers, with their weights: scratch reused across the outputs of a chunk.
// All-one weights (plain sums) skip the multiplication, which changes no bit of the result.
template <typename T>
struct Gather {
  std::vector<const T*> rows;
  std::vector<float> weights;
  bool unit_weights = true;

  void clear() {
    rows.clear();
    weights.clear();
    unit_weights = true;
  }
  // The table rows indices[0:count] with weights w[0:count] (null: all 1), filled in place after one
  // resize: per index, push_back's capacity checks cost about as much as summing an in-cache row of
  // 256 fp32. Returns the position of the first index outside [0, table_rows), or -1.
  template <typename I>
  int64_t assign(const T* table, int64_t stride, int64_t table_rows, const I* indices, const T* w, int64_t count) {
    rows.resize(size_t(count));
    for (int64_t k = 0; k < count; ++k) {
      const int64_t index = int64_t(indices[k]);
      if (uint64_t(index) >= uint64_t(table_rows)) return k;
      rows[size_t(k)] = table + index * stride;
    }
    unit_weights = true;
    if (w) {
      weights.resize(size_t(count));
      for (int64_t k = 0; k < count; ++k) unit_weights &= (weights[size_t(k)] = to_float(w[k])) == 1.f;
    }
    return -1;
  }
  void add(const T* row, float w) {
    rows.push_back(row);
    weights.push_back(w);
    unit_weights = unit_weights && w == 1.f;
  }
  // next: the output summed after this one, if known, whose rows are prefetched meanwhile (into L1
  // where `to_l1`, else into L2).
  void sum_into(T* out, int64_t dim, float divisor, OutputPath path, const Gather* next, bool to_l1) const {
    weighted_row_sum_simd(out, rows.data(), unit_weights ? nullptr : weights.data(), int64_t(rows.size()), dim,
                          divisor, path,
                          next ? NextRows<T>{next->rows.data(), int64_t(next->rows.size()), to_l1}
                               : NextRows<T>{});
  }
};

// Sums the outputs [lo, hi) one ahead of gathering their rows, so that each output's sum prefetches
// the next one's rows (NextRows): collect(gather, i) fills `gather` with output i's rows (false: stop
// here, an error was recorded), then sum(gather, i, next) writes output i (next: null for the last).
template <typename T, typename Collect, typename Sum>
void gather_one_ahead(Gather<T> (&gathers)[2], int64_t lo, int64_t hi, Collect collect, Sum sum) {
  Gather<T>* gather = &gathers[0];
  Gather<T>* next = &gathers[1];
  if (!collect(*gather, lo)) return;
  for (int64_t i = lo; i < hi; ++i) {
    const bool has_next = i + 1 < hi;
    if (has_next && !collect(*next, i + 1)) return;
    sum(*gather, i, has_next ? next : nullptr);
    std::swap(gather, next);
  }
}

// Whether gathered rows come from memory rather than cache: a source larger than a typical
// last-level cache (32 MiB).
bool larger_than_cache(int64_t bytes) { return bytes > (int64_t(32) << 20); }

// Whether the next bag's rows, where they come from memory, should be prefetched into L1 rather than
// L2. On the Intel machine (Emerald Rapids) L1 ran the T-FREE bf16 forward 60 -> 53 ms; on Zen 4
// it ran 3x slower than L2 (bf16 44-46 -> 151-166 ms, fp32 29 -> 59-63 ms, fp16 12 -> 35 ms, one
// process alternating; docs/benchmarks.md), so only Intel CPUs take it.
bool l1_prefetch_pays() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool intel = __builtin_cpu_is("intel");
  return intel;
#else
  return false;
#endif
}

// Readies a contiguous [rows, dim] output for its kernel and picks how to write it. Huge pages
// always (a fresh output otherwise costs a page fault per 4 KiB); for outputs larger than a cache,
// all pages faulted in up front and streaming stores.
template <typename T>
OutputPath prepare_output(const TensorView& out, int64_t rows, int64_t dim) {
  const int64_t bytes = rows * dim * int64_t(sizeof(T));
  advise_huge_pages(out.data, size_t(bytes));
  if (!larger_than_cache(bytes) || !vec::streamable(out.data, dim * int64_t(sizeof(T)))) return OutputPath::Cached;
  prefault_for_overwrite(out.data, size_t(bytes));
  return OutputPath::Streamed;
}

// Columns per block when a gather source of [source_rows, dim] values is better read from packed
// column blocks (see packed_block_sums), else 0. Gathering whole rows from a source larger than a
// core's L2 cache (taken as 1 MiB) runs at L3 or memory speed; a packed block of 512 KiB stays in
// L2 while every gather of the pass reads it, which pays for the packing once the gathers
// outnumber the source rows. At 4096 source rows on Zen 4, 32 fp32 columns (512 KiB) ran 1.3x-1.6x
// faster than 16 or 64 in a standalone replica at 2 threads, and level with 64 in the op at 1
// thread. At most 64 columns: the accumulators of packed_block_sums.
int64_t packed_block_columns(int64_t source_rows, int64_t dim, int64_t element_bytes, int64_t gathers) {
  constexpr int64_t kBlockBytes = int64_t(512) << 10, kMaxColumns = 64;
  const int64_t column_bytes = source_rows * element_bytes;
  if (dim < 2 * 16 || gathers < source_rows || column_bytes * dim <= 2 * kBlockBytes) return 0;
  const int64_t columns = std::min(kMaxColumns, kBlockBytes / column_bytes / 16 * 16);
  return columns >= 16 ? columns : 0;
}

// Bag sizes are a few to a few hundred rows: aim for chunks of about 64 KiB of row reads.
int64_t bag_grain(int64_t dim, int64_t num_bags, int64_t num_indices) {
  const int64_t mean_bag = std::max<int64_t>(1, num_indices / std::max<int64_t>(1, num_bags));
  return std::max<int64_t>(1, (16 * 1024) / std::max<int64_t>(1, mean_bag * dim));
}

// Checks the offsets, then calls visit(lo, hi) for chunks of bags [lo, hi) in parallel. visit returns
// the position of an index outside the table that it met (it stops there), or -1; the first such
// position is raised.
template <typename I, typename Visit>
void for_each_bag_chunk(const Bags& bags, int64_t rows, int64_t dim, Visit visit) {
  const I* offsets = bags.offsets.as<I>();
  const int64_t num_bags = bags.num_bags();
  check_csr_offsets(offsets, num_bags, bags.num_indices(), "offsets");
  FirstError bad;
  parallel_for(0, num_bags, bag_grain(dim, num_bags, bags.num_indices()), [&](int64_t lo, int64_t hi) {
    if (const int64_t position = visit(lo, hi); position >= 0) return bad.record(position);
    vec::stream_fence();
  });
  if (bad.any()) fail_index(bags.indices.as<I>(), bad.position.load(), rows);
}

}  // namespace

void forward_cpu(const TensorView& table, const Bags& bags, const TensorView& out) {
  dispatch_float_index(table.dtype, "table", bags.indices.dtype, "indices", [&](auto value_tag, auto index_tag) {
    using T = typename decltype(value_tag)::type;
    using I = typename decltype(index_tag)::type;
    const int64_t num_bags = bags.num_bags(), rows = table.size(0), dim = table.size(1);
    const I* indices = bags.indices.as<I>();
    const I* offsets = bags.offsets.as<I>();
    const T* weights = bags.weights ? bags.weights->as<T>() : nullptr;
    const OutputPath path = prepare_output<T>(out, num_bags, dim);
    const bool rows_to_l1 = l1_prefetch_pays() && larger_than_cache(rows * table.stride(0) * int64_t(sizeof(T)));
    // The bag being summed and the next one, whose rows it prefetches: per thread (static storage,
    // not captured, each thread its own), one thread-local lookup per chunk.
    thread_local Gather<T> scratch_gathers[2];
    for_each_bag_chunk<I>(bags, rows, dim, [&](int64_t lo, int64_t hi) -> int64_t {
      int64_t bad_position = -1;
      const auto collect = [&](Gather<T>& gather, int64_t b) {
        const int64_t begin = offsets[b];
        const int64_t bad = gather.assign(table.as<T>(), table.stride(0), rows, indices + begin,
                                          weights ? weights + begin : nullptr, offsets[b + 1] - begin);
        bad_position = bad >= 0 ? begin + bad : -1;
        return bad < 0;
      };
      gather_one_ahead(scratch_gathers, lo, hi, collect, [&](const Gather<T>& gather, int64_t b, const Gather<T>* next) {
        const int64_t size = offsets[b + 1] - offsets[b];
        const float divisor = bags.mode == BagMode::Mean && size > 0 ? float(size) : 1.f;
        gather.sum_into(out.as<T>() + b * dim, dim, divisor, path, next, rows_to_l1);
      });
      return bad_position;
    });
  });
}

void sort_positions_by_row_cpu(const TensorView& indices_view, int64_t rows, const TensorView& sorted_positions,
                               const TensorView& row_starts) {
  check_dtype(indices_view, "indices", {DType::Int32, DType::Int64});
  check_ndim(indices_view, "indices", 1);
  check_contiguous(indices_view, "indices");
  if (rows < 0) fail(ErrorKind::Value, "rows: expected a non-negative row count, got ", rows);
  check_dtype(sorted_positions, "sorted_positions", {DType::Int64});
  check_ndim(sorted_positions, "sorted_positions", 1);
  check_contiguous(sorted_positions, "sorted_positions");
  check_size(sorted_positions, "sorted_positions", 0, indices_view.size(0));
  check_writable(sorted_positions, "sorted_positions");
  check_dtype(row_starts, "row_starts", {DType::Int64});
  check_ndim(row_starts, "row_starts", 1);
  check_contiguous(row_starts, "row_starts");
  check_size(row_starts, "row_starts", 0, rows + 1);
  check_writable(row_starts, "row_starts");
  for (const TensorView* t : {&indices_view, &sorted_positions, &row_starts})
    if (t->device != DeviceType::CPU) fail(ErrorKind::Value, "sort_positions_by_row: expected CPU tensors");
  check_sort_positions_disjoint(indices_view, sorted_positions, row_starts, std::nullopt);
  dispatch_index(indices_view.dtype, "indices", [&](auto index_tag) {
    using I = typename decltype(index_tag)::type;
    const I* indices = indices_view.as<I>();
    const int64_t n = indices_view.size(0);
    int64_t* starts = row_starts.as<int64_t>();
    std::fill(starts, starts + rows + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
      if (uint64_t(indices[i]) >= uint64_t(rows)) fail_index(indices, i, rows);
      ++starts[indices[i] + 1];
    }
    for (int64_t r = 0; r < rows; ++r) starts[r + 1] += starts[r];
    std::vector<int64_t> cursor(starts, starts + rows);
    int64_t* positions = sorted_positions.as<int64_t>();
    for (int64_t i = 0; i < n; ++i) positions[cursor[size_t(indices[i])]++] = i;
  });
}

void backward_table_cpu(const TensorView& grad_out, const Bags& bags, const TensorView& sorted_positions,
                        const TensorView& segment_starts, const TensorView& grad_segments) {
  dispatch_float_index(grad_out.dtype, "grad_out", bags.indices.dtype, "indices", [&](auto value_tag, auto index_tag) {
    using T = typename decltype(value_tag)::type;
    using I = typename decltype(index_tag)::type;
    const int64_t num_bags = bags.num_bags(), n = bags.num_indices(), dim = grad_out.size(1);
    const int64_t num_segments = segment_starts.size(0) - 1;
    const I* offsets = bags.offsets.as<I>();
    const T* weights = bags.weights ? bags.weights->as<T>() : nullptr;
    const int64_t* positions = sorted_positions.as<int64_t>();
    const int64_t* starts = segment_starts.as<int64_t>();
    check_csr_offsets(offsets, num_bags, n, "offsets");
    for (int64_t s = 0; s < num_segments; ++s)
      if (starts[s] < 0 || starts[s] > starts[s + 1] || starts[s + 1] > n)
        fail(ErrorKind::Value, "segment_starts: expected non-decreasing starts within [0, ", n, "], got [",
             starts[s], ", ", starts[s + 1], "] for segment ", s);
    const OutputPath path = prepare_output<T>(grad_segments, num_segments, dim);
    FirstError bad;
    const auto scale_of = [&](int64_t position, int64_t bag) {  // the factor of a gathered row
      float scale = weights ? to_float(weights[position]) : 1.f;
      if (bags.mode == BagMode::Mean) scale /= float(offsets[bag + 1] - offsets[bag]);
      return scale;
    };
    // Each gathered row's bag is read from a table of the bag of every position, built first: the
    // binary search of the offsets it replaces (unpredictable branches) had cost 10-25% of the
    // kernel. int32 entries where the bag count allows (half the cache footprint of int64).
    const auto gather_segments = [&](auto bag_id_tag) {
      using BagId = typename decltype(bag_id_tag)::type;
      std::vector<BagId> bag_of_position(static_cast<size_t>(n));
      parallel_for(0, num_bags, bag_grain(dim, num_bags, n), [&](int64_t lo, int64_t hi) {
        for (int64_t b = lo; b < hi; ++b)
          std::fill(bag_of_position.data() + offsets[b], bag_of_position.data() + offsets[b + 1], BagId(b));
      });
      // A packed block holds at most 512 KiB / 16 columns of bags, so int32 bag ids.
      if constexpr (std::is_same_v<BagId, int32_t>) {
        if (const int64_t block_columns = packed_block_columns(num_bags, dim, int64_t(sizeof(T)), n)) {
          // Each gathered position's bag and scale, in segment order, then one pass per column block.
          std::vector<BagId> sorted_bags(static_cast<size_t>(n));
          std::vector<float> sorted_scales(weights || bags.mode == BagMode::Mean ? size_t(n) : 0);
          parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
            for (int64_t j = lo; j < hi; ++j) {
              const int64_t p = positions[j];
              if (uint64_t(p) >= uint64_t(n)) return bad.record(j);
              const BagId b = bag_of_position[size_t(p)];
              sorted_bags[size_t(j)] = b;
              if (!sorted_scales.empty()) sorted_scales[size_t(j)] = scale_of(p, b);
            }
          });
          if (bad.any()) return;
          const int64_t num_blocks = ceil_div(dim, block_columns);
          parallel_for(0, num_blocks, 1, [&](int64_t lo, int64_t hi) {
            std::vector<T> block(static_cast<size_t>(num_bags * block_columns));
            for (int64_t k = lo; k < hi; ++k) {
              const int64_t c0 = k * block_columns, columns = std::min(block_columns, dim - c0);
              for (int64_t b = 0; b < num_bags; ++b) {
                const T* source = grad_out.as<T>() + b * grad_out.stride(0) + c0;
                T* packed = block.data() + b * block_columns;
                std::copy(source, source + columns, packed);
                std::fill(packed + columns, packed + block_columns, T{});
              }
              packed_block_sums_simd(grad_segments.as<T>() + c0, dim, block.data(), block_columns, columns,
                                     num_segments, starts, sorted_bags.data(),
                                     sorted_scales.empty() ? nullptr : sorted_scales.data(), path);
            }
            vec::stream_fence();
          });
          return;
        }
      }
      const int64_t grain = std::max<int64_t>(1, (16 * 1024) / std::max<int64_t>(1, dim));
      // The rows of segment s, with their scales; false (and the position recorded) at a bad position.
      const auto collect = [&](Gather<T>& gather, int64_t s) {
        gather.clear();
        for (int64_t j = starts[s]; j < starts[s + 1]; ++j) {
          const int64_t p = positions[j];
          if (uint64_t(p) >= uint64_t(n)) return bad.record(j), false;
          const int64_t b = bag_of_position[size_t(p)];
          gather.add(grad_out.as<T>() + b * grad_out.stride(0), scale_of(p, b));
        }
        return true;
      };
      parallel_for(0, num_segments, grain, [&](int64_t lo, int64_t hi) {
        Gather<T> gathers[2];
        gather_one_ahead(gathers, lo, hi, collect, [&](const Gather<T>& gather, int64_t s, const Gather<T>* next) {
          // The upstream gradient's rows into L2 whatever its size: L1 was measured for the forward only.
          gather.sum_into(grad_segments.as<T>() + s * dim, dim, 1.f, path, next, /*to_l1=*/false);
        });
        vec::stream_fence();
      });
    };
    if (num_bags <= std::numeric_limits<int32_t>::max())
      gather_segments(TypeTag<int32_t>{});
    else
      gather_segments(TypeTag<int64_t>{});
    if (bad.any())
      fail(ErrorKind::Index, "sorted_positions: sorted_positions[", bad.position.load(), "] = ",
           positions[bad.position.load()], " is out of range for ", n, " indices");
  });
}

void backward_weights_cpu(const TensorView& grad_out, const TensorView& table, const Bags& bags,
                          const TensorView& grad_weights) {
  dispatch_float_index(table.dtype, "table", bags.indices.dtype, "indices", [&](auto value_tag, auto index_tag) {
    using T = typename decltype(value_tag)::type;
    using I = typename decltype(index_tag)::type;
    const int64_t rows = table.size(0), dim = table.size(1);
    const I* indices = bags.indices.as<I>();
    const I* offsets = bags.offsets.as<I>();
    T* grad_w = grad_weights.as<T>();
    for_each_bag_chunk<I>(bags, rows, dim, [&](int64_t lo, int64_t hi) -> int64_t {
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t count = offsets[b + 1] - offsets[b];
        const T* g = grad_out.as<T>() + b * grad_out.stride(0);
        for (int64_t i = offsets[b]; i < offsets[b + 1]; ++i) {
          if (uint64_t(indices[i]) >= uint64_t(rows)) return i;
          float v = dot_simd(g, table.as<T>() + int64_t(indices[i]) * table.stride(0), dim);
          if (bags.mode == BagMode::Mean) v /= float(count);
          grad_w[i] = from_float<T>(v);
        }
      }
      return -1;
    });
  });
}

}  // namespace lmk::sparse
