// The C++ argument checks of the selection ops (see select_checks.h for why they live here).
#include "select_checks.h"

#include <c10/util/Exception.h>

#include <initializer_list>
#include <string>
#include <utility>

namespace litelvlm {
namespace {

// Python's spelling of a dtype, so that messages read the same from C++ and from _validate.py.
std::string py_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kDouble: return "torch.float64";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

bool is_float(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_float_tensor(const char* name, const at::Tensor& t, int64_t ndim) {
  TORCH_CHECK_VALUE(t.dim() == ndim, name, " must have ", ndim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK_TYPE(is_float(t.scalar_type()), name,
                   " must have dtype in ['torch.float32', 'torch.float16', 'torch.bfloat16'], got ",
                   py_dtype(t.scalar_type()));
}

void check_same_device(std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const auto& first = *tensors.begin();
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK_VALUE(t->device() == first.second->device(), name, " is on ", t->device(), " but ", first.first,
                      " is on ", first.second->device(), ": all inputs must share a device");
  }
}

void check_num_texts(const std::optional<at::Tensor>& num_texts, int64_t B) {
  if (!num_texts.has_value()) return;
  const at::Tensor& n = *num_texts;
  TORCH_CHECK_VALUE(n.dim() == 1, "num_texts must have 1 dimensions, got shape ", n.sizes());
  TORCH_CHECK_TYPE(n.scalar_type() == at::kInt || n.scalar_type() == at::kLong,
                   "num_texts must have dtype in ['torch.int32', 'torch.int64'], got ", py_dtype(n.scalar_type()));
  TORCH_CHECK_VALUE(n.size(0) == B, "num_texts must have shape [B]=[", B, "], got ", n.sizes());
}

// w [Bt, T, Dv], b [Bt, T], Bt in {1, B}; Dv < 0: not checked.
void check_folded(const at::Tensor& w, const at::Tensor& b, int64_t B, int64_t Dv) {
  check_float_tensor("w", w, 3);
  check_float_tensor("b", b, 2);
  TORCH_CHECK_VALUE(b.size(0) == w.size(0) && b.size(1) == w.size(1), "b must have shape [Bt, T]=[", w.size(0),
                    ", ", w.size(1), "], got ", b.sizes());
  TORCH_CHECK_VALUE(w.size(0) == 1 || w.size(0) == B, "w/b batch Bt=", w.size(0),
                    " must be 1 (shared text) or B=", B, " (hidden's batch)");
  TORCH_CHECK_VALUE(Dv < 0 || w.size(2) == Dv, "w must have last dimension Dv=", Dv, " (hidden's), got ",
                    w.size(2));
}

}  // namespace

bool parse_order(std::string_view order) {
  if (order == "official") return false;
  if (order == "spatial") return true;
  TORCH_CHECK_VALUE(false, "order must be one of ('official', 'spatial'), got '", std::string(order), "'");
  return false;
}

void check_select_args(int64_t T, int64_t M, int64_t num_retain, int64_t min_votes, int64_t k_per_text) {
  TORCH_CHECK_VALUE(num_retain >= 0, "num_retain must be >= 0, got ", num_retain);
  TORCH_CHECK_VALUE(min_votes >= 0, "min_votes must be an int >= 0 (0 = intersection), got ", min_votes);
  TORCH_CHECK_VALUE(k_per_text >= 0, "k_per_text must be an int >= 0 (0 = R' // num_texts), got ", k_per_text);
  const int64_t r = clamp_retain(num_retain, M);
  TORCH_CHECK_VALUE(T <= r, "number of texts T=", T, " exceeds the clamped budget R'=min(num_retain=", num_retain,
                    ", M=", M, ")=", r, ": some row could keep k = 0 tokens per text");
  if (k_per_text > 0) {
    const int64_t k = k_per_text < M ? k_per_text : M;
    TORCH_CHECK_VALUE(k * T <= r * (min_votes > 1 ? min_votes : 1), "k_per_text=", k_per_text, " x T=", T,
                      " exceeds R'=", r, " x max(1, min_votes=", min_votes,
                      "): the similarity set could exceed the budget");
    TORCH_CHECK_VALUE(!(min_votes == 0 && k > r), "k_per_text=", k_per_text, " exceeds R'=", r,
                      " for intersection (min_votes=0)");
  }
}

void check_fold_inputs(const at::Tensor& text_embeds, const at::Tensor& proj_weight, const at::Tensor& ln_weight,
                       const at::Tensor& ln_bias, const std::optional<at::Tensor>& proj_bias) {
  check_float_tensor("text_embeds", text_embeds, 3);
  check_float_tensor("proj_weight", proj_weight, 2);
  check_float_tensor("ln_weight", ln_weight, 1);
  check_float_tensor("ln_bias", ln_bias, 1);
  const int64_t P = proj_weight.size(0), Dv = proj_weight.size(1);
  TORCH_CHECK_VALUE(text_embeds.size(2) == P, "text_embeds last dimension ", text_embeds.size(2),
                    " must equal proj_weight's P=", P, " (proj_weight is [P, Dv], nn.Linear layout)");
  TORCH_CHECK_VALUE(ln_weight.size(0) == Dv && ln_bias.size(0) == Dv, "ln_weight ", ln_weight.sizes(),
                    " and ln_bias ", ln_bias.sizes(), " must be [Dv] with Dv=", Dv, " from proj_weight ",
                    proj_weight.sizes(), " ([P, Dv])");
  check_same_device({{"text_embeds", &text_embeds}, {"proj_weight", &proj_weight}, {"ln_weight", &ln_weight},
                     {"ln_bias", &ln_bias}});
  if (!proj_bias.has_value()) return;
  const at::Tensor& c = *proj_bias;
  check_float_tensor("proj_bias", c, 1);
  TORCH_CHECK_VALUE(c.size(0) == P, "proj_bias must have shape [P]=[", P, "] from proj_weight ", proj_weight.sizes(),
                    " ([P, Dv]), got ", c.sizes());
  check_same_device({{"text_embeds", &text_embeds}, {"proj_bias", &c}});
}

void check_similarity_inputs(const at::Tensor& hidden, const at::Tensor& w, const at::Tensor& b, double ln_eps) {
  check_float_tensor("hidden", hidden, 3);
  check_folded(w, b, hidden.size(0), hidden.size(2));
  TORCH_CHECK_VALUE(ln_eps >= 0, "ln_eps must be a float >= 0, got ", ln_eps);  // NaN fails too
  check_same_device({{"hidden", &hidden}, {"w", &w}, {"b", &b}});
}

void check_contribution_inputs(const at::Tensor& q_cls, const at::Tensor& keys, const at::Tensor& values) {
  check_float_tensor("q_cls", q_cls, 2);
  check_float_tensor("keys", keys, 3);
  check_float_tensor("values", values, 3);
  TORCH_CHECK_VALUE(keys.sizes() == values.sizes(), "keys ", keys.sizes(), " and values ", values.sizes(),
                    " must have the same shape");
  TORCH_CHECK_VALUE(q_cls.size(0) == keys.size(0) && q_cls.size(1) == keys.size(2), "q_cls must have shape [B, D]=[",
                    keys.size(0), ", ", keys.size(2), "], got ", q_cls.sizes());
  check_same_device({{"q_cls", &q_cls}, {"keys", &keys}, {"values", &values}});
}

void check_scores(const at::Tensor& s, const at::Tensor& c, const std::optional<at::Tensor>& num_texts) {
  check_float_tensor("s", s, 3);
  check_float_tensor("c", c, 2);
  TORCH_CHECK_VALUE(s.size(0) == c.size(0) && s.size(2) == c.size(1), "s [B, T, M]=", s.sizes(), " and c [B, M]=",
                    c.sizes(), " disagree on B or M");
  check_num_texts(num_texts, s.size(0));
  if (num_texts.has_value()) check_same_device({{"s", &s}, {"c", &c}, {"num_texts", &*num_texts}});
  else check_same_device({{"s", &s}, {"c", &c}});
}

void check_fused_inputs(const at::Tensor& hidden, const at::Tensor& w, const at::Tensor& b, double ln_eps,
                        const at::Tensor& q_cls, const at::Tensor& keys, const at::Tensor& values,
                        const std::optional<at::Tensor>& num_texts) {
  check_similarity_inputs(hidden, w, b, ln_eps);
  check_contribution_inputs(q_cls, keys, values);
  TORCH_CHECK_VALUE(hidden.size(0) == keys.size(0) && hidden.size(1) == keys.size(1), "hidden ", hidden.sizes(),
                    " and keys ", keys.sizes(), " must agree on [B, M]");
  check_num_texts(num_texts, hidden.size(0));
  if (num_texts.has_value()) check_same_device({{"hidden", &hidden}, {"keys", &keys}, {"num_texts", &*num_texts}});
  else check_same_device({{"hidden", &hidden}, {"keys", &keys}});
}

}  // namespace litelvlm
