"""CUDA kernels of the selection ops: the Triton launchers of ``litelvlm_kernels.triton_ops``.

The schemas, fakes and CPU kernels live in ``selection.py``; this module only adds
``register_kernel(..., "cuda")`` overrides, so ``torch.ops.litelvlm.fused_select`` on CUDA
tensors is one Triton launch (plus the memset of its row counters). Imported by
``ops/__init__.py``; raises ImportError when triton is missing (the CPU path is unaffected).

The launchers run the library's argument checks (``_validate``) themselves.
select_tokens keeps its default kernel on CUDA (a batched torch composition): the fused
op is the fast path, and scores computed elsewhere are rare.
"""

from __future__ import annotations

import torch

from ..triton_ops import has_triton

if not has_triton():  # pragma: no cover - depends on the platform
    raise ImportError("triton is not importable: the CUDA kernels of the selection ops fall back to torch")

from ..triton_ops import cls_contribution as _cls_contribution
from ..triton_ops import fused_select as _fused_select
from ..triton_ops import text_similarity as _text_similarity


@torch.library.register_kernel("litelvlm::text_similarity", "cuda")
def _text_similarity_cuda(hidden, w, b, ln_eps):
    return _text_similarity(hidden, w, b, ln_eps)


@torch.library.register_kernel("litelvlm::cls_contribution", "cuda")
def _cls_contribution_cuda(q_cls, keys, values, scale=None):
    return _cls_contribution(q_cls, keys, values, scale)


@torch.library.register_kernel("litelvlm::fused_select", "cuda")
def _fused_select_cuda(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes=1, k_per_text=0,
                       order="official", num_texts=None, scale=None):
    return _fused_select(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes, k_per_text,
                         order, num_texts, scale)
