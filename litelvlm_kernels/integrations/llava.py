"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one CLIP view of M = 576 tokens per image.

Each image keeps R' = min(num_retain, M) of its M patch tokens, chosen by
``litelvlm_kernels.prune`` (the fused op) from the select-layer states, the
prompt's referring expressions and the last layer's [CLS] query / keys /
values, all captured in one vision forward (``capture.py``, no hooks). The kept select-layer
states go through the model's own projector (only R' rows are projected),
and ``order`` decides their order in the sequence ("official": similarity set
after the context tokens, as the public release; "spatial": raster order).
With ``vision_feature_select_strategy="full"`` the [CLS] row stays in front,
so an image takes R' + 1 placeholders.

A SigLIP tower (LLaVA-Interleave) has no [CLS]: with "full" every row is a
patch and an image takes R' placeholders; "default" would drop the first
real patch (stock transformers slices row 0 whatever it is) and is refused.
"""

from __future__ import annotations

import torch

from ._towers import config_get, model_part
from .lvlm import FamilyAdapter, Modality, register_adapter
from .views import view_reports


def grid_side(model) -> int:
    """Tokens per side of one view (24 for CLIP ViT-L/14-336)."""
    vc = model.config.vision_config
    return vc.image_size // vc.patch_size


def image_token_id(config) -> int:
    """``image_token_id`` (transformers 5) or ``image_token_index`` (4.x)."""
    return int(config_get(config, "image_token_id", "image_token_index"))


@register_adapter
class LlavaAdapter(FamilyAdapter):
    """``model_type == "llava"``: pixel_values [N, 3, H, W], one row per image."""

    model_types = ("llava",)

    def check_model(self) -> None:
        if self.strategy() == "default" and not self.pruner.has_cls:
            raise ValueError("vision_feature_select_strategy='default' drops row 0 as [CLS], but this SigLIP tower "
                             "has no [CLS] (row 0 is a real patch); SigLIP LLaVA checkpoints use 'full'")

    def side(self) -> int:
        return grid_side(self.model)

    def num_patches(self) -> int:
        return self.side() ** 2

    def modalities(self) -> list:
        extra = 1 if self.strategy() == "full" and self.pruner.has_cls else 0
        return [Modality("pixel_values", image_token_id(self.model.config), ("image_sizes",),
                         lambda kw: [self.num_patches() + extra] * kw["pixel_values"].shape[0],
                         self.image_features)]

    def image_features(self, kwargs: dict, cond) -> list:
        s = self.settings
        px = kwargs["pixel_values"]
        full = self.strategy() == "full" and self.pruner.has_cls  # [CLS] kept as a token
        res = self.pruner.prune(px, text=cond, num_retain=s.num_retain, multi_text=s.multi_text,
                                k_per_text=s.k_per_text, order=s.order, return_capture=full)
        tokens = res.tokens
        if full:  # [CLS] first, as in hidden_states[layer] itself
            tokens = torch.cat([res.capture.cls_hidden.unsqueeze(1), tokens], 1)
        feats = model_part(self.model, "multi_modal_projector")(tokens)
        g = self.side()
        views = view_reports(list(zip(res.indices, res.from_similarity)), (g, g))
        return list(feats), [[v] for v in views]
