"""The selection ops: fake impls, the default kernel of devices without their own, and the Python handles.

Where each piece lives:

- schemas: ``csrc/litelvlm.cpp`` (``TORCH_LIBRARY(litelvlm)``), each written once;
- CPU kernels: C++, ``csrc/fused_select_cpu.cpp`` (fused one-pass scoring, selection in
  ``csrc/select_rank.h``), which validate with ``csrc/select_checks.cpp``;
- CUDA kernels: the Triton launchers, registered by ``triton_cuda.py``, validating first;
- every other device (and CUDA's select_tokens and fold_text): the torch compositions of
  ``_torch_select.py``, registered below as the device-agnostic default
  (CompositeExplicitAutograd; a backend's own kernel takes precedence);
- fake impls: below, for torch.compile and FakeTensor tracing (symbolic shapes).

Python kernels and fakes run the rules of ``litelvlm_kernels._validate`` (the module's
docstring says why each rule runs once per call). With the schema and the CPU kernel in C++,
an eager CPU call runs no Python at all between ``torch.ops.litelvlm.*`` and the kernel.
"""

from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (defines the schemas and registers the C++ kernels)
from .. import _validate as V
from . import _torch_select as TS

_OPS = torch.ops.litelvlm
# The handles the package exports (``litelvlm_kernels.ops.fused_select`` ...): the ops' default overloads.
fold_text = _OPS.fold_text.default
text_similarity = _OPS.text_similarity.default
cls_contribution = _OPS.cls_contribution.default
select_tokens = _OPS.select_tokens.default
fused_select = _OPS.fused_select.default


def _selection_outputs(like, B, M, num_retain):
    r = V.clamp_retain(num_retain, M)
    return (like.new_empty((B, r), dtype=torch.int64),
            like.new_empty((B,), dtype=torch.int32),
            like.new_empty((B, r), dtype=torch.bool))


# -- fold_text ---------------------------------------------------------------

@torch.library.register_fake("litelvlm::fold_text")
def _fold_text_fake(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias=None):
    V.check_fold_inputs(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias)
    Bt, T, _ = text_embeds.shape
    Dv = proj_weight.shape[1]
    return text_embeds.new_empty((Bt, T, Dv), dtype=torch.float32), text_embeds.new_empty((Bt, T), dtype=torch.float32)


def _fold_text_default(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias=None):
    V.check_fold_inputs(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias)
    return TS.fold_text(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias)


# -- text_similarity ---------------------------------------------------------

@torch.library.register_fake("litelvlm::text_similarity")
def _text_similarity_fake(hidden, w, b, ln_eps):
    V.check_similarity_inputs(hidden, w, b, ln_eps)
    B, M, _ = hidden.shape
    return hidden.new_empty((B, w.shape[1], M), dtype=torch.float32)


def _text_similarity_default(hidden, w, b, ln_eps):
    V.check_similarity_inputs(hidden, w, b, ln_eps)
    return TS.text_similarity(hidden, w, b, ln_eps)


# -- cls_contribution --------------------------------------------------------

@torch.library.register_fake("litelvlm::cls_contribution")
def _cls_contribution_fake(q_cls, keys, values, scale=None):
    V.check_contribution_inputs(q_cls, keys, values)
    return keys.new_empty(keys.shape[:2], dtype=torch.float32)


def _cls_contribution_default(q_cls, keys, values, scale=None):
    V.check_contribution_inputs(q_cls, keys, values)
    return TS.cls_contribution(q_cls, keys, values, scale)


# -- select_tokens -----------------------------------------------------------

@torch.library.register_fake("litelvlm::select_tokens")
def _select_tokens_fake(s, c, num_retain, min_votes=1, k_per_text=0, order="official", num_texts=None):
    V.check_scores(s, c, num_texts)
    V.check_select_args(s.shape[1], s.shape[2], num_retain, min_votes, k_per_text, order)
    return _selection_outputs(s, s.shape[0], s.shape[2], num_retain)


def _select_tokens_default(s, c, num_retain, min_votes=1, k_per_text=0, order="official", num_texts=None):
    V.check_scores(s, c, num_texts)
    V.check_select_args(s.shape[1], s.shape[2], num_retain, min_votes, k_per_text, order)
    return TS.select_tokens(s, c, num_retain, min_votes, k_per_text, order, num_texts)


# -- fused_select ------------------------------------------------------------

def check_fused(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes, k_per_text, order, num_texts):
    """Every rule of fused_select (inputs, then the selection arguments); for the Python kernels and the fake."""
    V.check_fused_inputs(hidden, w, b, ln_eps, q_cls, keys, values, num_texts)
    V.check_select_args(w.shape[1], hidden.shape[1], num_retain, min_votes, k_per_text, order)


@torch.library.register_fake("litelvlm::fused_select")
def _fused_select_fake(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes=1, k_per_text=0,
                       order="official", num_texts=None, scale=None):
    check_fused(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes, k_per_text, order, num_texts)
    return _selection_outputs(hidden, hidden.shape[0], hidden.shape[1], num_retain)


def _fused_select_default(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes=1, k_per_text=0,
                          order="official", num_texts=None, scale=None):
    check_fused(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes, k_per_text, order, num_texts)
    s = TS.text_similarity(hidden, w, b, ln_eps)
    c = TS.cls_contribution(q_cls, keys, values, scale)
    return TS.select_tokens(s, c, num_retain, min_votes, k_per_text, order, num_texts)


# The device-agnostic defaults (CompositeExplicitAutograd): CPU (C++) and CUDA (Triton) kernels take
# precedence. Plain calls: the decorator form returns None for ops whose schema is defined in C++.
torch.library.register_kernel("litelvlm::fold_text", None, _fold_text_default)
torch.library.register_kernel("litelvlm::text_similarity", None, _text_similarity_default)
torch.library.register_kernel("litelvlm::cls_contribution", None, _cls_contribution_default)
torch.library.register_kernel("litelvlm::select_tokens", None, _select_tokens_default)
torch.library.register_kernel("litelvlm::fused_select", None, _fused_select_default)
