"""LiteLVLM pruning on stock Hugging Face ``transformers`` CLIP towers (the public entry point).

The selection itself is shared with the vLLM plugin (``litelvlm_kernels.selection``: scorers per tower kind,
layouts per family, docs/design.md section 11); this package is the transformers front end, one module per
job, one file per model family:

=====================  =======================================================
``pruner``             ``LiteLVLMPruner``: tower + texts -> kept tokens (a scorer + a text folder)
``adapter``            what a family tells the patch (settings, modalities, feature layers)
``lvlm``               patching a whole LVLM (enable / disable, forward, generate)
``inputs``             input checks at the boundary, placeholder runs per item
``prompt``             the shrunk prompt: each row's dropped placeholders removed, the kept features merged
``vision_outputs``     the stock vision outputs rebuilt (image_outputs / image_hidden_states)
``generation``         generate() with the caller's meaning: lengths, id-reading callables, caches
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

from ..selection.capture import VisionCapture, capture_vision
from ..selection.clip import encode_text
from ..selection.text import TextCondition
from ..selection.towers import text_tower, vision_tower
from .lvlm import LiteLVLMSettings, disable_litelvlm, enable_litelvlm
from .metrics import format_metrics, prefill_metrics
from .pruner import HFPruneResult, LiteLVLMPruner

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
