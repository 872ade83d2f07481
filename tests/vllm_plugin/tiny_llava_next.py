"""A tiny random LLaVA-NeXT checkpoint + its CLIP checkpoint, built offline, for vLLM tests.

examples/tiny_lvlm.py's LLaVA-NeXT (64 px views, patch 8: M = 64 patch tokens per view; pinpoints 64 x 128,
128 x 64 and 128 x 128, i.e. tiles 1 x 2, 2 x 1 and 2 x 2) with tiny_llava.py's LLM (head size 32, which vLLM's
CPU attention supports), tokenizer, chat template and hub key layout. ``build(folder)`` writes::

    folder/clip/        CLIPModel + its CLIPTokenizer (the scorer checkpoint)
    folder/llava_next/  LlavaNextConfig, model.safetensors (vision_tower.vision_model.*), the LLM tokenizer and a
                        LlavaNextProcessor (LlavaNextImageProcessor at 64 px with the pinpoints)

and returns a ``tiny_llava.Tiny`` whose ``llava`` is the LlavaNextForConditionalGeneration with the same weights
(so conftest.engine_kwargs and _compare.hf take it as they take the LLaVA one).
"""

from __future__ import annotations

import sys
from pathlib import Path

import tiny_llava
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import tiny_lvlm as tl  # noqa: E402

M = tl.M  # 64 patch tokens per view
VIEW, PINPOINTS = tl.IMAGE, tl.GRID_PINPOINTS  # the view size in px, image_grid_pinpoints
ARCH = "LiteLVLMLlavaNextForConditionalGeneration"
STOCK_ARCH = "LlavaNextForConditionalGeneration"


def build(folder, *, llm_std: float = 0.3) -> tiny_llava.Tiny:
    folder = Path(folder)
    clip_dir, next_dir, clip, clip_tok = tiny_llava.write_tiny_clip(folder, "llava_next")
    llm_tok = tiny_llava.llm_tokenizer()
    image_token = llm_tok.convert_tokens_to_ids("<image>")
    model = tl.tiny_lvlm("llava_next", clip, llm_std=llm_std, text=tiny_llava.llama_text(llm_tok),
                         image_token=image_token)
    side = {"height": tl.IMAGE, "width": tl.IMAGE}
    image_processor = transformers.LlavaNextImageProcessor(size={"shortest_edge": tl.IMAGE}, crop_size=side,
                                                           image_grid_pinpoints=tl.GRID_PINPOINTS)
    processor = transformers.LlavaNextProcessor(image_processor=image_processor, tokenizer=llm_tok,
                                                patch_size=tl.PATCH, vision_feature_select_strategy="default",
                                                image_token="<image>", num_additional_image_tokens=1,
                                                chat_template=tiny_llava.CHAT_TEMPLATE)
    tiny_llava.save_lvlm(model, next_dir, processor, STOCK_ARCH)
    processor = transformers.AutoProcessor.from_pretrained(next_dir)
    return tiny_llava.Tiny(folder, next_dir, clip_dir, model, clip, clip_tok, processor, image_token)


if __name__ == "__main__":
    t = build(sys.argv[1])
    print(t.llava_dir, t.clip_dir, t.image_token_id)
