"""Tiny, randomly initialised Qwen2.5-VL / Qwen3-VL models and their inputs, built offline.

Shared by ``qwen_vl_generate.py`` and ``tests/test_qwen_vl*.py``. The LLM is 2 layers of width 64 (2 heads of
32, M-RoPE sections [4, 6, 6]); the towers 2 layers of width 32 (Qwen2.5-VL: patch 14, windows of 2 x 2
tokens, layer 1 full attention; Qwen3-VL: patch 16, DeepStack after layers 0 and 1), both merging 2 x 2
patches into one token of 28 / 32 px. ``llm_std`` re-draws the LLM's, the mergers' and the head's matrices
(0.3: a different selection gives different tokens). The pixels come from transformers' own
``Qwen2VLImageProcessorPil`` (the processor both families use; its video half needs torchvision, absent
here), the prompts are what their processors make of ``<|vision_start|><|image_pad|><|vision_end|>``: the
image token repeated once per merged token, left padding, ``mm_token_type_ids`` 1 on the image tokens. The
paired scorer is ``tiny_lvlm``'s CLIP (64 px, patch 8: 8 x 8 = 64 native patches).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 300
PAD, VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN = 0, VOCAB - 4, VOCAB - 3, VOCAB - 1, VOCAB - 2
PATCH = {"qwen2_5_vl": 14, "qwen3_vl": 16}
MERGE, TEMPORAL = 2, 2
# what the checkpoints' processors normalise with (enable_litelvlm's defaults for the model type)
MEAN_STD = {"qwen2_5_vl": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
            "qwen3_vl": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
FAMILIES = tuple(PATCH)


def sharpen(model, std: float, seed: int = 2) -> None:
    """Re-draw the LLM's, the mergers' and the LM head's weight matrices with std ``std`` (norms kept)."""
    g = torch.Generator().manual_seed(seed)
    inner = model.model
    parts = [inner.language_model, inner.visual.merger, model.lm_head]
    parts += list(getattr(inner.visual, "deepstack_merger_list", []))
    with torch.no_grad():
        for part in parts:
            for p in part.parameters():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) * std)


def tiny_qwen(family: str, seed: int = 0, attn: str = "sdpa", llm_std: float | None = 0.3):
    """A Qwen2_5_VLForConditionalGeneration ("qwen2_5_vl") or Qwen3VLForConditionalGeneration ("qwen3_vl")."""
    ids = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
               vision_end_token_id=VISION_END)
    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, pad_token_id=PAD, bos_token_id=None, eos_token_id=None)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH[family],
                  out_hidden_size=64, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL)
    torch.manual_seed(seed)
    if family == "qwen2_5_vl":
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
        vision.update(window_size=56, fullatt_block_indexes=[1])
        cfg = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        cls = transformers.Qwen2_5_VLForConditionalGeneration
    elif family == "qwen3_vl":
        text.update(head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                  "mrope_section": [4, 6, 6], "mrope_interleaved": True})
        vision.update(num_position_embeddings=16, deepstack_visual_indexes=[0, 1])
        cfg = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
        cls = transformers.Qwen3VLForConditionalGeneration
    else:
        raise ValueError(f"family: unknown {family!r} (expected one of {FAMILIES})")
    cfg._attn_implementation = attn
    for sub in (cfg.text_config, cfg.vision_config):
        sub._attn_implementation = attn
    model = cls(cfg).eval()
    if llm_std is not None:
        sharpen(model, llm_std)
    return model


def image_processor(family: str, max_tokens: int = 16):
    """Qwen2VLImageProcessorPil of ``family``: at least 1, at most ``max_tokens`` merged tokens per image."""
    factor = PATCH[family] * MERGE
    mean, std = MEAN_STD[family]
    return transformers.Qwen2VLImageProcessorPil(
        patch_size=PATCH[family], merge_size=MERGE, temporal_patch_size=TEMPORAL, image_mean=list(mean),
        image_std=list(std), size={"shortest_edge": factor * factor, "longest_edge": factor ** 2 * max_tokens})


SIZES = ((100, 150), (170, 60), (90, 90), (120, 120))  # (H, W): wide, tall (max(h, w) != w), square, square


def images(n: int, seed: int = 0) -> list:
    """``n`` random RGB images (uint8 [H, W, 3]) of the sizes in ``SIZES``, in turn."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, SIZES[i % len(SIZES)] + (3,), dtype=np.uint8) for i in range(n)]


def inputs(family: str, images_per_row=(1, 2), seed: int = 0, lengths=(4, 3), max_tokens: int = 16) -> dict:
    """A left-padded batch as the family's processor makes it: prompt b is ``lengths[0] + b`` text tokens, then
    per image ``<|vision_start|>`` + its tokens + ``<|vision_end|>`` + 2 text tokens, then ``lengths[1]``."""
    px = image_processor(family, max_tokens)(images=images(sum(images_per_row), seed), return_tensors="pt")
    counts = (px["image_grid_thw"].prod(-1) // MERGE ** 2).tolist()
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(3, VOCAB - 8, (n,), generator=g).tolist()  # noqa: E731
    rows, k = [], 0
    for b, n in enumerate(images_per_row):
        row = text(lengths[0] + b)
        for _ in range(n):
            row += [VISION_START] + [IMAGE_TOKEN] * counts[k] + [VISION_END] + text(2)
            k += 1
        rows.append(row + text(lengths[1]))
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), PAD)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = torch.tensor(r)
        mask[b, L - len(r):] = 1
    return dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == IMAGE_TOKEN).long(),
                pixel_values=px["pixel_values"], image_grid_thw=px["image_grid_thw"])
