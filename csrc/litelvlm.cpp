// The `litelvlm` operator library: every schema of the namespace, and the Python module stub.
//
// Each schema is written once, here (docs/design.md section 4 lists them). Kernels register per
// backend elsewhere: the CPU kernels in C++ (fused_select_cpu.cpp, gather_tokens.cpp), the CUDA
// gather in csrc/cuda/, the Triton CUDA kernels and the torch-composed default of the selection
// ops from Python (litelvlm_kernels/ops/), with the fake (meta) impls beside them. The strings
// are the ones torch.library.custom_op inferred when these ops were Python ops (int -> SymInt),
// so the public schemas did not change when they moved here.
//
// No torch/extension.h (pybind11) here: `_C` only needs to be an importable
// module whose loading runs the static registrations below. A hand-written
// PyInit__C with the limited C API builds in ~17 s instead of ~40 s on 2 cores
// and gives one abi3 .so for every Python >= 3.9 (setup.py: py_limited_api=True).

#include <Python.h>

#include <ATen/FunctionalTensorWrapper.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

extern "C" {
// Importing `litelvlm_kernels._C` loads this shared library, which runs the
// TORCH_LIBRARY / TORCH_LIBRARY_IMPL static initialisers; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "litelvlm_kernels C++/CUDA operators; use torch.ops.litelvlm.*",  // doc
      -1,    // no per-interpreter state
      nullptr,  // no methods: everything is reached through torch.ops
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(litelvlm, m) {
  // Selection ops (docs/design.md sections 1-4). Shapes: text_embeds [Bt, T, P], proj_weight
  // [P, Dv], hidden [B, M, Dv], w [Bt, T, Dv], b [Bt, T], q_cls [B, D], keys / values [B, M, D],
  // s [B, T, M], c [B, M], num_texts [B]; Bt in {1, B}. Outputs: w, b, s, c fp32; indices
  // [B, R'] int64, num_similarity [B] int32, from_similarity [B, R'] bool, R' = min(R, M).
  // proj_bias [P] (optional, default None): the constant of an affine head, W_o b_v + b_o for SigLIP's
  // attention-pooling head (docs/design.md section 3.5); b_t gains e_t . proj_bias.
  m.def("fold_text(Tensor text_embeds, Tensor proj_weight, Tensor ln_weight, Tensor ln_bias, "
        "Tensor? proj_bias=None) -> (Tensor, Tensor)");
  m.def("text_similarity(Tensor hidden, Tensor w, Tensor b, float ln_eps) -> Tensor");
  m.def("cls_contribution(Tensor q_cls, Tensor keys, Tensor values, float? scale=None) -> Tensor");
  m.def("select_tokens(Tensor s, Tensor c, SymInt num_retain, SymInt min_votes=1, SymInt k_per_text=0, "
        "str order=\"official\", Tensor? num_texts=None) -> (Tensor, Tensor, Tensor)");
  m.def("fused_select(Tensor hidden, Tensor w, Tensor b, float ln_eps, Tensor q_cls, Tensor keys, "
        "Tensor values, SymInt num_retain, SymInt min_votes=1, SymInt k_per_text=0, str order=\"official\", "
        "Tensor? num_texts=None, float? scale=None) -> (Tensor, Tensor, Tensor)");
  // tokens [B, M, C] (any dtype, any strides), indices [B, R] int32/int64
  // -> out [B, R, C] contiguous, out[b, r] = tokens[b, indices[b, r]].
  m.def("gather_tokens(Tensor tokens, Tensor indices) -> Tensor");
  m.def("gather_tokens.out(Tensor tokens, Tensor indices, *, Tensor(a!) out) -> Tensor(a!)");
}

// Functionalization of the out= overload (backend independent).
//
// torch.compile / AOTAutograd functionalise every mutation. A custom op whose
// output aliases a mutated input (`-> Tensor(a!)`) cannot be auto-functionalised
// ("Found a custom (non-ATen) operator whose output has alias annotations"), so
// we do what ATen's generated code does for its own out= ops: run the functional
// overload on the unwrapped tensors and swap the result into `out`.
namespace {

at::Tensor unwrap_functional(const at::Tensor& t) {
  if (at::functionalization::impl::isFunctionalTensor(t)) {
    at::functionalization::impl::sync(t);
    return at::functionalization::impl::from_functional_tensor(t);
  }
  return t;
}

at::Tensor& gather_tokens_out_functionalize(const at::Tensor& tokens, const at::Tensor& indices,
                                            at::Tensor& out) {
  static auto functional_op = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("litelvlm::gather_tokens", "")
                                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  static auto out_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("litelvlm::gather_tokens", "out")
          .typed<at::Tensor&(const at::Tensor&, const at::Tensor&, at::Tensor&)>();
  at::Tensor tokens_ = unwrap_functional(tokens);
  at::Tensor indices_ = unwrap_functional(indices);
  if (!at::functionalization::impl::isFunctionalTensor(out)) {
    TORCH_CHECK(!at::functionalization::impl::isFunctionalTensor(tokens) &&
                    !at::functionalization::impl::isFunctionalTensor(indices),
                "gather_tokens: mutating a non-functional out with functional inputs is not allowed");
    at::AutoDispatchSkipFunctionalize guard;
    out_op.call(tokens_, indices_, out);
    return out;
  }
  at::Tensor result;
  {
    at::AutoDispatchSkipFunctionalize guard;
    result = functional_op.call(tokens_, indices_);
  }
  at::functionalization::impl::replace_(out, result);
  at::functionalization::impl::commit_update(out);
  at::functionalization::impl::sync(out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(litelvlm, Functionalize, m) {
  m.impl("gather_tokens.out", &gather_tokens_out_functionalize);
}
