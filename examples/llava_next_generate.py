"""LLaVA-NeXT (AnyRes) with LiteLVLM: images of different aspect ratios, per-tile or global budgets.

Tiny random models built offline (``tiny_lvlm.py``): views of 64 px (M = 64
tokens), tile grids chosen from 64 x 128, 128 x 64 and 128 x 128, so a wide,
a square-ish and a tall image get 1 x 2, 2 x 2 and 2 x 1 tiles plus the base
view; the stock model unpads the tile grid to the aspect ratio and puts an
``image_newline`` after every grid row. ``--budget per_tile`` keeps R per
view, ``--budget global`` R per image. Printed as ``llava_generate.py``.

With real checkpoints (not runnable here)::

    model = LlavaNextForConditionalGeneration.from_pretrained("llava-hf/llava-v1.6-vicuna-7b-hf", ...)
    processor = AutoProcessor.from_pretrained("llava-hf/llava-v1.6-vicuna-7b-hf")
    clip = CLIPModel.from_pretrained("openai/clip-vit-large-patch14-336", ...)
    with enable_litelvlm(model, clip, clip_tok, num_retain=64, budget="per_tile"):
        out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"),
                             referring_expressions=[["the cup on the left"]], max_new_tokens=30)

Run: ``python examples/llava_next_generate.py [--retain 16] [--budget per_tile|global]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_run as er
import tiny_lvlm as tl  # noqa: E402
import torch  # noqa: E402

SIZES = torch.tensor([[50, 120], [100, 90], [128, 40]])  # (H, W) of the original images


def main(argv=None) -> dict:
    args, tok, clip, model = er.example_setup(
        "llava_next", __doc__, argv, 16,
        "tokens kept per view (per_tile) or image (global)", budget=("--budget", ["per_tile", "global"]))
    # the stock placeholder count of each image, as LlavaNextProcessor computes it
    from litelvlm_kernels.integrations.llava_next import geometry, stock_placeholder_count

    geos = [geometry(model, s) for s in SIZES]
    counts = [stock_placeholder_count(model, s) for s in SIZES]
    px = torch.randn(3, max(g["views"] for g in geos), 3, tl.IMAGE, tl.IMAGE,
                     generator=torch.Generator().manual_seed(0))
    ids, mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, n) for n in counts])
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=px, image_sizes=SIZES)
    print(f"LLaVA-NeXT (tiny): image sizes {SIZES.tolist()}, views {[g['views'] for g in geos]}, "
          f"budget {args.budget} R={args.retain}")
    return er.demo(model, clip, tok, inputs, [["the cup on the left"], ["a red car", "the man"]],
                   num_retain=args.retain, budget=args.budget, new_tokens=args.new_tokens, repeat=args.repeat,
                   full_size=("vicuna-7b", 2928))


if __name__ == "__main__":
    main()
