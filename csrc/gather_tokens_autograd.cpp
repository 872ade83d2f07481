// Autograd kernel of litelvlm::gather_tokens (backend independent).
//
// In C++ rather than torch.library.register_autograd because a Python autograd
// kernel runs on every call made with grad mode on, even when no input requires
// grad, and cost more than a whole small gather (numbers in docs/gather.md).
// The backward (a scatter-add of grad_out into zeros [B, M, C]) is described
// in docs/gather.md, "Autograd"; it is composed of ATen ops, so it is itself
// differentiable and traceable with symbolic sizes.

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace litelvlm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_gather(const at::Tensor& tokens, const at::Tensor& indices) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("litelvlm::gather_tokens", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(tokens, indices);
}

class GatherTokens : public torch::autograd::Function<GatherTokens> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& tokens,
                            const at::Tensor& indices) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = call_gather(tokens, indices);
    ctx->save_for_backward({indices});
    ctx->saved_data["num_tokens"] = tokens.sym_size(1);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor indices = ctx->get_saved_variables()[0];
    const c10::SymInt num_tokens = ctx->saved_data["num_tokens"].toSymInt();
    const at::Tensor& grad = grad_outputs[0];
    const at::Tensor index = indices.to(at::kLong).unsqueeze(-1).expand_symint(grad.sym_sizes());
    at::Tensor grad_tokens =
        at::zeros_symint({grad.sym_size(0), num_tokens, grad.sym_size(2)}, grad.options())
            .scatter_add(1, index, grad);
    return {grad_tokens, at::Tensor()};
  }
};

at::Tensor gather_tokens_autograd(const at::Tensor& tokens, const at::Tensor& indices) {
  // Function::apply has a fixed cost even when nothing needs a graph (docs/gather.md):
  // skip it when no gradient, reverse or forward mode, can flow.
  if (!(at::GradMode::is_enabled() && tokens.requires_grad()) && !tokens._fw_grad(0).defined()) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_gather(tokens, indices);
  }
  return GatherTokens::apply(tokens, indices);
}

}  // namespace

TORCH_LIBRARY_IMPL(litelvlm, Autograd, m) {
  m.impl("gather_tokens", &gather_tokens_autograd);
}

}  // namespace litelvlm
