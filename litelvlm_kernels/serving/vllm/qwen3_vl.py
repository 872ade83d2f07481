"""``LiteLVLMQwen3VLForConditionalGeneration``: vLLM's Qwen3-VL with a paired scorer in its image path.

Chosen with ``--hf-overrides '{"architectures": ["LiteLVLMQwen3VLForConditionalGeneration"],
"litelvlm": {"scorer": "openai/clip-vit-base-patch16", "retain_ratio": 0.25}}'`` on a stock Qwen3-VL checkpoint.
One LLM token = a 2 x 2 block of 16 px patches (32 x 32 px). vLLM's tower returns one row per token holding the
main features and every DeepStack level ([main | ds_0 | ds_1 ...]), which vLLM splits and scatters with the same
placeholder mask: selecting rows once keeps each level aligned with its main row. Everything else is shared with
Qwen2.5-VL (``qwen_vl.py``).
"""

from __future__ import annotations

from vllm.model_executor.models import qwen3_vl as stock

from .qwen_vl import family_classes

(LiteLVLMQwen3VLProcessingInfo, LiteLVLMQwen3VLMultiModalProcessor,
 LiteLVLMQwen3VLForConditionalGeneration) = family_classes(
    "Qwen3VL", __name__, stock.Qwen3VLProcessingInfo, stock.Qwen3VLMultiModalProcessor,
    stock.Qwen3VLDummyInputsBuilder, stock.Qwen3VLForConditionalGeneration)

__all__ = ["LiteLVLMQwen3VLForConditionalGeneration"]
