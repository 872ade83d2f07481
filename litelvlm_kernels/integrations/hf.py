"""LiteLVLM pruning on stock Hugging Face ``transformers`` CLIP towers (the public entry point).

The adapter is split by concern (one module per job, one file per model family):

=====================  =======================================================
``_towers``            where a CLIP model keeps its vision / text tower
``capture``            one vision forward run by hand (no hooks) -> ``VisionCapture``
``text``               [EOS] embeddings, grouping per image, the folded-text cache
``pruner``             ``LiteLVLMPruner``: tower + texts -> kept tokens
``lvlm``               the model-agnostic part of patching a whole LVLM (enable / disable)
``inputs``             input checks, shrinking placeholder runs, re-padding, merging the kept features
``generation``         generate() with the caller's meaning: lengths, id-reading callables, caches
``views``              selection over tiles / frames with the public ops
``llava`` ...          one file per LVLM family (see docs/CONTRIBUTING.md)
``metrics``            tokens, FLOPs, KV bytes, time before / after on given inputs
=====================  =======================================================

Quick start::

    from transformers import CLIPModel, CLIPTokenizer
    from litelvlm_kernels.integrations.hf import LiteLVLMPruner

    clip = CLIPModel.from_pretrained("openai/clip-vit-large-patch14-336")
    tok = CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14-336")
    pruner = LiteLVLMPruner(clip, tokenizer=tok)           # select_layer=-2
    out = pruner.prune(pixel_values, texts=["the man on the left"], num_retain=192)
    out.tokens   # [B, 192, 1024] kept select-layer tokens -> LLaVA projector
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401  (the adapters are written against its CLIP / LLaVA classes)
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "litelvlm_kernels.integrations.hf needs Hugging Face transformers. "
        "Install the optional extra: pip install \"litelvlm_kernels[hf]\" "
        "(or: pip install transformers)."
    ) from exc

from ._towers import text_tower, vision_tower
from .capture import VisionCapture, capture_vision
from .lvlm import LiteLVLMSettings, disable_litelvlm, enable_litelvlm
from .metrics import format_metrics, prefill_metrics
from .pruner import HFPruneResult, LiteLVLMPruner
from .text import TextCondition, encode_text

__all__ = [
    "HFPruneResult",
    "LiteLVLMSettings",
    "disable_litelvlm",
    "enable_litelvlm",
    "format_metrics",
    "prefill_metrics",
    "LiteLVLMPruner",
    "TextCondition",
    "VisionCapture",
    "capture_vision",
    "encode_text",
    "text_tower",
    "vision_tower",
]
