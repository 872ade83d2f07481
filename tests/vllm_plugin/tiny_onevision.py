"""A tiny random LLaVA-OneVision checkpoint + the SigLIP checkpoint its tower comes from, built offline, for vLLM tests.

examples/tiny_lvlm.py's SigLIP (64 px, patch 8: M = 64 patches per view, 3 layers, its pooling head and text tower)
and OneVision (the tower drops SigLIP's last layer, ``vision_feature_layer=-1``, "full"), with tiny_llava.py's LLM
tokenizer (plus "<video>"), LLM (heads of 32, which vLLM's CPU attention runs), chat template and hub key layout.

Tiles: examples/tiny_lvlm.py's pinpoints (1 x 2, 2 x 1, 2 x 2) plus a 4 x 4 one (256 x 256), under
``vision_aspect_ratio="anyres_max_9"``: a 4 x 4 grid (32 x 32 cells) holds more than 9 views' worth and is
bilinearly downsampled (to 24 x 24), so the downsampled layout is served; and anyres_max_9 is what stock vLLM
hard-codes, so keep-all through the plugin can equal stock vLLM. ``build(folder)`` writes::

    folder/siglip/           SiglipModel (model.safetensors) + its tokenizer: what ``litelvlm.scorer`` names
    folder/llava_onevision/  the LVLM, the LLM tokenizer and a LlavaOnevisionProcessor (images and videos at 64 px)

Returned as ``tiny_llava.Tiny``, whose names ``llava`` (the OneVision model in memory) and ``clip`` / ``clip_dir``
/ ``clip_tokenizer`` (here: the SigLIP scorer checkpoint) conftest and ``_compare`` read.
"""

from __future__ import annotations

from pathlib import Path

import tiny_llava
import transformers
from conftest import engine_kwargs as llava_engine_kwargs
from tiny_llava import Tiny, tl

M = tl.M  # 64 patches per view
ARCH = "LiteLVLMLlavaOnevisionForConditionalGeneration"
STOCK_ARCH = "LlavaOnevisionForConditionalGeneration"
ASPECT = "anyres_max_9"
PINPOINTS = tl.GRID_PINPOINTS + [[4 * tl.IMAGE, 4 * tl.IMAGE]]


def build(folder, *, llm_std: float = 0.3) -> Tiny:
    """Write the SigLIP checkpoint and the OneVision LVLM under ``folder``; the same models in memory."""
    folder = Path(folder)
    siglip_dir, lvlm_dir = folder / "siglip", folder / "llava_onevision"
    siglip_dir.mkdir(parents=True, exist_ok=True)
    lvlm_dir.mkdir(parents=True, exist_ok=True)
    siglip_tok = tl.siglip_tokenizer()
    siglip = tl.tiny_siglip(siglip_tok)
    siglip.save_pretrained(siglip_dir)
    siglip_tok.save_pretrained(siglip_dir)

    tok = tiny_llava.llm_tokenizer(video=True)
    ids = tok.convert_tokens_to_ids
    model = tl.tiny_onevision(siglip, llm_std=llm_std, text=tiny_llava.llama_text(tok), image_token=ids("<image>"),
                              video_token=ids("<video>"), pinpoints=PINPOINTS, aspect=ASPECT)
    side = {"height": tl.IMAGE, "width": tl.IMAGE}
    processor = transformers.LlavaOnevisionProcessor(
        image_processor=transformers.LlavaOnevisionImageProcessor(size=side, image_grid_pinpoints=PINPOINTS),
        video_processor=transformers.LlavaOnevisionVideoProcessor(size=side), tokenizer=tok, num_image_tokens=M,
        vision_feature_select_strategy="full", vision_aspect_ratio=ASPECT, chat_template=tiny_llava.CHAT_TEMPLATE)
    tiny_llava.save_lvlm(model, lvlm_dir, processor, STOCK_ARCH)
    model.generation_config.eos_token_id = None  # greedy runs max_new_tokens, as vLLM with ignore_eos
    processor = transformers.AutoProcessor.from_pretrained(lvlm_dir)
    return Tiny(folder, lvlm_dir, siglip_dir, model, siglip, siglip_tok, processor, model.config.image_token_index)


def engine_kwargs(tiny: Tiny, *, stock: bool = False, videos: int = 1, **litelvlm) -> dict:
    """LLM(...) arguments (conftest's) for OneVision: the LiteLVLM architecture with ``litelvlm`` settings (the
    scorer = the SigLIP checkpoint), or the stock model; up to 2 images and ``videos`` videos per prompt."""
    kw = llava_engine_kwargs(tiny, stock=True)
    kw["limit_mm_per_prompt"] = {"image": 2, "video": videos}
    if not stock:
        kw["hf_overrides"] = {"architectures": [ARCH], "litelvlm": {"scorer": str(tiny.clip_dir), **litelvlm}}
    return kw


def video(seed: int, frames: int = 4):
    """A random uint8 clip [frames, 64, 64, 3] (what vLLM's video input and the HF video processor take)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (frames, tl.IMAGE, tl.IMAGE, 3), dtype=np.uint8)


if __name__ == "__main__":
    import sys

    t = build(sys.argv[1])
    print(t.llava_dir, t.clip_dir, t.image_token_id)
