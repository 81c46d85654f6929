// Word connectors on the CPU (see word_connector.h for the math). Words are independent: a thread
// takes a run of words, loads each word's key and value rows of one KV head into fp32 scratch
// (zero-padded to a multiple of 8 columns, so every dot product is whole 8-lane vectors), and
// serves all query heads of that KV head from it. Words are a few bytes long, so the scores of one
// (word, head) fit in a small buffer and the softmax is exact, not online.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/word_connector.h"
#include "common/dispatch.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/vec.h"
#include "common/vec_math.h"

namespace lmk::attention {
namespace {

using vec::f32x8;

constexpr float kInf = std::numeric_limits<float>::infinity();

int64_t padded(int64_t dim) { return (dim + 7) / 8 * 8; }

template <typename I>
void check_seqlen_values(const I* cu, int64_t words, int64_t rows) {
  if (cu[0] < 0 || cu[words] > rows)
    fail(ErrorKind::Value, "cu_seqlens: expected values in [0, ", rows, "] (the rows of the byte stream), got ",
         int64_t(cu[0]), " .. ", int64_t(cu[words]));
  for (int64_t w = 0; w < words; ++w)
    if (cu[w + 1] < cu[w])
      fail(ErrorKind::Value, "cu_seqlens: expected non-decreasing word boundaries, got ", int64_t(cu[w]), " then ",
           int64_t(cu[w + 1]), " at index ", w);
}

template <typename T>
void to_fp32(const T* src, int64_t dim, float* dst, int64_t dim_padded) {
  for (int64_t d = 0; d < dim; ++d) dst[d] = to_float(src[d]);
  std::fill(dst + dim, dst + dim_padded, 0.f);
}

template <typename T>
void from_fp32(const float* src, int64_t dim, T* dst) {
  for (int64_t d = 0; d < dim; ++d) dst[d] = from_float<T>(src[d]);
}

__attribute__((always_inline)) inline float dot(const float* a, const float* b, int64_t n) {
  f32x8 acc = vec::splat(0.f);
  for (int64_t d = 0; d < n; d += 8) acc += vec::load8(a + d) * vec::load8(b + d);
  float sum = 0.f;
  for (int k = 0; k < 8; ++k) sum += acc[k];
  return sum;
}

// y += alpha * x
__attribute__((always_inline)) inline void axpy(float* y, float alpha, const float* x, int64_t n) {
  for (int64_t d = 0; d < n; d += 8) vec::store8(y + d, vec::load8(y + d) + alpha * vec::load8(x + d));
}

// One (word, KV head): key and value rows in fp32, [length, dim_padded] each.
struct WordRows {
  std::vector<float> keys, values;

  template <typename T>
  void load(const T* k, const T* v, int64_t row_stride, int64_t first, int64_t length, int64_t dim, int64_t dp) {
    keys.resize(length * dp);
    values.resize(length * dp);
    for (int64_t j = 0; j < length; ++j) {
      to_fp32(k + (first + j) * row_stride, dim, keys.data() + j * dp, dp);
      to_fp32(v + (first + j) * row_stride, dim, values.data() + j * dp, dp);
    }
  }
};

// scores[j] = exp(scale * q . k_j - lse) for the word's keys; returns lse when lse_in is NaN (forward),
// else uses lse_in (backward recomputes the probabilities from the saved lse).
__attribute__((always_inline)) inline float probabilities(const float* q, const WordRows& rows, int64_t length,
                                                          int64_t dp, float scale, float lse_in, float* p) {
  float most = -kInf;
  for (int64_t j = 0; j < length; ++j) {
    p[j] = scale * dot(q, rows.keys.data() + j * dp, dp);
    most = std::max(most, p[j]);
  }
  float lse = lse_in;
  if (std::isnan(lse_in)) {
    float sum = 0.f;
    for (int64_t j = 0; j < length; ++j) sum += std::exp(p[j] - most);
    lse = most + std::log(sum);
  }
  for (int64_t j = 0; j < length; ++j) p[j] = std::exp(p[j] - lse);
  return lse;
}

struct Scratch {
  WordRows rows;
  std::vector<float> q, grad_o, acc, p, grad_p, grad_keys, grad_values;
};

template <typename T>
__attribute__((always_inline)) inline void forward_words(const WordAttentionForward& a, const int64_t* bounds, int64_t begin, int64_t end,
                                   Scratch& s) {
  const int64_t q_heads = a.q.size(1), kv_heads = a.k.size(1), dim = a.q.size(2), dp = padded(dim);
  const int64_t group = q_heads / kv_heads;
  const T* q = a.q.as<T>();
  T* out = a.out.as<T>();
  float* lse = a.lse.as<float>();
  s.q.resize(dp);
  s.acc.resize(dp);
  for (int64_t w = begin; w < end; ++w) {
    const int64_t first = bounds[w], length = bounds[w + 1] - first;
    s.p.resize(std::max<int64_t>(length, 1));
    for (int64_t g = 0; g < kv_heads; ++g) {
      s.rows.load(a.k.as<T>() + g * dim, a.v.as<T>() + g * dim, kv_heads * dim, first, length, dim, dp);
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const int64_t row = w * q_heads + h;
        std::fill(s.acc.begin(), s.acc.end(), 0.f);
        if (length == 0) {
          lse[row] = -kInf;
        } else {
          to_fp32(q + row * dim, dim, s.q.data(), dp);
          lse[row] = probabilities(s.q.data(), s.rows, length, dp, a.scale, std::nanf(""), s.p.data());
          for (int64_t j = 0; j < length; ++j) axpy(s.acc.data(), s.p[j], s.rows.values.data() + j * dp, dp);
        }
        from_fp32(s.acc.data(), dim, out + row * dim);
      }
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void backward_words(const WordAttentionBackward& a, const int64_t* bounds, int64_t begin, int64_t end,
                                    Scratch& s) {
  const int64_t q_heads = a.q.size(1), kv_heads = a.k.size(1), dim = a.q.size(2), dp = padded(dim);
  const int64_t group = q_heads / kv_heads;
  const float* lse = a.lse.as<float>();
  for (auto* buffer : {&s.q, &s.grad_o, &s.acc}) buffer->resize(dp);
  for (int64_t w = begin; w < end; ++w) {
    const int64_t first = bounds[w], length = bounds[w + 1] - first;
    s.p.resize(std::max<int64_t>(length, 1));
    s.grad_p.resize(std::max<int64_t>(length, 1));
    for (int64_t g = 0; g < kv_heads; ++g) {
      s.rows.load(a.k.as<T>() + g * dim, a.v.as<T>() + g * dim, kv_heads * dim, first, length, dim, dp);
      s.grad_keys.assign(length * dp, 0.f);
      s.grad_values.assign(length * dp, 0.f);
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const int64_t row = w * q_heads + h;
        std::fill(s.acc.begin(), s.acc.end(), 0.f);
        float delta = 0.f;
        if (length > 0) {
          to_fp32(a.q.as<T>() + row * dim, dim, s.q.data(), dp);
          to_fp32(a.grad_out.as<T>() + row * dim, dim, s.grad_o.data(), dp);
          probabilities(s.q.data(), s.rows, length, dp, a.scale, lse[row], s.p.data());
          for (int64_t j = 0; j < length; ++j) {
            s.grad_p[j] = dot(s.grad_o.data(), s.rows.values.data() + j * dp, dp);
            delta += s.p[j] * s.grad_p[j];
          }
          for (int64_t j = 0; j < length; ++j) {
            const float grad_score = s.p[j] * (s.grad_p[j] - delta);
            axpy(s.acc.data(), a.scale * grad_score, s.rows.keys.data() + j * dp, dp);
            axpy(s.grad_keys.data() + j * dp, a.scale * grad_score, s.q.data(), dp);
            axpy(s.grad_values.data() + j * dp, s.p[j], s.grad_o.data(), dp);
          }
        }
        a.delta.as<float>()[row] = delta;
        from_fp32(s.acc.data(), dim, a.grad_q.as<T>() + row * dim);
      }
      for (int64_t j = 0; j < length; ++j) {
        const int64_t key_row = ((first + j) * kv_heads + g) * dim;
        from_fp32(s.grad_keys.data() + j * dp, dim, a.grad_k.as<T>() + key_row);
        from_fp32(s.grad_values.data() + j * dp, dim, a.grad_v.as<T>() + key_row);
      }
    }
  }
}

// One SIMD-cloned entry point per value type and direction; overloads pick them.
#define LMK_DEFINE_WORDS(T, SUFFIX)                                                                              \
  LMK_SIMD_CLONES void forward_words_##SUFFIX(const WordAttentionForward& a, const int64_t* bounds, int64_t begin,  \
                                              int64_t end, Scratch& s) {                                           \
    forward_words<T>(a, bounds, begin, end, s);                                                                   \
  }                                                                                                               \
  LMK_SIMD_CLONES void backward_words_##SUFFIX(const WordAttentionBackward& a, const int64_t* bounds,              \
                                               int64_t begin, int64_t end, Scratch& s) {                          \
    backward_words<T>(a, bounds, begin, end, s);                                                                  \
  }                                                                                                               \
  void words_simd(const WordAttentionForward& a, const int64_t* bounds, int64_t begin, int64_t end, Scratch& s,    \
                  T*) {                                                                                            \
    forward_words_##SUFFIX(a, bounds, begin, end, s);                                                             \
  }                                                                                                               \
  void words_simd(const WordAttentionBackward& a, const int64_t* bounds, int64_t begin, int64_t end, Scratch& s,   \
                  T*) {                                                                                            \
    backward_words_##SUFFIX(a, bounds, begin, end, s);                                                            \
  }
LMK_DEFINE_WORDS(float, f32)
LMK_DEFINE_WORDS(bfloat16, bf16)
LMK_DEFINE_WORDS(float16, f16)
#undef LMK_DEFINE_WORDS

// The word boundaries as int64, checked.
std::vector<int64_t> word_bounds(const TensorView& cu_seqlens, int64_t rows) {
  const int64_t words = cu_seqlens.size(0) - 1;
  return dispatch_index(cu_seqlens.dtype, "cu_seqlens", [&](auto tag) {
    using I = typename decltype(tag)::type;
    const I* cu = cu_seqlens.as<I>();
    check_seqlen_values(cu, words, rows);
    return std::vector<int64_t>(cu, cu + words + 1);
  });
}

// Words per parallel chunk: about 16 KiB of rows read.
int64_t word_grain(int64_t words, int64_t rows, int64_t row_bytes) {
  const int64_t rows_per_word = std::max<int64_t>(1, rows / std::max<int64_t>(words, 1));
  return std::max<int64_t>(1, (int64_t(16) << 10) / std::max<int64_t>(1, rows_per_word * row_bytes));
}

template <typename T>
void zero_rows(const TensorView& t, int64_t begin, int64_t end) {
  const int64_t row = t.numel() / std::max<int64_t>(t.size(0), 1);
  std::fill(t.as<T>() + begin * row, t.as<T>() + end * row, from_float<T>(0.f));
}

}  // namespace

void word_attention_cpu(const WordAttentionForward& a) {
  const std::vector<int64_t> bounds = word_bounds(a.cu_seqlens, a.k.size(0));
  const int64_t words = a.q.size(0);
  dispatch_float(a.q.dtype, "q", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t grain = word_grain(words, a.k.size(0), 2 * a.k.size(1) * a.k.size(2) * int64_t(sizeof(T)));
    parallel_for(0, words, grain, [&](int64_t begin, int64_t end) {
      thread_local Scratch scratch;
      words_simd(a, bounds.data(), begin, end, scratch, static_cast<T*>(nullptr));
    });
  });
}

void word_attention_backward_cpu(const WordAttentionBackward& a) {
  const std::vector<int64_t> bounds = word_bounds(a.cu_seqlens, a.k.size(0));
  const int64_t words = a.q.size(0), rows = a.k.size(0);
  dispatch_float(a.q.dtype, "q", [&](auto tag) {
    using T = typename decltype(tag)::type;
    zero_rows<T>(a.grad_k, 0, bounds.front());
    zero_rows<T>(a.grad_k, bounds.back(), rows);
    zero_rows<T>(a.grad_v, 0, bounds.front());
    zero_rows<T>(a.grad_v, bounds.back(), rows);
    const int64_t grain = word_grain(words, rows, 2 * a.k.size(1) * a.k.size(2) * int64_t(sizeof(T)));
    parallel_for(0, words, grain, [&](int64_t begin, int64_t end) {
      thread_local Scratch scratch;
      words_simd(a, bounds.data(), begin, end, scratch, static_cast<T*>(nullptr));
    });
  });
}

void guide_broadcast_cpu(const GuideBroadcast& a) {
  const std::vector<int64_t> bounds = word_bounds(a.cu_seqlens, a.x.size(0));
  const int64_t words = a.guide.size(0), rows = a.x.size(0), width = a.x.size(1);
  dispatch_float(a.x.dtype, "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = a.x.as<T>();
    const T* guide = a.guide.as<T>();
    T* out = a.out.as<T>();
    std::copy(x, x + bounds.front() * width, out);
    std::copy(x + bounds.back() * width, x + rows * width, out + bounds.back() * width);
    const int64_t grain = word_grain(words, rows, width * int64_t(sizeof(T)));
    parallel_for(0, words, grain, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w)
        for (int64_t t = bounds[w]; t < bounds[w + 1]; ++t)
          for (int64_t c = 0; c < width; ++c)
            out[t * width + c] = from_float<T>(to_float(x[t * width + c]) + to_float(guide[w * width + c]));
    });
  });
}

void guide_broadcast_backward_cpu(const GuideBroadcastBackward& a) {
  const std::vector<int64_t> bounds = word_bounds(a.cu_seqlens, a.grad_out.size(0));
  const int64_t words = a.grad_guide.size(0), rows = a.grad_out.size(0), width = a.grad_out.size(1);
  dispatch_float(a.grad_out.dtype, "grad_out", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* grad_out = a.grad_out.as<T>();
    T* grad_guide = a.grad_guide.as<T>();
    const int64_t grain = word_grain(words, rows, width * int64_t(sizeof(T)));
    parallel_for(0, words, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> sum(width);
      for (int64_t w = begin; w < end; ++w) {
        std::fill(sum.begin(), sum.end(), 0.f);
        for (int64_t t = bounds[w]; t < bounds[w + 1]; ++t)
          for (int64_t c = 0; c < width; ++c) sum[c] += to_float(grad_out[t * width + c]);
        from_fp32(sum.data(), width, grad_guide + w * width);
      }
    });
  });
}

}  // namespace lmk::attention
