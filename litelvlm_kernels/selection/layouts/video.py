"""Pooled video frames (LLaVA-NeXT-Video, LLaVA-OneVision): F frames of P pooled tokens each, in order.

Each frame's tower grid is pooled to P tokens (NeXT-Video: average pooling with the config's stride;
OneVision: a 2x bilinear downsample), the frames are concatenated, and OneVision closes the video with
one newline. The scores reach the pooled tokens through the same pooling as the features (the front
end pools them, with its family's own op). ``video_budget="per_frame"``: every frame keeps R' of its P
tokens; ``"per_clip"``: R' over all of the video's tokens, each frame's contributions as shares of its own
total (``views.py``). Kept tokens stay in frame, then raster order.
"""

from __future__ import annotations

import dataclasses

import torch

from ..views import select_views

__all__ = ["PooledVideo"]


@dataclasses.dataclass(frozen=True)
class PooledVideo:
    """``pooled_per_frame``: P; ``closing_newline``: one newline after the last frame (OneVision)."""

    pooled_per_frame: int
    closing_newline: bool = False

    @property
    def side(self) -> int:
        return int(round(self.pooled_per_frame ** 0.5))

    def stock_count(self, frames: int) -> int:
        return frames * self.pooled_per_frame + int(self.closing_newline)

    def kept_count(self, frames: int, num_retain: int, video_budget: str, image_newline: str) -> int:
        """Placeholders of one video with LiteLVLM, before the model runs."""
        P = self.pooled_per_frame
        kept = min(num_retain, frames * P) if video_budget == "per_clip" else frames * min(num_retain, P)
        return kept + int(self.closing_newline and image_newline != "none")

    def select(self, s: torch.Tensor, c: torch.Tensor, num, videos: int, settings) -> list:
        """Per frame ``(indices, from_similarity)``: s [B F, T, P], c [B F, P] of ``videos`` = B videos."""
        frames = s.shape[0] // videos
        groups = [list(range(b * frames, (b + 1) * frames)) for b in range(videos)]
        valid = torch.ones(c.shape, dtype=torch.bool, device=c.device)
        return select_views(s, c, num, valid, groups, settings, joint=settings.video_budget == "per_clip")

    def assemble(self, proj: torch.Tensor, chosen: list, videos: int, newline, mode: str) -> list:
        """Per video [n, H]: its frames' kept rows of ``proj`` [B F, P, H] in order (+ the closing newline)."""
        frames = proj.shape[0] // videos
        tail = []
        if self.closing_newline and mode != "none":
            tail = [newline.to(proj.device, proj.dtype)[None]]
        return [torch.cat([proj[f, chosen[f][0]] for f in range(b * frames, (b + 1) * frames)] + tail)
                for b in range(videos)]
