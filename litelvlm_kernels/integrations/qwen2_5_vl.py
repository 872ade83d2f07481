"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): a paired scorer selects among its 28 x 28 px tokens.

One LLM token = one 2 x 2 block of 14 px patches = 28 x 28 px of the resized image. The tower runs window
attention in a permuted order and un-permutes its merged output, so ``get_image_features`` returns each
image's tokens in raster order of its h x w grid, as the placeholders take them. Everything else is shared
with Qwen3-VL (``qwen_vl.py``).
"""

from __future__ import annotations

from ..selection.paired import NORMALISATION
from .adapter import register_adapter
from .qwen_vl import QwenAdapter


@register_adapter
class Qwen2_5_VLAdapter(QwenAdapter):
    """``model_type == "qwen2_5_vl"``."""

    model_types = ("qwen2_5_vl",)
    # Qwen/Qwen2.5-VL-*-Instruct preprocessor_config.json: OpenAI CLIP's mean / std (also Qwen2VLImageProcessor's
    # class default)
    image_normalisation = NORMALISATION["clip"]
