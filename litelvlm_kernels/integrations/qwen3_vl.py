"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): a paired scorer selects among its 32 x 32 px tokens.

One LLM token = one 2 x 2 block of 16 px patches = 32 x 32 px of the resized image. Its tower also returns
DeepStack features (``deepstack_features``: one [N, D] row per token per level, added to the LLM's hidden
states at the image positions after its first decoder layers): they are cut to the kept rows with the same
indices as the main features, so the stock forward's ``visual_pos_masks`` (the shrunk placeholders) and every
level stay aligned. Everything else is shared with Qwen2.5-VL (``qwen_vl.py``).
"""

from __future__ import annotations

from ..selection.paired import NORMALISATION
from .adapter import register_adapter
from .qwen_vl import QwenAdapter


@register_adapter
class Qwen3VLAdapter(QwenAdapter):
    """``model_type == "qwen3_vl"``."""

    model_types = ("qwen3_vl",)
    # Qwen/Qwen3-VL-*-Instruct preprocessor_config.json: mean = std = 0.5 per channel
    image_normalisation = NORMALISATION["siglip"]
    deepstack = True
