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

from ..selection.layouts.single import Single
from ..selection.towers import config_get, model_part
from ..selection.views import view_reports
from .adapter import FamilyAdapter, Modality, register_adapter


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
    per_call_strategy = True  # a call's vision_feature_select_strategy changes the placeholder count, as stock
    tower_sees_output_flags = True  # LlavaModel.forward hands its **kwargs to get_image_features and the tower

    def check_model(self) -> None:
        self.check_strategy(self.strategy())

    def check_strategy(self, st: str) -> None:
        if st == "default" and not self.pruner.has_cls:
            raise ValueError("vision_feature_select_strategy='default' drops row 0 as [CLS], but this SigLIP tower "
                             "has no [CLS] (row 0 is a real patch); SigLIP LLaVA checkpoints use 'full'")

    def side(self) -> int:
        return grid_side(self.model)

    def num_patches(self) -> int:
        return self.side() ** 2

    def modalities(self) -> list:
        return [Modality("pixel_values", image_token_id(self.model.config), ("image_sizes",),
                         lambda kw: [Single(self.num_patches(), self.extra(kw)).stock_count()]
                         * kw["pixel_values"].shape[0], self.image_features)]

    def extra(self, kwargs: dict) -> int:
        """1 when [CLS] goes to the LLM as a token too (a CLIP tower with "full"); the call's strategy counts."""
        st = self.strategy(kwargs)
        self.check_strategy(st)
        return 1 if st == "full" and self.pruner.has_cls else 0

    def image_features(self, kwargs: dict, cond) -> tuple:
        s = self.settings
        px = kwargs["pixel_values"]
        res = self.pruner.prune(px, text=cond, num_retain=s.num_retain, multi_text=s.multi_text,
                                k_per_text=s.k_per_text, order=s.order, return_tokens=False, return_capture=True,
                                full_tower=True)
        feats = self.features_of(res.capture, kwargs)  # [N, (1 +) M, C]: what the stock projector reads
        tokens = Single(self.num_patches(), self.extra(kwargs)).assemble(feats, res.indices)  # [CLS] first if kept
        projected = model_part(self.model, "multi_modal_projector")(tokens)
        g = self.side()
        views = view_reports(list(zip(res.indices, res.from_similarity)), (g, g))
        return list(projected), [[v] for v in views], res.capture
