// The selection of one row (docs/design.md section 2), shared by the CPU kernels of
// select_tokens (scores given) and fused_select (scores computed in the same call).
//
// Rankings use unique 64-bit keys: the high 32 bits are an order-preserving image of the fp32
// score, the low 32 bits the token index. Comparing keys therefore applies the tie rule (lower
// index first) and the special-value order in one integer comparison, and std::nth_element
// (O(M)) finds a bottom-k set with no float comparisons, so NaN cannot break the ordering.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <c10/util/Exception.h>

namespace litelvlm {

// Order-preserving image of a float for bottom-k: -inf < finite < +inf < NaN, -0.0 == +0.0,
// every NaN one value above +inf (0xFF800000).
inline uint32_t ascending_bits(float x) {
  if (std::isnan(x)) return 0xFFC00000u;
  if (x == 0.0f) x = 0.0f;  // -0.0 ties with +0.0
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// For recovery, ascending key = descending score: +inf > finite > -inf > NaN (NaN last).
inline uint32_t descending_bits(float x) { return std::isnan(x) ? 0xFFFFFFFFu : ~ascending_bits(x); }

inline uint64_t make_key(uint32_t bits, int64_t j) { return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(j); }
inline int64_t key_index(uint64_t key) { return static_cast<int64_t>(key & 0xFFFFFFFFu); }

// What one row of the selection needs besides its scores.
struct RowSpec {
  int64_t M;          // tokens
  int64_t n;          // texts in use for this row, already clamped to [0, T]
  int64_t r;          // R' = min(R, M)
  int64_t k;          // tokens per text (k_per_text clamped to M, or R' // n)
  int64_t min_votes;  // 0 = all n texts (intersection)
  bool spatial;       // order="spatial" (else "official")
};

// Per-thread working memory, reused across the rows a thread handles.
struct RowScratch {
  std::vector<uint64_t> keys;
  std::vector<int32_t> votes;
  std::vector<uint8_t> mark;  // 1: in S, 2: recovered context token
  void reserve(int64_t M) {
    keys.resize(M);
    votes.resize(M);
    mark.resize(M);
  }
};

// s: n rows of M fp32 scores, row t at s + t * s_stride (contiguous in M); c: M fp32 contributions.
// Writes R' indices, R' from-similarity flags and |S|.
inline void select_row(const float* s, int64_t s_stride, const float* c, const RowSpec& spec, RowScratch& w,
                       int64_t* out_idx, bool* out_from, int32_t* out_nsim) {
  const int64_t M = spec.M, r = spec.r;
  w.reserve(M);
  uint64_t* keys = w.keys.data();
  int32_t* votes = w.votes.data();
  uint8_t* mark = w.mark.data();
  std::fill(votes, votes + M, 0);
  std::fill(mark, mark + M, 0);

  // Similarity set S: the k lowest keys of each text vote; S = tokens with >= need votes.
  int64_t nsim = 0;
  if (spec.n > 0 && spec.k > 0) {
    for (int64_t t = 0; t < spec.n; ++t) {
      const float* st = s + t * s_stride;
      for (int64_t j = 0; j < M; ++j) keys[j] = make_key(ascending_bits(st[j]), j);
      if (spec.k < M) std::nth_element(keys, keys + spec.k, keys + M);  // keys[0, k): the k lowest
      for (int64_t i = 0; i < spec.k; ++i) ++votes[key_index(keys[i])];
    }
    const int64_t need = spec.min_votes == 0 ? spec.n : spec.min_votes;
    for (int64_t j = 0; j < M; ++j) {
      if (votes[j] >= need) {
        mark[j] = 1;
        ++nsim;
      }
    }
  }
  // The shape checks guarantee |S| <= R' (docs/design.md section 2); keep memory safe regardless.
  TORCH_INTERNAL_ASSERT(nsim <= r, "litelvlm: similarity set of ", nsim, " tokens exceeds R'=", r);

  // Recovery: the R' - |S| largest contributions outside S, falling, ties to the lower index.
  const int64_t nctx = r - nsim;
  int64_t cnt = 0;
  for (int64_t j = 0; j < M; ++j) {
    if (!mark[j]) keys[cnt++] = make_key(descending_bits(c[j]), j);
  }
  if (nctx < cnt) std::nth_element(keys, keys + nctx, keys + cnt);
  std::sort(keys, keys + nctx);

  if (!spec.spatial) {  // official: context by falling contribution, then S ascending
    for (int64_t i = 0; i < nctx; ++i) {
      out_idx[i] = key_index(keys[i]);
      out_from[i] = false;
    }
    int64_t p = nctx;
    for (int64_t j = 0; j < M && p < r; ++j) {
      if (mark[j] == 1) {
        out_idx[p] = j;
        out_from[p++] = true;
      }
    }
  } else {  // spatial: every kept index ascending
    for (int64_t i = 0; i < nctx; ++i) mark[key_index(keys[i])] = 2;
    int64_t p = 0;
    for (int64_t j = 0; j < M && p < r; ++j) {
      if (mark[j]) {
        out_idx[p] = j;
        out_from[p++] = mark[j] == 1;
      }
    }
  }
  *out_nsim = static_cast<int32_t>(nsim);
}

// Tokens per text of a row: k_per_text clamped to M, else R' // n (0 when the row has no text).
inline int64_t tokens_per_text(int64_t k_per_text, int64_t M, int64_t r, int64_t n) {
  if (k_per_text > 0) return k_per_text < M ? k_per_text : M;
  return n > 0 ? r / n : 0;
}

}  // namespace litelvlm
