"""LLaVA with a SigLIP tower (LLaVA-Interleave's layout) and LiteLVLM: ``model.generate(**inputs)`` on R of M tokens.

SigLIP has no [CLS]: what plays CLIP's [EOS] similarity and [CLS] contribution
comes from the original SigLIP checkpoint's attention-pooling head (its value /
output maps and its probe's attention), with its post-layernorm and the last
layer the LVLM's tower dropped (``litelvlm_kernels/selection/siglip.py``).
With ``vision_feature_select_strategy="full"`` every row is a patch, so an image
takes R' placeholders (CLIP's "full" keeps [CLS] as an extra one).

Tiny random models, built offline (``tiny_lvlm.py``): a SigLIP (64 px, patch 8,
M = 64 patch tokens, 3 layers, with its head and text tower), a LLaVA whose tower
holds the first 2 of those layers, a 2-layer Llama. Two prompts, left padded:
one image and one expression, then two images and two expressions (union).

With real checkpoints (not runnable here: needs the downloads)::

    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration, SiglipModel
    from litelvlm_kernels.integrations.lvlm import enable_litelvlm

    model = LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-interleave-qwen-7b-hf",
                                                          torch_dtype="float16", device_map="cuda")
    processor = AutoProcessor.from_pretrained("llava-hf/llava-interleave-qwen-7b-hf")
    siglip = SiglipModel.from_pretrained("google/siglip-so400m-patch14-384", torch_dtype="float16").cuda()
    siglip_tok = AutoTokenizer.from_pretrained("google/siglip-so400m-patch14-384")
    inputs = processor(images=image, text="<|im_start|>user <image>\\nWhat is the man on the left holding?"
                       "<|im_end|><|im_start|>assistant", return_tensors="pt").to("cuda", torch.float16)
    with enable_litelvlm(model, siglip, siglip_tok, num_retain=192):
        out = model.generate(**inputs, referring_expressions=[["the man on the left"]], max_new_tokens=30)

The direction of the similarity rule (keep the LOWEST) is the paper's finding for
CLIP and unverified for SigLIP: ``similarity_keep="highest"`` flips it.

Run: ``python examples/llava_interleave_generate.py [--retain 16]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_run as er


def main(argv=None) -> dict:
    return er.llava_like_main("llava_siglip", __doc__, argv, "LLaVA with a SigLIP tower", full_size=("qwen2-7b", 729))


if __name__ == "__main__":
    main()
