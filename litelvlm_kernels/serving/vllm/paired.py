"""The paired scorer inside the engine (Qwen2.5-VL, Qwen3-VL; docs/design.md section 12).

A paired scorer needs the WHOLE scorer checkpoint (``litelvlm.scorer``: a CLIPModel, or a SiglipModel with its
pooling head): its vision tower scores the image, its text tower and projections fold the expressions. Nothing
of the LVLM's own tower is read, so unlike ``EngineSelector`` (which holds the few parts an own tower lacks) this
builds the scorer model whole, as transformers modules from the checkpoint's config, replicated on every rank, and
loads every tensor from the checkpoint (``engine.load_scorer_weights``; ``checkpoint_names`` names them all).

The scorer is ``selection.paired.PairedScorer`` over that model, the same object ``enable_litelvlm`` uses, so both
front ends give it the same image (the pixel rows the LVLM's tower sees, unpatchified and resized for the scorer)
and map its signals to the same tokens; the fold cache and ``fold`` are ``EngineSelector``'s.
"""

from __future__ import annotations

import torch
from torch import nn

from ...api import select_scores
from ...selection.kinds import paired_scorer_for
from ...selection.text import FoldCache, TextCondition
from .selector import EngineSelector
from .settings import ServingSettings


class PairedSelector(EngineSelector):
    """The scorer model (``scorer_model``), the paired scorer over it and the fold cache.

    Parameters
    ----------
    vision_config : the LVLM's vision config (``patch_size``, ``spatial_merge_size``, ``temporal_patch_size``).
    scorer_config : the scorer checkpoint's CLIPConfig / SiglipConfig.
    settings : ServingSettings
    image_mean, image_std : the LVLM processor's normalisation (undone before the scorer's own).
    fold_cache : int
        Folded expressions kept (by content).
    """

    def __init__(self, vision_config, scorer_config, settings: ServingSettings, *, image_mean, image_std,
                 fold_cache: int = 256):
        nn.Module.__init__(self)  # EngineSelector's own __init__ builds an own tower's parts: not wanted here
        import transformers

        self.settings = settings
        # built in the engine's default dtype and device (vLLM's model construction context)
        self.scorer_model = transformers.AutoModel.from_config(scorer_config).to(torch.get_default_dtype()).eval()
        self.scorer = paired_scorer_for(self.scorer_model, None, image_mean=image_mean, image_std=image_std,
                                        patch=vision_config.patch_size, merge=vision_config.spatial_merge_size,
                                        temporal=vision_config.temporal_patch_size,
                                        head_contribution=settings.head_contribution)
        self._folds = FoldCache(fold_cache)
        self.recorder: list | None = None  # as EngineSelector's: (kept count, indices, from_similarity) per image

    def checkpoint_names(self) -> dict:
        """Every parameter of the scorer model, read from the scorer checkpoint under its own name."""
        return {f"scorer_model.{k}": ("scorer", k) for k, _ in self.scorer_model.named_parameters()}

    @torch.no_grad()
    def select_images(self, pixel_rows: torch.Tensor, grids: list, cond: TextCondition, counts: list) -> list:
        """Per image ``(indices [R'_i], from_similarity [R'_i])`` among its h x w tokens, ascending (raster order).

        ``pixel_rows`` [sum of t gh gw, C temporal p p]: the images' rows as the LVLM's tower sees them (normalised
        with the LVLM processor's mean / std); ``grids`` per image [t, gh, gw]; ``cond`` the images' folded
        expressions (``fold``); ``counts`` per image R' (its placeholders)."""
        s = self.settings
        out, start = [], 0
        for i, (thw, kept) in enumerate(zip(grids, counts)):
            n = thw[0] * thw[1] * thw[2]
            rows, start = pixel_rows[start:start + n], start + n
            sim, con, _ = self.scorer.token_scores(rows, thw, (cond.folded.w[i:i + 1], cond.folded.b[i:i + 1]),
                                                   min_patches=s.scorer_min_patches, max_patches=s.scorer_max_patches)
            res = select_scores(sim, con, num_retain=int(kept), multi_text=s.multi_text, k_per_text=s.k_per_text,
                                num_texts=cond.num_texts[i:i + 1].to(sim.device), order="spatial")
            out.append((res.indices[0], res.from_similarity[0]))
            if self.recorder is not None:
                self.recorder.append((int(kept), res.indices[0].cpu(), res.from_similarity[0].cpu()))
        return out


__all__ = ["PairedSelector"]
