"""CUDA kernels of the selection ops: the Triton launchers of ``litelvlm_kernels.triton_ops``.

The schemas live in ``csrc/litelvlm.cpp``; the fakes and the device-agnostic default kernels in
``selection.py``. This module adds ``register_kernel(..., "cuda")`` overrides, so
``torch.ops.litelvlm.fused_select`` on CUDA tensors is one Triton launch (plus the memset of its
row counters). Imported by ``ops/__init__.py``; raises ImportError when triton is missing (CUDA
then falls back to the torch compositions; the CPU path is unaffected).

The launchers assume validated inputs: each kernel here runs the rules of
``litelvlm_kernels._validate`` once, then launches, and passes the default [CLS] scale
resolved (``_validate.default_scale``). select_tokens and fold_text keep the default kernel on
CUDA (batched torch compositions): the fused op is the fast path, scores computed elsewhere are
rare, and folding is a matmul done once per text.
"""

from __future__ import annotations

import torch

from .. import _validate as V
from ..triton_ops import has_triton
from .selection import check_fused

if not has_triton():  # pragma: no cover - depends on the platform
    raise ImportError("triton is not importable: the CUDA kernels of the selection ops fall back to torch")

from ..triton_ops import cls_contribution as _cls_contribution  # noqa: E402
from ..triton_ops import fused_select as _fused_select  # noqa: E402
from ..triton_ops import text_similarity as _text_similarity  # noqa: E402


def _text_similarity_cuda(hidden, w, b, ln_eps):
    V.check_similarity_inputs(hidden, w, b, ln_eps)
    return _text_similarity(hidden, w, b, ln_eps)


def _cls_contribution_cuda(q_cls, keys, values, scale=None):
    V.check_contribution_inputs(q_cls, keys, values)
    return _cls_contribution(q_cls, keys, values, V.default_scale(keys.shape[2]) if scale is None else scale)


def _fused_select_cuda(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes=1, k_per_text=0,
                       order="official", num_texts=None, scale=None):
    check_fused(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes, k_per_text, order, num_texts)
    if scale is None:
        scale = V.default_scale(keys.shape[2])
    return _fused_select(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes, k_per_text,
                         order, num_texts, scale)


# Registered by plain calls: the decorator form returns None for ops whose schema is defined in C++.
torch.library.register_kernel("litelvlm::text_similarity", "cuda", _text_similarity_cuda)
torch.library.register_kernel("litelvlm::cls_contribution", "cuda", _cls_contribution_cuda)
torch.library.register_kernel("litelvlm::fused_select", "cuda", _fused_select_cuda)
