// Attention on CUDA (see attention.h for the math): plain tiled kernels, fp32 in shared memory.
//
// Forward and dq pass: a block of 128 threads per (tile of 16 queries, query head, item); each
// query row belongs to 8 threads, each of which holds 4 of the 32 scores of a key tile and a
// strided eighth of the row's output (or dq) accumulator in registers. Key and value tiles are
// staged in shared memory. Row maxima and sums are combined over the 8 threads by xor shuffles,
// a fixed pattern, so results are reproducible. The dq pass also finds delta_i = sum_j P_ij dP_ij
// and, with a multiplicative factor, the gradient dm_i of the row minimum.
// dk/dv pass: a block per (tile of 16 keys, key/value head, item) walks every query head of the
// group and the query tiles that can see its keys; each thread owns a fixed set of the tile's dk
// and dv elements, so no value has two writers and no atomics are needed (it also adds dm_i q_i to
// the key holding row i's minimum). Varlen items read their
// bounds from cu_seqlens on the device; a malformed table sets kBadSeqlens and the item is skipped.
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/attention.h"
#include "attention/attention_device.cuh"
#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/numeric.h"

namespace lmk::attention {
namespace {

constexpr int kThreads = 128;
constexpr int kRows = 16;                        // queries per tile
constexpr int kKeys = 32;                        // keys per tile, forward and dq pass
constexpr int kLanes = kThreads / kRows;         // threads per query row
constexpr int kKeysPerLane = kKeys / kLanes;     // scores per thread
constexpr int kDimsPerLane = kMaxDim / kLanes;   // accumulator slots per thread
constexpr int kGradKeys = 16;                    // keys per block, dk/dv pass
constexpr int kGradSlots = kGradKeys * kMaxDim / kThreads;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 2147483647;

// The query tile starting at row i0 of an item, as seen by the thread of tile row `row`: its row
// count, the thread's query i (active when i is a real row) and the keys i sees, and the keys
// any row of the tile sees, [first_key, last_key).
struct QueryTile {
  int64_t count, i;
  bool active;
  Interval vis;
  int64_t first_key, last_key;
};

__device__ QueryTile query_tile(const AttentionOptions& o, const DeviceItem& it, int64_t i0, int row) {
  const int64_t count = it.queries - i0 < kRows ? it.queries - i0 : kRows, i = i0 + row;
  const bool active = row < count;
  return QueryTile{count, i, active, active ? visible_keys(o, it, i) : Interval{0, 0},
                   visible_keys(o, it, i0).lo, visible_keys(o, it, i0 + count - 1).hi};
}

__device__ float dot(const float* a, const float* b, int64_t dim) {
  float s = 0.f;
  for (int64_t d = 0; d < dim; ++d) s = fmaf(a[d], b[d], s);
  return s;
}

// Reductions over the kLanes threads of one row (aligned groups of 8 within a warp).
__device__ float group_max(float x) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {
    const float y = __shfl_xor_sync(0xffffffffu, x, offset);
    x = y > x ? y : x;
  }
  return x;
}

__device__ float group_sum(float x) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Stages `count` rows of one operand head as fp32 (times `scale`), zero rows up to `rows`.
template <typename RowFn>
__device__ void stage_rows(float* dst, int64_t dim, int rows, int64_t count, float scale, RowFn row) {
  for (int64_t e = threadIdx.x; e < rows * dim; e += kThreads) {
    const int64_t r = e / dim, d = e % dim;
    dst[e] = r < count ? scale * to_float(row(r)[d]) : 0.f;
  }
}

// The suppressed score from the raw one, scale q . k.
__device__ float suppress(const AttentionProblem& p, float raw, float bias, float factor, float row_min) {
  float s = raw;
  if (p.key_factor && factor != 1.f) s = row_min + factor * (s - row_min);
  if (p.key_bias) s += bias;
  return s;
}

// Element d of row `row` of a q, k or v gradient from its fp32 value: float32, or rounded once to T (`narrow`).
template <typename T>
__device__ void store_gradient(const Operand& o, bool narrow, const DeviceItem& it, int64_t head, int64_t row,
                               int64_t d, float value) {
  if (narrow) row_at<T>(o, it, head, row)[d] = from_float<T>(value);
  else row_at<float>(o, it, head, row)[d] = value;
}

// The smaller of two (minimum, key) pairs over the row's threads; ties go to the lower key.
__device__ void group_argmin(float& value, int64_t& key) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, value, offset);
    const int64_t other_key = __shfl_xor_sync(0xffffffffu, key, offset);
    if (other < value || (other == value && other_key < key)) value = other, key = other_key;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(AttentionProblem p, Operand out, Operand lse_out,
                                                           Operand row_min_out, Operand row_argmin_out,
                                                           int32_t* flag) {
  extern __shared__ float smem[];
  const int64_t dim = p.dim;
  float* q_s = smem;
  float* k_s = q_s + kRows * dim;
  float* v_s = k_s + kKeys * dim;
  float* p_s = v_s + kKeys * dim;
  float* bias_s = p_s + kRows * kKeys;
  float* factor_s = bias_s + kKeys;

  const DeviceItem it = item_at(p, blockIdx.z, flag);
  const int64_t head = blockIdx.y, i0 = int64_t(blockIdx.x) * kRows;
  if (!it.valid || i0 >= it.queries) return;
  const int64_t kv_head = head / (p.q_heads / p.kv_heads);
  const HeadRows<T> keys = head_rows<T>(p, p.prefix_k, p.k, it, kv_head);
  const HeadRows<T> values = head_rows<T>(p, p.prefix_v, p.v, it, kv_head);
  const int tid = threadIdx.x, row = tid / kLanes, lane = tid % kLanes;
  const auto [count, i, active, vis, first_key, last_key] = query_tile(p.options, it, i0, row);
  stage_rows(q_s, dim, kRows, count, float(p.options.scale),
             [&](int64_t r) { return row_at<const T>(p.q, it, head, i0 + r); });

  float row_min = INFINITY;
  int64_t row_argmin = 0;
  if (p.key_factor) {
    const bool all = p.options.factor_min_all;
    const Interval counted = all ? Interval{0, it.keys} : vis;
    const int64_t lo = all ? 0 : first_key, hi = all ? it.keys : last_key;
    for (int64_t j0 = lo / kKeys * kKeys; j0 < hi; j0 += kKeys) {
      const int64_t n = it.keys - j0 < kKeys ? it.keys - j0 : kKeys;
      __syncthreads();
      stage_rows(k_s, dim, kKeys, n, 1.f, [&](int64_t r) { return keys(j0 + r); });
      __syncthreads();
      for (int t = 0; t < kKeysPerLane; ++t) {
        const int64_t jj = lane + t * kLanes, j = j0 + jj;
        if (active && j >= counted.lo && j < counted.hi) {
          const float s = dot(q_s + row * dim, k_s + jj * dim, dim);
          if (s < row_min) row_min = s, row_argmin = j;
        }
      }
    }
    group_argmin(row_min, row_argmin);
  }

  float m = -INFINITY, l = 0.f, o[kDimsPerLane];
#pragma unroll
  for (int u = 0; u < kDimsPerLane; ++u) o[u] = 0.f;
  for (int64_t j0 = first_key / kKeys * kKeys; j0 < last_key; j0 += kKeys) {
    const int64_t n = it.keys - j0 < kKeys ? it.keys - j0 : kKeys;
    __syncthreads();
    stage_rows(k_s, dim, kKeys, n, 1.f, [&](int64_t r) { return keys(j0 + r); });
    stage_rows(v_s, dim, kKeys, n, 1.f, [&](int64_t r) { return values(j0 + r); });
    if (tid < kKeys) {
      const bool real = tid < n;
      bias_s[tid] = p.key_bias && real ? p.key_bias[it.index * p.bias_stride + j0 + tid] : 0.f;
      factor_s[tid] = p.key_factor && real ? p.key_factor[it.index * p.factor_stride + j0 + tid] : 1.f;
    }
    __syncthreads();
    float s[kKeysPerLane], tile_max = -INFINITY;
    for (int t = 0; t < kKeysPerLane; ++t) {
      const int64_t jj = lane + t * kLanes, j = j0 + jj;
      s[t] = -INFINITY;
      if (active && j >= vis.lo && j < vis.hi)
        s[t] = suppress(p, dot(q_s + row * dim, k_s + jj * dim, dim), bias_s[jj], factor_s[jj], row_min);
      tile_max = s[t] > tile_max ? s[t] : tile_max;
    }
    tile_max = group_max(tile_max);
    const float new_max = tile_max > m ? tile_max : m;
    const float base = new_max == -INFINITY ? 0.f : new_max;
    const float rescale = expf(m - base);
    float sum = 0.f;
    for (int t = 0; t < kKeysPerLane; ++t) {
      const float e = expf(s[t] - base);
      p_s[row * kKeys + lane + t * kLanes] = e;
      sum += e;
    }
    l = l * rescale + group_sum(sum);
    m = new_max;
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kDimsPerLane; ++u) {
      const int64_t d = lane + u * kLanes;
      if (d < dim) {
        float acc = o[u] * rescale;
        for (int jj = 0; jj < n; ++jj) acc = fmaf(p_s[row * kKeys + jj], v_s[jj * dim + d], acc);
        o[u] = acc;
      }
    }
  }
  if (!active) return;
  const float inverse = l == 0.f ? 0.f : 1.f / l;
  T* dst = row_at<T>(out, it, head, i);
#pragma unroll
  for (int u = 0; u < kDimsPerLane; ++u) {
    const int64_t d = lane + u * kLanes;
    if (d < dim) dst[d] = from_float<T>(o[u] * inverse);
  }
  if (lane == 0) {
    *row_at<float>(lse_out, it, head, i) = l == 0.f ? -INFINITY : (m == -INFINITY ? 0.f : m) + logf(l);
    if (p.key_factor) {
      *row_at<float>(row_min_out, it, head, i) = row_min;
      *row_at<int64_t>(row_argmin_out, it, head, i) = row_argmin;
    }
  }
}


// dq, delta and (with a factor) dm of one query tile; with G = P (dP - delta):
//   dq_i / scale = sum_j (P dP c)_ij k_j - delta_i sum_j (P c)_ij k_j + dm_i k_{a_i}
//   dm_i = sum_j (P dP (1 - c))_ij - delta_i sum_j (P (1 - c))_ij
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_query_kernel(AttentionProblem p, GradientOperands g, int32_t* flag) {
  extern __shared__ float smem[];
  const int64_t dim = p.dim;
  float* q_s = smem;
  float* do_s = q_s + kRows * dim;
  float* k_s = do_s + kRows * dim;
  float* v_s = k_s + kKeys * dim;
  float* p_s = v_s + kKeys * dim;
  float* pdp_s = p_s + kRows * kKeys;
  float* bias_s = pdp_s + kRows * kKeys;
  float* factor_s = bias_s + kKeys;

  const DeviceItem it = item_at(p, blockIdx.z, flag);
  const int64_t head = blockIdx.y, i0 = int64_t(blockIdx.x) * kRows;
  if (!it.valid || i0 >= it.queries) return;
  const int64_t kv_head = head / (p.q_heads / p.kv_heads);
  const HeadRows<T> keys = head_rows<T>(p, p.prefix_k, p.k, it, kv_head);
  const HeadRows<T> values = head_rows<T>(p, p.prefix_v, p.v, it, kv_head);
  const int tid = threadIdx.x, row = tid / kLanes, lane = tid % kLanes;
  const auto [count, i, active, vis, first_key, last_key] = query_tile(p.options, it, i0, row);
  stage_rows(q_s, dim, kRows, count, float(p.options.scale),
             [&](int64_t r) { return row_at<const T>(p.q, it, head, i0 + r); });
  stage_rows(do_s, dim, kRows, count, 1.f, [&](int64_t r) { return row_at<const T>(g.grad_out, it, head, i0 + r); });
  const float lse = active ? *row_at<const float>(g.lse, it, head, i) : -INFINITY;
  const float row_min = active && p.key_factor ? *row_at<const float>(g.row_min, it, head, i) : 0.f;

  float delta = 0.f, product_rest = 0.f, prob_rest = 0.f, a[kDimsPerLane], b[kDimsPerLane];
#pragma unroll
  for (int u = 0; u < kDimsPerLane; ++u) a[u] = b[u] = 0.f;
  for (int64_t j0 = first_key / kKeys * kKeys; j0 < last_key; j0 += kKeys) {
    const int64_t n = it.keys - j0 < kKeys ? it.keys - j0 : kKeys;
    __syncthreads();
    stage_rows(k_s, dim, kKeys, n, 1.f, [&](int64_t r) { return keys(j0 + r); });
    stage_rows(v_s, dim, kKeys, n, 1.f, [&](int64_t r) { return values(j0 + r); });
    if (tid < kKeys) {
      const bool real = tid < n;
      bias_s[tid] = p.key_bias && real ? p.key_bias[it.index * p.bias_stride + j0 + tid] : 0.f;
      factor_s[tid] = p.key_factor && real ? p.key_factor[it.index * p.factor_stride + j0 + tid] : 1.f;
    }
    __syncthreads();
    for (int t = 0; t < kKeysPerLane; ++t) {
      const int64_t jj = lane + t * kLanes, j = j0 + jj;
      float prob = 0.f, product = 0.f;
      if (active && j >= vis.lo && j < vis.hi && lse != -INFINITY) {
        const float raw = dot(q_s + row * dim, k_s + jj * dim, dim);
        prob = expf(suppress(p, raw, bias_s[jj], factor_s[jj], row_min) - lse);
        product = prob * dot(do_s + row * dim, v_s + jj * dim, dim);
      }
      delta += product;
      const float c = factor_s[jj];
      product_rest += product * (1.f - c);
      prob_rest += prob * (1.f - c);
      p_s[row * kKeys + jj] = prob * c;
      pdp_s[row * kKeys + jj] = product * c;
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kDimsPerLane; ++u) {
      const int64_t d = lane + u * kLanes;
      if (d < dim)
        for (int jj = 0; jj < n; ++jj) {
          a[u] = fmaf(pdp_s[row * kKeys + jj], k_s[jj * dim + d], a[u]);
          b[u] = fmaf(p_s[row * kKeys + jj], k_s[jj * dim + d], b[u]);
        }
    }
  }
  delta = group_sum(delta);
  product_rest = group_sum(product_rest);
  prob_rest = group_sum(prob_rest);
  if (!active) return;
  const float scale = float(p.options.scale), grad_min = product_rest - delta * prob_rest;
  const int64_t argmin = p.key_factor ? *row_at<const int64_t>(g.row_argmin, it, head, i) : 0;
  const bool argmin_ok = argmin >= 0 && argmin < it.keys;
  if (!argmin_ok && lane == 0) atomicOr(flag, kBadArgmin);
  const T* min_key = p.key_factor && argmin_ok ? keys(argmin) : nullptr;
#pragma unroll
  for (int u = 0; u < kDimsPerLane; ++u) {
    const int64_t d = lane + u * kLanes;
    if (d < dim)
      store_gradient<T>(g.grad_q, g.narrow_q, it, head, i, d,
                        scale * (a[u] - delta * b[u] + (min_key ? grad_min * to_float(min_key[d]) : 0.f)));
  }
  if (lane == 0) {
    *row_at<float>(g.delta, it, head, i) = delta;
    if (p.key_factor) *row_at<float>(g.grad_min, it, head, i) = grad_min;
  }
}

// dk, dv and the bias and factor gradients of one tile of kGradKeys keys of one key/value head:
//   dv_j = sum_i P_ij grad_out_i,  dk_j = sum_i G_ij c_j (scale q_i) + sum_{i : a_i = j} dm_i (scale q_i)
//   dbias_j = sum_i G_ij,  dfactor_j = sum_i G_ij (s_ij - m_i)
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_key_kernel(AttentionProblem p, GradientOperands g, int32_t* flag) {
  extern __shared__ float smem[];
  const int64_t dim = p.dim;
  float* k_s = smem;
  float* v_s = k_s + kGradKeys * dim;
  float* q_s = v_s + kGradKeys * dim;
  float* do_s = q_s + kRows * dim;
  float* p_s = do_s + kRows * dim;
  float* ds_s = p_s + kRows * kGradKeys;
  float* dc_s = ds_s + kRows * kGradKeys;
  float* bias_s = dc_s + kRows * kGradKeys;
  float* factor_s = bias_s + kGradKeys;
  float* lse_s = factor_s + kGradKeys;
  float* delta_s = lse_s + kRows;
  float* min_s = delta_s + kRows;

  const int tid = threadIdx.x;
  const DeviceItem it = item_at(p, blockIdx.z, flag);
  const int64_t kv_head = blockIdx.y, j0 = int64_t(blockIdx.x) * kGradKeys;
  if (!it.valid || j0 >= it.keys) return;
  const HeadRows<T> keys = head_rows<T>(p, p.prefix_k, p.k, it, kv_head);
  const HeadRows<T> values = head_rows<T>(p, p.prefix_v, p.v, it, kv_head);
  const int64_t n = it.keys - j0 < kGradKeys ? it.keys - j0 : kGradKeys, group = p.q_heads / p.kv_heads;
  stage_rows(k_s, dim, kGradKeys, n, 1.f, [&](int64_t r) { return keys(j0 + r); });
  stage_rows(v_s, dim, kGradKeys, n, 1.f, [&](int64_t r) { return values(j0 + r); });
  if (tid < kGradKeys) {
    const bool real = tid < n;
    bias_s[tid] = p.key_bias && real ? p.key_bias[it.index * p.bias_stride + j0 + tid] : 0.f;
    factor_s[tid] = p.key_factor && real ? p.key_factor[it.index * p.factor_stride + j0 + tid] : 1.f;
  }

  // The query rows that see some key of the tile.
  const int64_t offset = it.keys - it.queries;
  int64_t lo = 0, hi = it.queries;
  if (p.options.causal && j0 - offset > lo) lo = j0 - offset;
  if (p.options.window > 0 && j0 + n - 1 + p.options.window - offset < hi) hi = j0 + n - 1 + p.options.window - offset;

  const float scale = float(p.options.scale);
  float acc_k[kGradSlots], acc_v[kGradSlots], bias_acc = 0.f, factor_acc = 0.f;
#pragma unroll
  for (int s = 0; s < kGradSlots; ++s) acc_k[s] = acc_v[s] = 0.f;
  for (int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head) {
    for (int64_t i0 = lo / kRows * kRows; i0 < hi; i0 += kRows) {
      const int64_t count = it.queries - i0 < kRows ? it.queries - i0 : kRows;
      __syncthreads();
      stage_rows(q_s, dim, kRows, count, scale, [&](int64_t r) { return row_at<const T>(p.q, it, head, i0 + r); });
      stage_rows(do_s, dim, kRows, count, 1.f,
                 [&](int64_t r) { return row_at<const T>(g.grad_out, it, head, i0 + r); });
      if (tid < kRows) {
        const bool real = tid < count;
        lse_s[tid] = real ? *row_at<const float>(g.lse, it, head, i0 + tid) : -INFINITY;
        delta_s[tid] = real ? *row_at<const float>(g.delta, it, head, i0 + tid) : 0.f;
        min_s[tid] = real && p.key_factor ? *row_at<const float>(g.row_min, it, head, i0 + tid) : 0.f;
      }
      __syncthreads();
      for (int e = tid; e < kRows * kGradKeys; e += kThreads) {
        const int r = e / kGradKeys, jj = e % kGradKeys;
        const int64_t j = j0 + jj;
        float prob = 0.f, grad = 0.f, grad_factor = 0.f;
        if (r < count && jj < n && lse_s[r] != -INFINITY) {
          const Interval vis = visible_keys(p.options, it, i0 + r);
          if (j >= vis.lo && j < vis.hi) {
            const float raw = dot(q_s + r * dim, k_s + jj * dim, dim);
            prob = expf(suppress(p, raw, bias_s[jj], factor_s[jj], min_s[r]) - lse_s[r]);
            grad = prob * (dot(do_s + r * dim, v_s + jj * dim, dim) - delta_s[r]);
            grad_factor = grad * (raw - min_s[r]);
          }
        }
        p_s[e] = prob;
        ds_s[e] = grad;
        dc_s[e] = grad_factor;
      }
      __syncthreads();
#pragma unroll
      for (int s = 0; s < kGradSlots; ++s) {
        const int64_t e = tid + int64_t(s) * kThreads, jj = e / dim, d = e % dim;
        if (jj < kGradKeys)
          for (int r = 0; r < kRows; ++r) {
            acc_v[s] = fmaf(p_s[r * kGradKeys + jj], do_s[r * dim + d], acc_v[s]);
            acc_k[s] = fmaf(ds_s[r * kGradKeys + jj] * factor_s[jj], q_s[r * dim + d], acc_k[s]);
          }
      }
      if (tid < kGradKeys)
        for (int r = 0; r < kRows; ++r) {
          bias_acc += ds_s[r * kGradKeys + tid];
          factor_acc += dc_s[r * kGradKeys + tid];
        }
    }
  }
  if (p.key_factor) {  // the rows whose minimum sits on a key of this tile (any row, for factor_min="all")
    for (int64_t head = kv_head * group; head < (kv_head + 1) * group; ++head)
      for (int64_t i = 0; i < it.queries; ++i) {
        const int64_t a = *row_at<const int64_t>(g.row_argmin, it, head, i);
        if (a < j0 || a >= j0 + n) continue;
        const float weight = scale * *row_at<const float>(g.grad_min, it, head, i);
        const T* q = row_at<const T>(p.q, it, head, i);
#pragma unroll
        for (int s = 0; s < kGradSlots; ++s) {
          const int64_t e = tid + int64_t(s) * kThreads, jj = e / dim, d = e % dim;
          if (j0 + jj == a) acc_k[s] = fmaf(weight, to_float(q[d]), acc_k[s]);
        }
      }
  }
#pragma unroll
  for (int s = 0; s < kGradSlots; ++s) {
    const int64_t e = tid + int64_t(s) * kThreads, jj = e / dim, d = e % dim;
    if (jj < n) {
      store_gradient<T>(g.grad_k, g.narrow_kv, it, kv_head, j0 + jj, d, acc_k[s]);
      store_gradient<T>(g.grad_v, g.narrow_kv, it, kv_head, j0 + jj, d, acc_v[s]);
    }
  }
  if (tid < n) {
    if (p.key_bias) *row_at<float>(g.grad_bias, it, kv_head, j0 + tid) = bias_acc;
    if (p.key_factor) *row_at<float>(g.grad_factor, it, kv_head, j0 + tid) = factor_acc;
  }
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, size_t shared_bytes, cudaStream_t stream, const AttentionProblem& p,
            Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (shared_bytes > max_block_shared_memory())
    fail(ErrorKind::Value, "q: a head dimension of ", p.dim, " needs ", shared_bytes,
         " bytes of shared memory per block on CUDA, more than this GPU's ", max_block_shared_memory());
  LMK_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
  kernel<<<grid, kThreads, shared_bytes, stream>>>(p, args...);
  LMK_CUDA_CHECK(cudaGetLastError());
}

void check_grid(const AttentionProblem& p) {
  if (p.q_heads > kMaxGridY || p.items > kMaxGridY)
    fail(ErrorKind::Value, "q: at most ", kMaxGridY, " heads and ", kMaxGridY, " batch items on CUDA, got ", p.q_heads,
         " and ", p.items);
  // The tensor-core forward's grid walks (64-row query tile, head) pairs in x.
  if ((p.queries + 63) / 64 * p.q_heads > kMaxGridX)
    fail(ErrorKind::Value, "q: at most ", kMaxGridX, " tiles of 64 queries times heads on CUDA, got ",
         (p.queries + 63) / 64, " tiles and ", p.q_heads, " heads");
  // Varlen rows that would launch no block, where no kernel could flag that they go unwritten: a table
  // of one entry, or a max_seqlen of 0 (some sequence of a valid table is longer).
  if (p.cu_seqlens && p.items == 0 && p.total_rows != 0)
    fail(ErrorKind::Value, "cu_seqlens: expected the last entry to be the number of rows of q (", p.total_rows,
         "), got a table of one entry");
  if (p.cu_seqlens && p.queries == 0 && p.total_rows != 0)
    fail(ErrorKind::Value, "max_seqlen: expected the length of the longest sequence (at least 1 for ", p.total_rows,
         " rows of q), got 0");
}

}  // namespace

void attention_forward_cuda(const AttentionProblem& p, const AttentionForwardOutputs& out, const TensorView& error_flag,
                            void* stream) {
  CudaDeviceGuard guard(out.out.device_index);
  check_grid(p);
  if (attention_forward_mma_cuda(p, out, error_flag, stream)) return;
  const bool varlen = p.cu_seqlens != nullptr;
  const Operand row_min = out.row_min ? operand_of(*out.row_min, varlen) : Operand{};
  const Operand row_argmin = out.row_argmin ? operand_of(*out.row_argmin, varlen) : Operand{};
  const size_t shared = sizeof(float) * size_t((kRows + 2 * kKeys) * p.dim + kRows * kKeys + 2 * kKeys);
  const dim3 grid(unsigned(ceil_div(p.queries, kRows)), unsigned(p.q_heads), unsigned(p.items));
  dispatch_float(p.dtype, "q", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(forward_kernel<T>, grid, shared, static_cast<cudaStream_t>(stream), p, operand_of(out.out, varlen),
           operand_of(out.lse, varlen), row_min, row_argmin, error_flag.as<int32_t>());
  });
}

void attention_backward_cuda(const AttentionProblem& p, const AttentionGradients& g, const TensorView& error_flag,
                             void* stream) {
  CudaDeviceGuard guard(g.grad_q.device_index);
  check_grid(p);
  if (attention_backward_mma_cuda(p, g, error_flag, stream)) return;
  const bool varlen = p.cu_seqlens != nullptr;
  const GradientOperands ops = gradient_operands(g, varlen);
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t keys = varlen ? p.queries : p.prefix + p.keys;
  const size_t query_shared = sizeof(float) * size_t(2 * (kRows + kKeys) * p.dim + 2 * kRows * kKeys + 2 * kKeys);
  const size_t key_shared =
      sizeof(float) * size_t(2 * (kGradKeys + kRows) * p.dim + 3 * kRows * kGradKeys + 2 * kGradKeys + 3 * kRows);
  dispatch_float(p.dtype, "q", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(grad_query_kernel<T>, dim3(unsigned(ceil_div(p.queries, kRows)), unsigned(p.q_heads), unsigned(p.items)),
           query_shared, s, p, ops, error_flag.as<int32_t>());
    launch(grad_key_kernel<T>, dim3(unsigned(ceil_div(keys, kGradKeys)), unsigned(p.kv_heads), unsigned(p.items)),
           key_shared, s, p, ops, error_flag.as<int32_t>());
  });
}

}  // namespace lmk::attention
