// Token divergence on CUDA: one block per position (see token_divergence.h for the math).
//
// Each thread walks its share of the row in increasing index order (16-byte packs where the
// layout allows), keeping an online log-sum-exp of both logits, the weighted difference
// sum e^{r - max_r} (r - c), its top-2 values with the argmax, and the first NaN index. The
// threads' states are then combined by a fixed shared-memory tree, so results are bitwise
// reproducible without floating-point atomics. A bad reference token sets kBadToken in the error
// flag, and its position gets the masked results.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/numeric.h"
#include "divergence/token_divergence.h"

namespace lmk::divergence {
namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kMaxGrid = 0x7fffffff;
constexpr int64_t kNoIndex = INT64_MAX;

template <typename T, int P>
struct alignas(sizeof(T) * P) Pack {
  T v[P];
};

// e^{a - b} for a <= b, 0 where a = -inf (a lane that saw only -inf), NaN where both are +inf.
__device__ __forceinline__ float relative_exp(float a, float b) { return a == -INFINITY ? 0.f : expf(a - b); }

struct OnlineLogSumExp {
  float max = -INFINITY, sum = 0.f;

  // Adds x; returns e^{x - max} after the update and, in `scale`, the factor the sum was moved by.
  __device__ __forceinline__ float add(float x, float& scale) {
    scale = 1.f;
    if (x > max) {
      scale = relative_exp(max, x);
      max = x;
      // e^{x - x}, which is NaN for x = +inf, as the CPU computes it.
      const float self = x == INFINITY ? NAN : 1.f;
      sum = sum * scale + self;
      return self;
    }
    if (x == -INFINITY) return 0.f;
    const float e = expf(x - max);  // NaN for a NaN x, which then stays in the sum
    sum += e;
    return e;
  }

  __device__ __forceinline__ void merge(const OnlineLogSumExp& o, float& scale_self, float& scale_other) {
    const float m = fmaxf(max, o.max);  // maxima are never NaN
    scale_self = relative_exp(max, m);
    scale_other = relative_exp(o.max, m);
    sum = sum * scale_self + o.sum * scale_other;
    max = m;
  }

  __device__ __forceinline__ float log_sum_exp() const { return max == -INFINITY ? -INFINITY : max + logf(sum); }
};

struct ThreadState {
  OnlineLogSumExp candidate, reference;
  float weighted_difference = 0.f;  // sum e^{r - max_r} (r - c)
  float first = -INFINITY, second = -INFINITY;
  int64_t index = kNoIndex;      // of `first`, the lowest on ties
  int64_t nan_index = kNoIndex;  // the first NaN of the candidate

  __device__ __forceinline__ void add_top(float x) {
    if (x > second) {
      if (x > first) {
        second = first;
        first = x;
      } else {
        second = x;
      }
    }
  }

  template <bool kWithReference>
  __device__ __forceinline__ void add(float c, float r, int64_t v) {
    if (c > first) index = v;  // this thread sees increasing v: strict > keeps the lowest
    add_top(c);
    if (c != c && nan_index == kNoIndex) nan_index = v;
    float scale;
    candidate.add(c, scale);
    if constexpr (kWithReference) {
      const float e = reference.add(r, scale);
      weighted_difference *= scale;
      if (r != -INFINITY) weighted_difference += e * (r - c);
    }
  }

  __device__ __forceinline__ void merge(const ThreadState& o) {
    if (o.first > first || (o.first == first && o.index < index)) index = o.index;
    const float f = first, s = second;
    first = -INFINITY;
    second = -INFINITY;
    add_top(f);
    add_top(s);
    add_top(o.first);
    add_top(o.second);
    nan_index = o.nan_index < nan_index ? o.nan_index : nan_index;
    float candidate_self, candidate_other, reference_self, reference_other;
    candidate.merge(o.candidate, candidate_self, candidate_other);
    reference.merge(o.reference, reference_self, reference_other);
    weighted_difference = weighted_difference * reference_self + o.weighted_difference * reference_other;
  }
};

struct Rows {
  int64_t cols;  // T
  int64_t vocab;
  int64_t logits_stride0, logits_stride1, reference_stride0, reference_stride1;
  int64_t tokens_stride0, tokens_stride1, mask_stride0, mask_stride1;
};

template <typename T, typename I, int P, bool kWithReference>
__global__ void token_divergence_kernel(const T* __restrict__ logits, const T* __restrict__ reference_logits,
                                        const I* __restrict__ tokens, const bool* __restrict__ mask, Rows rows,
                                        int64_t positions, int64_t* __restrict__ argmax_out,
                                        bool* __restrict__ match_out, float* __restrict__ nll_out,
                                        float* __restrict__ margin_out, float* __restrict__ kl_out,
                                        int32_t* __restrict__ flag) {
  // Raw storage: a __shared__ array may not have a constructor; every slot is assigned before use.
  __shared__ alignas(ThreadState) unsigned char storage[kMaxThreads * sizeof(ThreadState)];
  ThreadState* states = reinterpret_cast<ThreadState*>(storage);
  for (int64_t p = blockIdx.x; p < positions; p += gridDim.x) {
    const int64_t b = p / rows.cols, s = p % rows.cols;
    const int64_t token = tokens[b * rows.tokens_stride0 + s * rows.tokens_stride1];
    const bool counted = !mask || mask[b * rows.mask_stride0 + s * rows.mask_stride1];
    const bool token_ok = 0 <= token && token < rows.vocab;
    if (counted && !token_ok) {
      if (threadIdx.x == 0) atomicOr(flag, kBadToken);
    }
    if (!counted || !token_ok) {
      if (threadIdx.x == 0) {
        argmax_out[p] = -1;
        match_out[p] = false;
        nll_out[p] = 0.f;
        margin_out[p] = 0.f;
        if constexpr (kWithReference) kl_out[p] = 0.f;
      }
      continue;
    }
    const T* c = logits + b * rows.logits_stride0 + s * rows.logits_stride1;
    const T* r = kWithReference ? reference_logits + b * rows.reference_stride0 + s * rows.reference_stride1 : nullptr;
    ThreadState st;
    for (int64_t pack = threadIdx.x; pack < rows.vocab / P; pack += blockDim.x) {
      const Pack<T, P> cp = *reinterpret_cast<const Pack<T, P>*>(c + pack * P);
      Pack<T, P> rp;
      if constexpr (kWithReference) rp = *reinterpret_cast<const Pack<T, P>*>(r + pack * P);
#pragma unroll
      for (int k = 0; k < P; ++k)
        st.add<kWithReference>(to_float(cp.v[k]), kWithReference ? to_float(rp.v[k]) : 0.f, pack * P + k);
    }
    states[threadIdx.x] = st;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
      if (int(threadIdx.x) < half) states[threadIdx.x].merge(states[threadIdx.x + half]);
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      const ThreadState& total = states[0];
      const float lse = total.candidate.log_sum_exp();
      int64_t argmax = total.index == kNoIndex ? 0 : total.index;
      float margin = total.first == total.second ? 0.f : total.first - total.second;
      if (total.nan_index != kNoIndex) {
        argmax = total.nan_index;
        margin = NAN;
      }
      argmax_out[p] = argmax;
      match_out[p] = argmax == token;
      nll_out[p] = lse - to_float(c[token]);
      margin_out[p] = margin;
      if constexpr (kWithReference)
        kl_out[p] = total.weighted_difference / total.reference.sum + (lse - total.reference.log_sum_exp());
    }
    __syncthreads();  // states[] is rewritten by the next position
  }
}

// 16-byte packs when every row starts 16-byte aligned and V fills whole packs, else single values.
template <typename T>
bool can_pack(const TokenDivergenceInputs& in) {
  constexpr int64_t P = 16 / sizeof(T);
  auto aligned = [&](const TensorView& t) {
    return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.stride(0) % P == 0 && t.stride(1) % P == 0;
  };
  return in.logits.size(2) % P == 0 && aligned(in.logits) && (!in.reference_logits || aligned(*in.reference_logits));
}

template <typename T, typename I, int P, bool kWithReference>
void launch(const TokenDivergenceInputs& in, const TokenDivergenceOutputs& out, int32_t* flag, cudaStream_t stream) {
  const int64_t positions = in.logits.size(0) * in.logits.size(1);
  const int64_t vocab = in.logits.size(2);
  const TensorView& r = in.reference_logits ? *in.reference_logits : in.logits;
  const Rows rows{in.logits.size(1),
                  vocab,
                  in.logits.stride(0),
                  in.logits.stride(1),
                  r.stride(0),
                  r.stride(1),
                  in.reference_tokens.stride(0),
                  in.reference_tokens.stride(1),
                  in.mask ? in.mask->stride(0) : 0,
                  in.mask ? in.mask->stride(1) : 0};
  // Enough threads to cover the row's packs a few times over; a warp for small vocabularies.
  int threads = 32;
  while (threads < kMaxThreads && threads * P * 8 < vocab) threads *= 2;
  const auto blocks = unsigned(std::min(positions, kMaxGrid));
  token_divergence_kernel<T, I, P, kWithReference><<<blocks, threads, 0, stream>>>(
      in.logits.as<const T>(), in.reference_logits ? in.reference_logits->as<const T>() : nullptr,
      in.reference_tokens.as<const I>(), in.mask ? in.mask->as<const bool>() : nullptr, rows, positions,
      out.argmax.as<int64_t>(), out.match.as<bool>(), out.nll.as<float>(), out.margin.as<float>(),
      out.kl ? out.kl->as<float>() : nullptr, flag);
  LMK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void token_divergence_cuda(const TokenDivergenceInputs& in, const TokenDivergenceOutputs& out,
                           const TensorView& error_flag, void* stream) {
  CudaDeviceGuard guard(in.logits.device_index);
  const auto s = static_cast<cudaStream_t>(stream);
  if (in.logits.size(0) * in.logits.size(1) == 0) return;
  int32_t* flag = error_flag.as<int32_t>();
  dispatch_float_index(in.logits.dtype, "logits", in.reference_tokens.dtype, "reference_tokens", [&](auto ttag,
                                                                                                      auto itag) {
    using T = typename decltype(ttag)::type;
    using I = typename decltype(itag)::type;
    constexpr int P = 16 / sizeof(T);
    const bool packed = can_pack<T>(in);
    if (in.reference_logits) {
      if (packed) launch<T, I, P, true>(in, out, flag, s);
      else launch<T, I, 1, true>(in, out, flag, s);
    } else {
      if (packed) launch<T, I, P, false>(in, out, flag, s);
      else launch<T, I, 1, false>(in, out, flag, s);
    }
  });
}

}  // namespace lmk::divergence
