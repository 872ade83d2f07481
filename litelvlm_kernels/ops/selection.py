"""Schemas of the selection ops (torch.library.custom_op), their fake impls and default kernels.

Each schema is written once, here. The body of each custom_op is its default
kernel on every device (the batched torch composition in ``_cpu_select``);
``triton_cuda.py`` overrides the CUDA kernel with the Triton launchers, so a
new backend never changes a schema. custom_op (opaque to the compiler) rather
than triton_op: it passes opcheck and torch.compile on the CPU without a global
switch (PLATFORM.md).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as V
from . import _cpu_select


# -- fold_text ---------------------------------------------------------------

def _check_fold(text_embeds, proj_weight, ln_weight, ln_bias):
    V.check_tensor("text_embeds", text_embeds, 3)
    V.check_tensor("proj_weight", proj_weight, 2)
    V.check_tensor("ln_weight", ln_weight, 1)
    V.check_tensor("ln_bias", ln_bias, 1)
    P, Dv = proj_weight.shape
    if text_embeds.shape[2] != P:
        raise ValueError(f"text_embeds last dimension {text_embeds.shape[2]} must equal proj_weight's P={P} "
                         "(proj_weight is [P, Dv], nn.Linear layout)")
    if ln_weight.shape[0] != Dv or ln_bias.shape[0] != Dv:
        raise ValueError(f"ln_weight {tuple(ln_weight.shape)} and ln_bias {tuple(ln_bias.shape)} must be [Dv] "
                         f"with Dv={Dv} from proj_weight {tuple(proj_weight.shape)} ([P, Dv])")
    V.check_same_device(text_embeds=text_embeds, proj_weight=proj_weight, ln_weight=ln_weight, ln_bias=ln_bias)


@torch.library.custom_op("litelvlm::fold_text", mutates_args=())
def fold_text(text_embeds: Tensor, proj_weight: Tensor, ln_weight: Tensor, ln_bias: Tensor) -> Tuple[Tensor, Tensor]:
    """w_t = gamma * (W_p^T e_t) [Bt, T, Dv], b_t = beta . (W_p^T e_t) [Bt, T], fp32."""
    _check_fold(text_embeds, proj_weight, ln_weight, ln_bias)
    u = torch.matmul(text_embeds.float(), proj_weight.float())
    return u * ln_weight.float(), torch.matmul(u, ln_bias.float())


@fold_text.register_fake
def _(text_embeds, proj_weight, ln_weight, ln_bias):
    _check_fold(text_embeds, proj_weight, ln_weight, ln_bias)
    Bt, T, _ = text_embeds.shape
    Dv = proj_weight.shape[1]
    return text_embeds.new_empty((Bt, T, Dv), dtype=torch.float32), text_embeds.new_empty((Bt, T), dtype=torch.float32)


# -- text_similarity ---------------------------------------------------------

@torch.library.custom_op("litelvlm::text_similarity", mutates_args=())
def text_similarity(hidden: Tensor, w: Tensor, b: Tensor, ln_eps: float) -> Tensor:
    """Folded [EOS] similarity: hidden [B, M, Dv] -> s [B, T, M] fp32."""
    V.check_similarity_inputs(hidden, w, b, ln_eps)
    return _cpu_select.text_similarity(hidden, w, b, ln_eps)


@text_similarity.register_fake
def _(hidden, w, b, ln_eps):
    V.check_similarity_inputs(hidden, w, b, ln_eps)
    B, M, _ = hidden.shape
    return hidden.new_empty((B, w.shape[1], M), dtype=torch.float32)


# -- cls_contribution --------------------------------------------------------

@torch.library.custom_op("litelvlm::cls_contribution", mutates_args=())
def cls_contribution(q_cls: Tensor, keys: Tensor, values: Tensor, scale: Optional[float] = None) -> Tensor:
    """[CLS] contribution c_j = a_j ||v_j||: q_cls [B, D], keys/values [B, M, D] -> c [B, M] fp32."""
    V.check_contribution_inputs(q_cls, keys, values, scale)
    return _cpu_select.cls_contribution(q_cls, keys, values, scale)


@cls_contribution.register_fake
def _(q_cls, keys, values, scale=None):
    V.check_contribution_inputs(q_cls, keys, values, scale)
    return keys.new_empty(keys.shape[:2], dtype=torch.float32)


# -- select_tokens -----------------------------------------------------------

def _selection_outputs(like: Tensor, B, M, num_retain):
    r = V.clamp_retain(num_retain, M)
    return (like.new_empty((B, r), dtype=torch.int64),
            like.new_empty((B,), dtype=torch.int32),
            like.new_empty((B, r), dtype=torch.bool))


@torch.library.custom_op("litelvlm::select_tokens", mutates_args=())
def select_tokens(s: Tensor, c: Tensor, num_retain: int, min_votes: int = 1, k_per_text: int = 0,
                  order: str = "official", num_texts: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Bottom-k per text, vote combination, recovery by contribution, final order (DESIGN.md section 2)."""
    V.check_scores(s, c, num_texts)
    V.check_select_args(s.shape[1], s.shape[2], num_retain, min_votes, k_per_text, order)
    return _cpu_select.select_tokens(s, c, num_retain, min_votes, k_per_text, order, num_texts)


@select_tokens.register_fake
def _(s, c, num_retain, min_votes=1, k_per_text=0, order="official", num_texts=None):
    V.check_scores(s, c, num_texts)
    V.check_select_args(s.shape[1], s.shape[2], num_retain, min_votes, k_per_text, order)
    return _selection_outputs(s, s.shape[0], s.shape[2], num_retain)


# -- fused_select ------------------------------------------------------------

def check_fused(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes, k_per_text, order,
                num_texts, scale):
    V.check_fused_inputs(hidden, w, b, ln_eps, q_cls, keys, values, scale, num_texts)
    V.check_select_args(w.shape[1], hidden.shape[1], num_retain, min_votes, k_per_text, order)


@torch.library.custom_op("litelvlm::fused_select", mutates_args=())
def fused_select(hidden: Tensor, w: Tensor, b: Tensor, ln_eps: float, q_cls: Tensor, keys: Tensor,
                 values: Tensor, num_retain: int, min_votes: int = 1, k_per_text: int = 0,
                 order: str = "official", num_texts: Optional[Tensor] = None,
                 scale: Optional[float] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Similarity, contribution and selection in one op (one Triton launch on CUDA)."""
    check_fused(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes, k_per_text, order,
                num_texts, scale)
    s = _cpu_select.text_similarity(hidden, w, b, ln_eps)
    c = _cpu_select.cls_contribution(q_cls, keys, values, scale)
    return _cpu_select.select_tokens(s, c, num_retain, min_votes, k_per_text, order, num_texts)


@fused_select.register_fake
def _(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes=1, k_per_text=0, order="official",
      num_texts=None, scale=None):
    check_fused(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes, k_per_text, order,
                num_texts, scale)
    return _selection_outputs(hidden, hidden.shape[0], hidden.shape[1], num_retain)
