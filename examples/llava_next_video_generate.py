"""LLaVA-NeXT-Video with LiteLVLM: every frame of a clip pruned with the clip's referring expression.

Tiny random models built offline (``tiny_lvlm.py``): frames of 64 px (64
patch tokens), pooled 2 x 2 by the model's resampler to 16 tokens per frame,
as the real model pools 576 to 144. Two videos of 4 frames, one prompt each.
``--video-budget per_frame`` keeps R pooled tokens per frame, ``per_clip`` R
per video. Printed as ``llava_generate.py``.

A real checkpoint (llava-hf/LLaVA-NeXT-Video-7B-hf with openai/clip-vit-large-patch14-336)
takes the same calls, with ``processor(videos=...)``: docs/integrations.md, section
"Video: LLaVA-NeXT-Video", has the snippet.

Run: ``python examples/llava_next_video_generate.py [--retain 4] [--video-budget per_frame|per_clip]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_run as er
import tiny_lvlm as tl  # noqa: E402
import torch  # noqa: E402

FRAMES = 4


def main(argv=None) -> dict:
    args, tok, clip, model = er.example_setup(
        "llava_next_video", __doc__, argv, 4,
        "pooled tokens kept per frame (per_frame) or video", budget=("--video-budget", ["per_frame", "per_clip"]))
    pooled = (tl.IMAGE // tl.PATCH // model.config.spatial_pool_stride) ** 2  # 16 per frame
    ids, mask = tl.prompt_ids([1, 1], [(tl.VIDEO_TOKEN, FRAMES * pooled)] * 2)
    videos = torch.randn(2, FRAMES, 3, tl.IMAGE, tl.IMAGE, generator=torch.Generator().manual_seed(0))
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values_videos=videos)
    print(f"LLaVA-NeXT-Video (tiny): 2 videos x {FRAMES} frames x {pooled} pooled tokens, "
          f"{args.video_budget} R={args.retain}")
    return er.demo(model, clip, tok, inputs, ["the dog on the right", ["a red car", "the man"]],
                   num_retain=args.retain, video_budget=args.video_budget, new_tokens=args.new_tokens,
                   repeat=args.repeat, full_size=("vicuna-7b", 8 * 144))


if __name__ == "__main__":
    main()
