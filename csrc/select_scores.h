// Per-token scores of the selection ops on the CPU, in fp32 whatever the input dtype
// (docs/design.md sections 2-3): one pass over a token's hidden state gives its T folded
// similarities, one pass over its key and value gives its [CLS] logit and ||v_j||.
//
// Each input row is read once from memory (the second pass over a hidden row hits L1: 4 KiB at
// Dv = 1024 fp32) and the text rows w_t stay in L1/L2, so a token costs about one read of its
// Dv + 2 D values.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <limits>

namespace litelvlm {

// Vectors: GCC / Clang vector extensions, 8 fp32 lanes. Not ATen's at::vec::Vectorized: an
// extension build defines no CPU_CAPABILITY, so Vectorized<float> is the generic class, which
// GCC 11 compiled to scalar mulss / addss here (perf annotate), with at::vec::fmadd an
// out-of-line call per vector. A vector_size(32) type is two SSE registers in the baseline
// build and one ymm register in the AVX2 clone, with no intrinsics to keep per ISA.
//
// x86-64 Linux: the hot token loop is compiled twice, for AVX2 (2013 on) and for the baseline
// ISA, and the dynamic loader picks one (ifunc). "arch=haswell" would dispatch on the CPU
// model rather than its features and miss AMD EPYC. setup.py's flags (-O3, -fopenmp) already
// assume GCC or Clang.
#if defined(__x86_64__) && defined(__linux__)
#define LITELVLM_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LITELVLM_SIMD_CLONES
#endif
// Forced inlining puts the helpers below inside each clone of the caller, so they are compiled for its ISA.
#define LITELVLM_INLINE inline __attribute__((always_inline))

typedef float Vec __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;

LITELVLM_INLINE Vec vload(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
LITELVLM_INLINE Vec vsplat(float x) { return Vec{} + x; }
LITELVLM_INLINE Vec muladd(Vec a, Vec b, Vec c) { return a * b + c; }

LITELVLM_INLINE float hsum(Vec v) {
  float s = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// A row of n values at `row` with element stride `stride`, as contiguous fp32: fp32 with
// stride 1 is returned in place (no copy); anything else is converted into `buf`.
using RowLoader = const float* (*)(const char* row, int64_t stride, int64_t n, float* buf);

template <typename T>
const float* load_row(const char* row, int64_t stride, int64_t n, float* buf) {
  const T* x = reinterpret_cast<const T*>(row);
  if constexpr (std::is_same_v<T, float>) {
    if (stride == 1) return x;
  }
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(x[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(x[i * stride]);
  }
  return buf;
}

inline RowLoader row_loader(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return &load_row<c10::Half>;
    case at::kBFloat16: return &load_row<c10::BFloat16>;
    default: return &load_row<float>;  // the checks admit fp32, fp16, bf16 only
  }
}

// sum_i x_i (two accumulators: independent add chains).
LITELVLM_INLINE float vsum(const float* x, int64_t n) {
  Vec a0 = vsplat(0.f), a1 = vsplat(0.f);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    a0 = a0 + vload(x + i);
    a1 = a1 + vload(x + i + kLanes);
  }
  for (; i + kLanes <= n; i += kLanes) a0 = a0 + vload(x + i);
  float s = hsum(a0 + a1);
  for (; i < n; ++i) s += x[i];
  return s;
}

// With d = x - mu (never materialised): dots[q] = d . w_q for NT text rows w_q = w + q * ldw, and,
// when sq is given, *sq = d . d. The centred form keeps fp32 exact enough with CLIP's outlier
// channels (|x| ~ 1e2-1e3), where x . w - mu * sum(w) cancels catastrophically (docs/design.md
// section 3). NT <= 4 accumulators + the variance stay in registers: one pass over x per 4 texts.
template <int NT>
LITELVLM_INLINE void centred_dots(const float* x, float mu, int64_t n, const float* w, int64_t ldw, float* dots, float* sq) {
  const Vec m = vsplat(mu);
  Vec a[NT];
  for (int q = 0; q < NT; ++q) a[q] = vsplat(0.f);
  Vec v = vsplat(0.f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec d = vload(x + i) - m;
    if (sq) v = muladd(d, d, v);
    for (int q = 0; q < NT; ++q) a[q] = muladd(d, vload(w + q * ldw + i), a[q]);
  }
  float vs = hsum(v);
  for (int q = 0; q < NT; ++q) dots[q] = hsum(a[q]);
  for (; i < n; ++i) {
    const float d = x[i] - mu;
    vs += d * d;
    for (int q = 0; q < NT; ++q) dots[q] += d * w[q * ldw + i];
  }
  if (sq) *sq = vs;
}

LITELVLM_INLINE void centred_dots_n(int64_t nt, const float* x, float mu, int64_t n, const float* w, int64_t ldw, float* dots,
                           float* sq) {
  switch (nt) {
    case 1: return centred_dots<1>(x, mu, n, w, ldw, dots, sq);
    case 2: return centred_dots<2>(x, mu, n, w, ldw, dots, sq);
    case 3: return centred_dots<3>(x, mu, n, w, ldw, dots, sq);
    default: return centred_dots<4>(x, mu, n, w, ldw, dots, sq);
  }
}

LITELVLM_INLINE float vdot(const float* x, const float* y, int64_t n) {
  Vec a0 = vsplat(0.f), a1 = vsplat(0.f);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    a0 = muladd(vload(x + i), vload(y + i), a0);
    a1 = muladd(vload(x + i + kLanes), vload(y + i + kLanes), a1);
  }
  for (; i + kLanes <= n; i += kLanes) a0 = muladd(vload(x + i), vload(y + i), a0);
  float s = hsum(a0 + a1);
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

// k . q and k . k in one pass over k.
LITELVLM_INLINE void dot_and_square(const float* k, const float* q, int64_t n, float* kq, float* kk) {
  Vec a = vsplat(0.f), b = vsplat(0.f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Vec kv = vload(k + i);
    a = muladd(kv, vload(q + i), a);
    b = muladd(kv, kv, b);
  }
  float sa = hsum(a), sb = hsum(b);
  for (; i < n; ++i) {
    sa += k[i] * q[i];
    sb += k[i] * k[i];
  }
  *kq = sa;
  *kk = sb;
}

// One strided [B, M, C] input: where row (b, j) starts and how to read it.
struct RowSource {
  const char* data;
  int64_t s0, s1, s2;  // strides in bytes (s0, s1) and elements (s2)
  int64_t n;           // C
  RowLoader load;

  LITELVLM_INLINE const float* row(int64_t b, int64_t j, float* buf) const { return load(data + b * s0 + j * s1, s2, n, buf); }
};

// s_tj = ((x_j - mu_j) . w_t) / sigma_j + b_t for 1 <= T; out[t * out_stride] for text t.
// w: T rows of Dv fp32 (contiguous), bias: T fp32. buf: Dv floats (used for non-fp32 or strided rows).
// Two passes over x_j: its mean, then the variance with the first 4 texts' dots (then 4 texts per pass).
LITELVLM_INLINE void similarity_token(const RowSource& hidden, int64_t b, int64_t j, const float* w, const float* bias,
                             int64_t T, float eps, float* buf, float* out, int64_t out_stride) {
  const int64_t Dv = hidden.n;
  const float* x = hidden.row(b, j, buf);
  const float mu = Dv > 0 ? vsum(x, Dv) / static_cast<float>(Dv) : 0.f;
  float dots[4], sq = 0.f, sigma = 1.f;
  for (int64_t t0 = 0; t0 < T; t0 += 4) {
    const int64_t nt = std::min<int64_t>(4, T - t0);
    centred_dots_n(nt, x, mu, Dv, w + t0 * Dv, Dv, dots, t0 == 0 ? &sq : nullptr);
    if (t0 == 0) sigma = std::sqrt((Dv > 0 ? sq / static_cast<float>(Dv) : 0.f) + eps);  // biased, as layer_norm
    for (int64_t q = 0; q < nt; ++q) out[(t0 + q) * out_stride] = dots[q] / sigma + bias[t0 + q];
  }
}

// The [CLS] logit q_hat . k_hat_j (F.normalize's convention: ||k|| clamped to 1e-12) and ||v_j||.
// q_hat: D fp32. buf: 2 * D floats.
LITELVLM_INLINE void contribution_token(const RowSource& keys, const RowSource& values, int64_t b, int64_t j,
                               const float* q_hat, float* buf, float* logit, float* vnorm) {
  const int64_t D = keys.n;
  float kq, kk;
  dot_and_square(keys.row(b, j, buf), q_hat, D, &kq, &kk);
  *logit = kq / std::max(std::sqrt(kk), 1e-12f);
  const float* v = values.row(b, j, buf + D);
  *vnorm = std::sqrt(vdot(v, v, D));
}

// c_j = softmax_j(scale * logit_j) * ||v_j||, the way torch.softmax computes it (max, exp(z - max),
// sum, divide): a NaN anywhere makes the whole row NaN. `c` may alias `logit`.
inline void contribution_row(const float* logit, const float* vnorm, float scale, int64_t M, float* c) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < M; ++j) {
    const float z = scale * logit[j];
    if (std::isnan(z)) {
      m = z;
      break;
    }
    if (z > m) m = z;
  }
  float sum = 0.f;
  for (int64_t j = 0; j < M; ++j) {
    c[j] = std::exp(scale * logit[j] - m);
    sum += c[j];
  }
  for (int64_t j = 0; j < M; ++j) c[j] = (c[j] / sum) * vnorm[j];
}

}  // namespace litelvlm
