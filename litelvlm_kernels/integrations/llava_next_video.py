"""LLaVA-NeXT-Video (``LlavaNextVideoForConditionalGeneration``): frames sharing a referring expression.

Why this model: its tower is CLIP ViT-L/14-336 and it is in transformers (Video-LLaVA's LanguageBind
towers are CLIP-shaped too, but their text tower is not a CLIP text model we can pair with them).

The stock video path: every frame through the tower, select-layer states
without [CLS] (M = 576), the model's ``vision_resampler`` (2 x 2 average
pooling: 576 -> 144 tokens per frame), the projector, frames concatenated
(8 frames -> 1152 placeholders). The pooled token is the unit the LLM sees,
so LiteLVLM selects pooled tokens:

* text similarity of a pooled token: the method's formula on the pooled
  select-layer state (``text_similarity`` on the resampler's output, which
  lives in the tower's width for "average" and "max" pooling; "conv" pooling
  changes the width and is refused);
* [CLS] contribution of a pooled token: the mean of the contributions of the
  patches it pools (the frame's own [CLS]), pooled with the same window;
* every frame's expression is its prompt's (one text per clip, folded once);
* ``video_budget="per_frame"`` (default): every frame keeps R' = min(R, 144)
  pooled tokens; ``"per_clip"``: one selection of R' over all frames' pooled
  tokens (contribution shares per frame, as LLaVA-NeXT's global budget).

Kept tokens stay in frame order and, within a frame, raster order. Images
given to this model go through the LLaVA-NeXT path (``llava_next.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..selection.layouts.video import PooledVideo
from ..selection.towers import config_get, model_part
from ..selection.views import contribution, view_reports, view_similarity
from .adapter import Modality, register_adapter
from .llava_next import LlavaNextAdapter


@register_adapter
class LlavaNextVideoAdapter(LlavaNextAdapter):
    """``model_type == "llava_next_video"``: pixel_values_videos [B, F, 3, H, W], one video per prompt."""

    model_types = ("llava_next_video",)

    def check_model(self) -> None:
        super().check_model()
        mode = config_get(self.model.config, "spatial_pool_mode", default="average")
        if mode not in ("average", "max"):
            raise ValueError(f"spatial_pool_mode={mode!r}: only 'average' and 'max' keep the pooled tokens in "
                             "the tower's width, where the text similarity is defined")

    def pooled_per_frame(self) -> int:
        stride = int(config_get(self.model.config, "spatial_pool_stride", default=2))
        return (self.side() // stride) ** 2

    def modalities(self) -> list:
        video_id = int(config_get(self.model.config, "video_token_id", "video_token_index"))
        video = Modality("pixel_values_videos", video_id, (),
                         lambda kw: [kw["pixel_values_videos"].shape[1] * self.pooled_per_frame()]
                         * kw["pixel_values_videos"].shape[0],
                         self.video_features, pixel_dims=(5,), stacked=True)
        return super().modalities() + [video]

    def video_features(self, kwargs: dict, cond) -> list:
        px = kwargs["pixel_values_videos"]  # [B, F, 3, H, W] (check_inputs)
        B, Fr = px.shape[:2]
        cap = self.pruner.capture(px.flatten(0, 1), full_tower=True)
        resampler = model_part(self.model, "vision_resampler")
        pooled = resampler(cap.hidden)                                         # [B F, P, Dv]: scored
        feats_in = self.features_of(cap, kwargs)
        stock = pooled if feats_in is cap.hidden else resampler(feats_in)      # [B F, P, C]: projected, as stock
        frame_item = torch.arange(B).repeat_interleave(Fr)
        s, num = view_similarity(self.pruner.ln_eps, pooled, cond, frame_item)
        stride = int(config_get(self.model.config, "spatial_pool_stride", default=2))
        g = self.side()
        c = F.avg_pool2d(contribution(cap).view(-1, 1, g, g), stride, stride).flatten(1)  # [B F, P]
        video = PooledVideo(self.pooled_per_frame())
        chosen = video.select(s, c, num, B, self.settings)
        proj = model_part(self.model, "multi_modal_projector")(stock)           # [B F, P, H], as stock
        feats = video.assemble(proj, chosen, B, None, self.settings.image_newline)
        return feats, [view_reports(chosen[b * Fr:(b + 1) * Fr], (video.side, video.side)) for b in range(B)], cap
