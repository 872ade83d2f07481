"""LLaVA-1.5 with LiteLVLM: the stock ``model.generate(**inputs)`` on R of each image's M visual tokens.

Tiny random models, built offline (``tiny_lvlm.py``): a CLIP (64 px, patch 8,
M = 64 patch tokens) whose vision weights the LLaVA tower reuses, a 2-layer
Llama. Two prompts, left padded: the first with one image and one referring
expression, the second with two images and two expressions (union). Printed:
placeholders per image before / after, visual and LLM tokens, prefill FLOPs,
KV-cache bytes, prefill time before and after (median and p20-p80 of 5
interleaved rounds; the ratio marked "within noise" when they overlap), the
generated ids, and the same ratio at LLaVA-1.5-7B scale.

With real checkpoints (not runnable here: needs the downloads)::

    from transformers import AutoProcessor, CLIPModel, CLIPTokenizer, LlavaForConditionalGeneration
    from litelvlm_kernels.integrations.lvlm import enable_litelvlm

    model = LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf", torch_dtype="float16",
                                                          device_map="cuda")
    processor = AutoProcessor.from_pretrained("llava-hf/llava-1.5-7b-hf")
    clip = CLIPModel.from_pretrained("openai/clip-vit-large-patch14-336", torch_dtype="float16").cuda()
    clip_tok = CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14-336")
    inputs = processor(images=image, text="USER: <image>\\nWhat is the man on the left holding? ASSISTANT:",
                       return_tensors="pt").to("cuda", torch.float16)
    with enable_litelvlm(model, clip, clip_tok, num_retain=192):
        out = model.generate(**inputs, referring_expressions=[["the man on the left"]], max_new_tokens=30)

Run: ``python examples/llava_generate.py [--retain 16]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_run as er


def main(argv=None) -> dict:
    return er.llava_like_main("llava", __doc__, argv, "LLaVA-1.5", full_size=("vicuna-7b", 576))


if __name__ == "__main__":
    main()
