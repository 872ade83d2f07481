// Argument checks of the selection ops, C++ side: every rule written once here, run once per
// call by the CPU kernels (fused_select_cpu.cpp) before any work.
//
// The same rules, once, in Python: litelvlm_kernels/_validate.py, run by the fake impls and
// by the kernels registered from Python (CUDA/Triton, and the torch-composed default of other
// devices). A call runs exactly one backend kernel, so each rule runs once per call. They read
// shapes, dtypes and devices only (never tensor data: no host synchronisation). Errors are
// ValueError / TypeError in Python (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE) and name the argument,
// in the words of _validate.py. Rules: docs/design.md sections 2 and 4.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>

namespace litelvlm {

// The release's [CLS] softmax scale: 1/sqrt(D), D the full q/k width (docs/design.md section 1).
inline double default_scale(int64_t D) { return D > 0 ? 1.0 / std::sqrt(static_cast<double>(D)) : 1.0; }

// R' = min(R, M).
inline int64_t clamp_retain(int64_t num_retain, int64_t M) { return num_retain < M ? num_retain : M; }

// "official" -> false, "spatial" -> true; anything else raises ValueError naming `order`.
bool parse_order(std::string_view order);

// num_retain >= 0, min_votes >= 0, k_per_text >= 0, order, and the shape-only rules of
// docs/design.md section 2 (T > R'; with an explicit k_per_text, |S| <= R').
void check_select_args(int64_t T, int64_t M, int64_t num_retain, int64_t min_votes, int64_t k_per_text);

void check_fold_inputs(const at::Tensor& text_embeds, const at::Tensor& proj_weight, const at::Tensor& ln_weight,
                       const at::Tensor& ln_bias, const std::optional<at::Tensor>& proj_bias);
void check_similarity_inputs(const at::Tensor& hidden, const at::Tensor& w, const at::Tensor& b, double ln_eps);
void check_contribution_inputs(const at::Tensor& q_cls, const at::Tensor& keys, const at::Tensor& values);
void check_scores(const at::Tensor& s, const at::Tensor& c, const std::optional<at::Tensor>& num_texts);
void check_fused_inputs(const at::Tensor& hidden, const at::Tensor& w, const at::Tensor& b, double ln_eps,
                        const at::Tensor& q_cls, const at::Tensor& keys, const at::Tensor& values,
                        const std::optional<at::Tensor>& num_texts);

}  // namespace litelvlm
