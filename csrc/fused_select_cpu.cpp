// CPU kernels of the selection ops (schemas: litelvlm.cpp). Each kernel validates its arguments
// once (select_checks.h), then, in ONE parallel region per call:
//
//   scores: one pass per token over hidden (T folded similarities) and over key and value
//     ([CLS] logit, ||v_j||), fp32 accumulation, into a small fp32 scratch ([B, T + 2, M]);
//   rows: softmax -> contribution, then the selection (select_rank.h).
//
// With at least as many rows as threads, each thread takes whole rows (scores then selection:
// the row's scratch stays in its cache); with fewer (B = 1), the tokens are split across threads
// and the few rows are then selected one after another. One region, not two: waking the pool
// costs a few us on a quiet machine and a scheduler slice (ms) on a loaded one.
// The inputs (7 MB per ViT-L/14-336 image in fp32) are read once; the scratch is 7 KB per row.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mul.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "select_checks.h"
#include "select_rank.h"
#include "select_scores.h"

namespace litelvlm {
namespace {

using at::Tensor;

// Smallest token range per task: ~64 KiB of input, so an OpenMP region (a few us) never costs
// more than the work it splits, and tiny inputs (M = 16: 3 KiB) run inline on the caller.
int64_t token_grain(int64_t bytes_per_token) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(bytes_per_token, 1));
}

// Scores of all B x M tokens (tokens(begin, end) over the flattened [B, M]), then row(b) for every
// row, in one parallel region: whole rows per thread when B >= threads, else tokens split across
// threads and the rows done in order afterwards.
template <class Tokens, class Row>
void tokens_then_rows(int64_t B, int64_t M, int64_t bytes_per_token, const Tokens& tokens, const Row& row) {
  const int64_t grain = token_grain(bytes_per_token);
  if (B >= at::get_num_threads()) {
    at::parallel_for(0, B, std::max<int64_t>(1, grain / std::max<int64_t>(M, 1)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        tokens(b * M, (b + 1) * M);
        row(b);
      }
    });
  } else {
    at::parallel_for(0, B * M, grain, tokens);
    for (int64_t b = 0; b < B; ++b) row(b);
  }
}

RowSource source(const Tensor& t) {
  const int64_t item = t.element_size();
  return RowSource{static_cast<const char*>(t.const_data_ptr()), t.stride(0) * item, t.stride(1) * item,
                   t.stride(2), t.size(2), row_loader(t.scalar_type())};
}

// Folded text as contiguous fp32 (a no-op for fp32 contiguous w, b: what fold_text returns).
struct Text {
  Tensor w32, b32;  // owners of the data below
  const float* w;
  const float* b;
  int64_t T, Dv;
  bool shared;  // Bt = 1: one text for every row
  const float* w_row(int64_t row) const { return w + (shared ? 0 : row) * T * Dv; }
  const float* b_row(int64_t row) const { return b + (shared ? 0 : row) * T; }
};

Text folded_text(const Tensor& w, const Tensor& b) {
  Tensor w32 = w.to(at::kFloat).contiguous(), b32 = b.to(at::kFloat).contiguous();
  const float* wp = w32.const_data_ptr<float>();
  const float* bp = b32.const_data_ptr<float>();
  return Text{std::move(w32), std::move(b32), wp, bp, w.size(1), w.size(2), w.size(0) == 1};
}

// q_hat = q / max(||q||, 1e-12) per row, fp32 [B, D].
std::vector<float> normalised_queries(const Tensor& q_cls) {
  const int64_t B = q_cls.size(0), D = q_cls.size(1);
  std::vector<float> q_hat(static_cast<size_t>(B * D));
  const RowLoader load = row_loader(q_cls.scalar_type());
  const char* data = static_cast<const char*>(q_cls.const_data_ptr());
  const int64_t item = q_cls.element_size();
  for (int64_t b = 0; b < B; ++b) {
    float* out = q_hat.data() + b * D;
    const float* q = load(data + b * q_cls.stride(0) * item, q_cls.stride(1), D, out);
    const float norm = std::max(std::sqrt(vdot(q, q, D)), 1e-12f);
    for (int64_t i = 0; i < D; ++i) out[i] = q[i] / norm;
  }
  return q_hat;
}

// Texts in use per row: num_texts clamped to [0, T] (docs/design.md section 2), default T.
int64_t row_texts(const std::optional<Tensor>& num_texts, int64_t b, int64_t T) {
  if (!num_texts.has_value()) return T;
  const Tensor& n = *num_texts;
  const int64_t v = n.scalar_type() == at::kInt ? n.const_data_ptr<int32_t>()[b * n.stride(0)]
                                                 : n.const_data_ptr<int64_t>()[b * n.stride(0)];
  return std::clamp<int64_t>(v, 0, T);
}

// Phase 1 over the tokens [begin, end) of the flattened [B, M]: similarities into s [B, T, M]
// (when text is given) and logits / value norms into lv [B, 2, M] (when keys are given).
LITELVLM_SIMD_CLONES void score_tokens(int64_t begin, int64_t end, int64_t M, const RowSource* hidden,
                                       const Text* text, float eps, float* s, const RowSource* keys,
                                       const RowSource* values, const float* q_hat, float* lv) {
  const int64_t width = std::max(hidden ? hidden->n : 0, keys ? keys->n : 0);
  std::vector<float> buf(static_cast<size_t>(2 * width));  // rows converted from fp16 / bf16 or strided
  for (int64_t i = begin; i < end; ++i) {
    const int64_t b = i / M, j = i - b * M;
    if (hidden && text->T > 0) {
      similarity_token(*hidden, b, j, text->w_row(b), text->b_row(b), text->T, eps, buf.data(),
                       s + b * text->T * M + j, M);
    }
    if (keys) {
      contribution_token(*keys, *values, b, j, q_hat + b * keys->n, buf.data(), lv + 2 * b * M + j,
                         lv + 2 * b * M + M + j);
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> selection_outputs(const Tensor& like, int64_t B, int64_t r) {
  return {at::empty({B, r}, like.options().dtype(at::kLong)), at::empty({B}, like.options().dtype(at::kInt)),
          at::empty({B, r}, like.options().dtype(at::kBool))};
}

// The selection of row b from its scores s_row [T, M] and contributions c_row [M] (fp32).
struct Selection {
  int64_t T, M, r, min_votes, k_per_text;
  bool spatial;
  const std::optional<Tensor>* num_texts;
  int64_t* idx;
  int32_t* nsim;
  bool* from;

  Selection(int64_t T_, int64_t M, int64_t num_retain, int64_t min_votes_, int64_t k_per_text_, bool spatial_,
            const std::optional<Tensor>& num_texts_, std::tuple<Tensor, Tensor, Tensor>& out)
      : T(T_), M(M), r(clamp_retain(num_retain, M)), min_votes(min_votes_), k_per_text(k_per_text_),
        spatial(spatial_), num_texts(&num_texts_), idx(std::get<0>(out).data_ptr<int64_t>()),
        nsim(std::get<1>(out).data_ptr<int32_t>()), from(std::get<2>(out).data_ptr<bool>()) {}

  void operator()(int64_t b, const float* s_row, const float* c_row) const {
    thread_local RowScratch scratch;  // grown once per thread, reused by every later row and call
    const int64_t n = row_texts(*num_texts, b, T);
    const RowSpec spec{M, n, r, tokens_per_text(k_per_text, M, r, n), min_votes, spatial};
    select_row(s_row, M, c_row, spec, scratch, idx + b * r, from + b * r, nsim + b);
  }
};

// -- kernels -----------------------------------------------------------------------------

// w = gamma * (W^T e), b = beta . (W^T e) [+ e . proj_bias] (docs/design.md sections 3.1, 3.5), fp32; the
// bias term is added last, in the same order in every implementation (reference.py, _torch_select.py).
std::tuple<Tensor, Tensor> fold_text_cpu(const Tensor& text_embeds, const Tensor& proj_weight,
                                         const Tensor& ln_weight, const Tensor& ln_bias,
                                         const std::optional<Tensor>& proj_bias) {
  check_fold_inputs(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias);
  const Tensor e = text_embeds.to(at::kFloat);
  const Tensor u = at::matmul(e, proj_weight.to(at::kFloat));  // [Bt, T, Dv]
  Tensor b = at::matmul(u, ln_bias.to(at::kFloat));            // [Bt, T]
  if (proj_bias.has_value()) b = at::add(b, at::matmul(e, proj_bias->to(at::kFloat)));
  return {at::mul(u, ln_weight.to(at::kFloat)), b};
}

Tensor text_similarity_cpu(const Tensor& hidden, const Tensor& w, const Tensor& b, double ln_eps) {
  check_similarity_inputs(hidden, w, b, ln_eps);
  const int64_t B = hidden.size(0), M = hidden.size(1), T = w.size(1);
  Tensor s = at::empty({B, T, M}, hidden.options().dtype(at::kFloat));
  if (B * M == 0 || T == 0) return s;
  const Text text = folded_text(w, b);
  const RowSource h = source(hidden);
  float* out = s.data_ptr<float>();
  at::parallel_for(0, B * M, token_grain(h.n * hidden.element_size()), [&](int64_t begin, int64_t end) {
    score_tokens(begin, end, M, &h, &text, static_cast<float>(ln_eps), out, nullptr, nullptr, nullptr, nullptr);
  });
  return s;
}

Tensor cls_contribution_cpu(const Tensor& q_cls, const Tensor& keys, const Tensor& values,
                            std::optional<double> scale) {
  check_contribution_inputs(q_cls, keys, values);
  const int64_t B = keys.size(0), M = keys.size(1), D = keys.size(2);
  Tensor c = at::empty({B, M}, keys.options().dtype(at::kFloat));
  if (B * M == 0) return c;
  const float sc = static_cast<float>(scale.value_or(default_scale(D)));
  const std::vector<float> q_hat = normalised_queries(q_cls);
  const RowSource k = source(keys), v = source(values);
  std::vector<float> lv(static_cast<size_t>(2 * B * M));  // per row: logits, ||v||
  float* out = c.data_ptr<float>();
  tokens_then_rows(
      B, M, D * (keys.element_size() + values.element_size()),
      [&](int64_t begin, int64_t end) {
        score_tokens(begin, end, M, nullptr, nullptr, 0.f, nullptr, &k, &v, q_hat.data(), lv.data());
      },
      [&](int64_t b) { contribution_row(&lv[2 * b * M], &lv[2 * b * M + M], sc, M, out + b * M); });
  return c;
}

std::tuple<Tensor, Tensor, Tensor> select_tokens_cpu(const Tensor& s, const Tensor& c, int64_t num_retain,
                                                     int64_t min_votes, int64_t k_per_text, std::string_view order,
                                                     const std::optional<Tensor>& num_texts) {
  check_scores(s, c, num_texts);
  const int64_t B = s.size(0), T = s.size(1), M = s.size(2);
  check_select_args(T, M, num_retain, min_votes, k_per_text);
  const bool spatial = parse_order(order);
  auto out = selection_outputs(s, B, clamp_retain(num_retain, M));
  if (B == 0) return out;
  // Exact fp32 copies of fp16 / bf16 scores (the reference's .float()); fp32 contiguous: no copy.
  const Tensor s32 = s.to(at::kFloat).contiguous(), c32 = c.to(at::kFloat).contiguous();
  const float* sp = s32.const_data_ptr<float>();
  const float* cp = c32.const_data_ptr<float>();
  const Selection select(T, M, num_retain, min_votes, k_per_text, spatial, num_texts, out);
  // The selection of a row costs about (T + 2) M key operations: ~16k per task.
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>((T + 2) * M, 1)),
                   [&](int64_t b0, int64_t b1) {
                     for (int64_t b = b0; b < b1; ++b) select(b, sp + b * T * M, cp + b * M);
                   });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> fused_select_cpu(const Tensor& hidden, const Tensor& w, const Tensor& b,
                                                    double ln_eps, const Tensor& q_cls, const Tensor& keys,
                                                    const Tensor& values, int64_t num_retain, int64_t min_votes,
                                                    int64_t k_per_text, std::string_view order,
                                                    const std::optional<Tensor>& num_texts,
                                                    std::optional<double> scale) {
  check_fused_inputs(hidden, w, b, ln_eps, q_cls, keys, values, num_texts);
  const int64_t B = hidden.size(0), M = hidden.size(1), T = w.size(1), D = keys.size(2);
  check_select_args(T, M, num_retain, min_votes, k_per_text);
  const bool spatial = parse_order(order);
  auto out = selection_outputs(hidden, B, clamp_retain(num_retain, M));
  if (B == 0) return out;
  if (clamp_retain(num_retain, M) == 0) {  // nothing to keep (then T = 0): |S| = 0 for every row
    std::get<1>(out).zero_();
    return out;
  }
  const Text text = folded_text(w, b);
  const std::vector<float> q_hat = normalised_queries(q_cls);
  const RowSource h = source(hidden), k = source(keys), v = source(values);
  // Scratch per row: T similarity rows, then the logits (overwritten by c) and ||v||.
  std::vector<float> s(static_cast<size_t>(B * T * M)), lv(static_cast<size_t>(2 * B * M));
  const int64_t bytes = h.n * hidden.element_size() + D * (keys.element_size() + values.element_size());
  const float sc = static_cast<float>(scale.value_or(default_scale(D)));
  const Selection select(T, M, num_retain, min_votes, k_per_text, spatial, num_texts, out);
  tokens_then_rows(
      B, M, bytes,
      [&](int64_t begin, int64_t end) {
        score_tokens(begin, end, M, &h, &text, static_cast<float>(ln_eps), s.data(), &k, &v, q_hat.data(),
                     lv.data());
      },
      [&](int64_t b) {
        float* c_row = &lv[2 * b * M];  // c overwrites the logits
        contribution_row(c_row, c_row + M, sc, M, c_row);
        select(b, &s[b * T * M], c_row);
      });
  return out;
}

}  // namespace
}  // namespace litelvlm

TORCH_LIBRARY_IMPL(litelvlm, CPU, m) {
  m.impl("fold_text", &litelvlm::fold_text_cpu);
  m.impl("text_similarity", &litelvlm::text_similarity_cpu);
  m.impl("cls_contribution", &litelvlm::cls_contribution_cpu);
  m.impl("select_tokens", &litelvlm::select_tokens_cpu);
  m.impl("fused_select", &litelvlm::fused_select_cpu);
}
