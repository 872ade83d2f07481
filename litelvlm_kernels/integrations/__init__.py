"""Adapters that feed the LiteLVLM ops from models people already use.

``litelvlm_kernels.integrations.hf``: Hugging Face ``transformers`` CLIP towers
(needs the ``hf`` extra: ``pip install "litelvlm_kernels[hf]"``), and
``enable_litelvlm`` / ``disable_litelvlm`` for stock LLaVA-1.5, LLaVA-NeXT and
LLaVA-NeXT-Video models (``lvlm.py`` and one file per family).

Submodules are imported lazily, so ``import litelvlm_kernels.integrations``
never requires an optional dependency; touching ``integrations.hf`` (or
``from litelvlm_kernels.integrations import LiteLVLMPruner``) does.
"""

from __future__ import annotations

import importlib

# Nothing eager in __all__: `from litelvlm_kernels.integrations import *` must not need transformers.
__all__: list = []


def __getattr__(name):
    if name == "hf":
        return importlib.import_module(".hf", __name__)
    if name in ("LiteLVLMPruner", "enable_litelvlm", "disable_litelvlm", "prefill_metrics"):
        return getattr(importlib.import_module(".hf", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
