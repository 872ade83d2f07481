"""LLaVA-OneVision (SigLIP tower; AnyRes images, pooled video frames) with LiteLVLM.

SigLIP has no [CLS]: the similarity and the contribution come from the
original SigLIP checkpoint's attention-pooling head (``siglip.py``). The
stock model unpads the tile grid to the image's aspect ratio, downsamples it
bilinearly when it holds more than ``anyres_max_N`` views' worth of cells,
and puts an ``image_newline`` after every row; videos are pooled 2 x 2 per
frame with one newline after the clip. LiteLVLM pushes its scores through
the same spatial ops and selects among the tokens the LLM sees
(``litelvlm_kernels/integrations/llava_onevision.py``).

Tiny random models built offline (``tiny_lvlm.py``): views of 64 px (8 x 8 =
64 tokens), tiles of 1 x 2, 2 x 1 or 2 x 2 views, ``anyres_max_2`` (the 2 x 2
image below is cropped to 16 x 12 cells and downsampled to 13 x 9), frames
pooled to 4 x 4. ``--budget per_tile|global``: two prompts with one image each
(R per view or per image); ``--budget per_frame|per_clip``: two prompts with a
4-frame video each (R per frame or per video). Printed as ``llava_generate.py``.

With real checkpoints (not runnable here: needs the downloads)::

    from transformers import AutoProcessor, AutoTokenizer, LlavaOnevisionForConditionalGeneration, SiglipModel
    model = LlavaOnevisionForConditionalGeneration.from_pretrained("llava-hf/llava-onevision-qwen2-7b-ov-hf", ...)
    processor = AutoProcessor.from_pretrained("llava-hf/llava-onevision-qwen2-7b-ov-hf")
    siglip = SiglipModel.from_pretrained("google/siglip-so400m-patch14-384", ...)
    siglip_tok = AutoTokenizer.from_pretrained("google/siglip-so400m-patch14-384")
    with enable_litelvlm(model, siglip, siglip_tok, num_retain=64, budget="per_tile"):
        out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"),
                             referring_expressions=[["the cup on the left"]], max_new_tokens=30)

(docs/integrations.md, section "LLaVA-OneVision", has the full snippet.)

Run: ``python examples/llava_onevision_generate.py [--retain 8] [--budget per_tile|global|per_frame|per_clip]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_run as er
import tiny_lvlm as tl  # noqa: E402
import torch  # noqa: E402

SIZES = torch.tensor([[84, 68], [50, 120]])  # (H, W): 2 x 2 tiles (downsampled), 1 x 2 tiles
FRAMES = 4


def main(argv=None) -> dict:
    args, tok, siglip, model = er.example_setup(
        "llava_onevision", __doc__, argv, 8, "tokens kept per view (per_tile), image (global), frame (per_frame) "
        "or video (per_clip)", budget=("--budget", ["per_tile", "global", "per_frame", "per_clip"]))
    g = torch.Generator().manual_seed(0)
    run = dict(num_retain=args.retain, new_tokens=args.new_tokens, repeat=args.repeat)
    if args.budget in ("per_frame", "per_clip"):
        from litelvlm_kernels.integrations.llava_onevision import pooling

        pooled = pooling(model, torch.zeros(1, tl.M, 1)).shape[1]                   # 16 per frame, as 729 -> 196
        ids, mask = tl.prompt_ids([1, 1], [(tl.VIDEO_TOKEN, FRAMES * pooled + 1)] * 2)  # + 1: the clip's newline
        videos = torch.randn(2, FRAMES, 3, tl.IMAGE, tl.IMAGE, generator=g)
        print(f"LLaVA-OneVision (tiny): 2 videos x {FRAMES} frames x {pooled} pooled tokens, "
              f"{args.budget} R={args.retain}")
        return er.demo(model, siglip, tok, dict(input_ids=ids, attention_mask=mask, pixel_values_videos=videos),
                       ["the dog on the right", ["a red car", "the man"]], video_budget=args.budget,
                       full_size=("qwen2-7b", 32 * 196 + 1), **run)
    # the stock placeholder count of each image, as LlavaOnevisionProcessor computes it
    from litelvlm_kernels.integrations.llava_onevision import geometry

    geos = [geometry(model, s, model.config.vision_aspect_ratio) for s in SIZES]
    ids, mask = tl.prompt_ids([1, 1], [(tl.IMAGE_TOKEN, geo["stock"]) for geo in geos])
    px = torch.randn(2, max(geo["views"] for geo in geos), 3, tl.IMAGE, tl.IMAGE, generator=g)
    print(f"LLaVA-OneVision (tiny): image sizes {SIZES.tolist()}, views {[geo['views'] for geo in geos]}, final "
          f"tile grids {[geo['grid'] for geo in geos]}, {args.budget} R={args.retain}")
    return er.demo(model, siglip, tok, dict(input_ids=ids, attention_mask=mask, pixel_values=px, image_sizes=SIZES),
                   [["the cup on the left"], ["a red car", "the man"]], budget=args.budget,
                   full_size=("qwen2-7b", 729 + 81 * 82), **run)  # a 3 x 3 grid at 384 px: 729 + 81 x 82


if __name__ == "__main__":
    main()
