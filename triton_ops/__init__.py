"""Triton kernels of litelvlm_kernels (installed as ``litelvlm_kernels.triton_ops``).

One kernel per module, each with its launcher:

- ``text_similarity(hidden, w, b, ln_eps)`` -> s [B, T, M] fp32
- ``cls_contribution(q_cls, keys, values, scale=None)`` -> c [B, M] fp32
- ``select_tokens(s, c, num_retain, ...)`` -> (indices, num_similarity, from_similarity)
- ``fused_select(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, ...)``
  -> (indices, num_similarity, from_similarity), one kernel launch
- ``warmup(...)`` compiles the variants a deployment will launch, ahead of serving.

The launchers take CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 (the
interpreter: how the tests run without a GPU), and assume arguments checked by the op
layer (``litelvlm_kernels.ops``). The package imports without triton; then
``has_triton()`` is False and the launchers are absent.
"""

from ._common import has_triton, interpret_mode

__all__ = ["has_triton", "interpret_mode"]

if has_triton():
    from .cls_contribution import cls_contribution
    from .fused_select import fused_select
    from .select_tokens import select_tokens
    from .text_similarity import text_similarity
    from .warmup import warmup

    __all__ += ["text_similarity", "cls_contribution", "select_tokens", "fused_select", "warmup"]
