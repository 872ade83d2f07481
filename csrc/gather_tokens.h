// Argument checks and the functional / out= entry points shared by the CPU
// (gather_tokens.cpp) and CUDA (cuda/gather_tokens.cu) kernels of
// litelvlm::gather_tokens: a backend supplies only its `gather_into`.
#pragma once

#include <array>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

namespace litelvlm {

// Checks what can be checked from metadata only (no device reads, so the CUDA
// path never synchronises): ranks, index dtype, devices, batch sizes.
inline void check_gather_args(const at::Tensor& tokens, const at::Tensor& indices) {
  TORCH_CHECK(tokens.dim() == 3,
              "gather_tokens: tokens must be a 3-D tensor [B, M, C], got shape ", tokens.sizes());
  TORCH_CHECK(indices.dim() == 2,
              "gather_tokens: indices must be a 2-D tensor [B, R], got shape ", indices.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
              "gather_tokens: indices must be int32 or int64, got ", indices.scalar_type());
  TORCH_CHECK(indices.device() == tokens.device(),
              "gather_tokens: indices must be on the same device as tokens (", tokens.device(),
              "), got ", indices.device());
  TORCH_CHECK(tokens.size(0) == indices.size(0),
              "gather_tokens: batch size mismatch: tokens has B=", tokens.size(0),
              " but indices has B=", indices.size(0));
}

// For the out= overload: same dtype and device as tokens (like index_select's out=).
inline void check_gather_out(const at::Tensor& tokens, const at::Tensor& out) {
  TORCH_CHECK(out.scalar_type() == tokens.scalar_type(),
              "gather_tokens: out must have the dtype of tokens (", tokens.scalar_type(),
              "), got ", out.scalar_type());
  TORCH_CHECK(out.device() == tokens.device(),
              "gather_tokens: out must be on the device of tokens (", tokens.device(), "), got ",
              out.device());
}

// Writes out[b, r, :] = tokens[b, indices[b, r], :]; out already has its final shape.
using GatherInto = void (*)(const at::Tensor& tokens, const at::Tensor& indices,
                            const at::Tensor& out);

template <GatherInto gather_into>
at::Tensor gather_tokens_functional(const at::Tensor& tokens, const at::Tensor& indices) {
  check_gather_args(tokens, indices);
  at::Tensor out = at::empty({tokens.size(0), indices.size(1), tokens.size(2)}, tokens.options());
  gather_into(tokens, indices, out);
  return out;
}

template <GatherInto gather_into>
at::Tensor& gather_tokens_out(const at::Tensor& tokens, const at::Tensor& indices,
                              at::Tensor& out) {
  check_gather_args(tokens, indices);
  check_gather_out(tokens, out);
  const std::array<int64_t, 3> shape{tokens.size(0), indices.size(1), tokens.size(2)};
  // An empty out is sized here (torch's out= convention); one of another shape is refused, not resized: torch
  // only warns and would silently drop the caller's preallocated buffer (and its strides).
  TORCH_CHECK(out.numel() == 0 || out.sizes() == at::IntArrayRef(shape),
              "gather_tokens: out must have shape [B, R, C] = ", at::IntArrayRef(shape),
              " (tokens [B, M, C], indices [B, R]), got ", out.sizes(),
              "; pass an empty tensor to have it sized");
  at::native::resize_output(out, shape);  // a no-op unless out is empty
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, tokens);
  at::assert_no_overlap(out, indices);
  gather_into(tokens, indices, out);
  return out;
}

}  // namespace litelvlm
