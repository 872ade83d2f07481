"""``LiteLVLMQwen2_5_VLForConditionalGeneration``: vLLM's Qwen2.5-VL with a paired scorer in its image path.

Chosen with ``--hf-overrides '{"architectures": ["LiteLVLMQwen2_5_VLForConditionalGeneration"],
"litelvlm": {"scorer": "openai/clip-vit-base-patch16", "retain_ratio": 0.25}}'`` on a stock Qwen2.5-VL checkpoint.
One LLM token = a 2 x 2 block of 14 px patches (28 x 28 px); vLLM's tower runs its windows in a permuted order and
un-permutes its merged output, so each image's rows come in raster order, as the scorer's signals are laid out.
Everything else is shared with Qwen3-VL (``qwen_vl.py``).
"""

from __future__ import annotations

from vllm.model_executor.models import qwen2_5_vl as stock

from .qwen_vl import family_classes

(LiteLVLMQwen2_5_VLProcessingInfo, LiteLVLMQwen2_5_VLMultiModalProcessor,
 LiteLVLMQwen2_5_VLForConditionalGeneration) = family_classes(
    "Qwen2_5_VL", __name__, stock.Qwen2_5_VLProcessingInfo, stock.Qwen2_5_VLMultiModalProcessor,
    stock.Qwen2_5_VLDummyInputsBuilder, stock.Qwen2_5_VLForConditionalGeneration)

__all__ = ["LiteLVLMQwen2_5_VLForConditionalGeneration"]
