"""``LiteLVLMLlavaForConditionalGeneration``: vLLM's LLaVA with LiteLVLM in its image path (LLaVA-1.5; LLaVA with a
SigLIP tower, the LLaVA-Interleave layout).

Chosen with ``--hf-overrides '{"architectures": ["LiteLVLMLlavaForConditionalGeneration"],
"litelvlm": {"scorer": ..., "num_retain": 192}}'`` (or the same keys in config.json) on a stock LLaVA
checkpoint. Everything but the image path is vLLM's own LLaVA: the language model, the projector, the
placeholder merge, weight loading of the LLaVA checkpoint.

Layout: one view per image, tokens 1:1 with patches (``selection.layouts.single``): R' = min(R, M)
placeholders (+1 for the [CLS] row of a CLIP tower with ``vision_feature_select_strategy="full"``; a SigLIP
tower has no [CLS]: "full" is all M patches, "default" would drop a real patch and is refused).

Image path (``embed_multimodal``): vLLM's tower up to the select layer, which for both tower kinds is the
state the scorer continues from (CLIP: -2, the last layer's input, [CLS] kept; SigLIP: -1, the tower's final
state, no post-layernorm); the selection (``selector.EngineSelector``: one fused select per batch of images
with the same budget, no host sync); vLLM's projector on the kept rows only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    _get_num_hidden_layers,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ...selection.kinds import is_siglip_config
from ...selection.layouts.single import Single
from .engine import ImageRows, check_rows, load_scorer_weights, scorer_selector
from .processing import LiteLVLMInfoMixin, LiteLVLMProcessorMixin
from .settings import CONFIG_KEY


def single_layout(config) -> Single:
    """The layout of one image: M patches, +1 row when a CLIP tower's [CLS] goes to the LLM ("full")."""
    vc = config.vision_config
    extra = int(config.vision_feature_select_strategy == "full" and not is_siglip_config(vc))
    return Single((vc.image_size // vc.patch_size) ** 2, extra)


class LiteLVLMLlavaProcessingInfo(LiteLVLMInfoMixin, LlavaProcessingInfo):
    """LLaVA's processing info with R' = min(R, M) (+1) tokens per image."""

    def kept_count(self, num_retain: int) -> int:
        return single_layout(self.get_hf_config()).kept_count(num_retain)

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return self.kept_count(self.budget())

    def item_counts(self, modality: str, mm_items, num_retain: int) -> list:
        return [self.kept_count(num_retain)] * mm_items.get_count(modality, strict=False)


class LiteLVLMLlavaDummyInputsBuilder(LlavaDummyInputsBuilder[LiteLVLMLlavaProcessingInfo]):
    """vLLM's LLaVA dummy inputs (largest image); the processor adds a dummy expression."""


class LiteLVLMLlavaMultiModalProcessor(LiteLVLMProcessorMixin, LlavaMultiModalProcessor):
    """Emits R' placeholders per image and the per-image text fields (``processing.py``)."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        from vllm.multimodal.parse import ImageProcessorItems

        if "image" in mm_items and not isinstance(mm_items["image"], ImageProcessorItems):
            raise ValueError("image_embeds: LiteLVLM selects tokens from the vision tower's own states, so it needs "
                             "the images themselves, not precomputed embeddings")
        return super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)


@MULTIMODAL_REGISTRY.register_processor(LiteLVLMLlavaMultiModalProcessor, info=LiteLVLMLlavaProcessingInfo,
                                        dummy_inputs=LiteLVLMLlavaDummyInputsBuilder)
class LiteLVLMLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA whose images keep R' = min(R, M) tokens chosen by LiteLVLM (see the module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        vc = config.vision_config
        layer, strategy = config.vision_feature_layer, config.vision_feature_select_strategy
        built = _get_num_hidden_layers(config) if isinstance(layer, int) else None
        siglip = is_siglip_config(vc)
        # the select layer must be the state the scorer continues from (docs/design.md 11.1)
        end = vc.num_hidden_layers if siglip else vc.num_hidden_layers - 1
        if built != end:
            raise ValueError(f"vision_feature_layer={layer!r}: LiteLVLM needs the select layer to be the state its "
                             f"scorer reads ({'-1, the tower' if siglip else '-2, the last layer'}'s "
                             f"{'output' if siglip else 'input'}, as {'LLaVA-Interleave' if siglip else 'LLaVA-1.5'})")
        if strategy not in ("default", "full") or (siglip and strategy != "full"):
            raise ValueError(f"vision_feature_select_strategy={strategy!r}: "
                             + ("a SigLIP tower has no [CLS] to drop: 'full'" if siglip else "default or full"))
        self.litelvlm, self.litelvlm_settings = scorer_selector(config)
        self.litelvlm_layout = single_layout(config)
        self.litelvlm_drop_cls = 0 if siglip else 1  # the tower's row 0 is [CLS] (not a patch) for CLIP

    def embed_multimodal(self, **kwargs: object):
        if kwargs.get("image_embeds") is not None:
            raise ValueError("image_embeds: LiteLVLM needs the images (it selects from the tower's own states)")
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        pixels = image_input["pixel_values"]
        if isinstance(pixels, (list, tuple)):
            pixels = torch.stack(list(pixels))
        states = self.vision_tower(pixels, feature_select_strategy="full")  # [N, (1 +) M, D]: the scorer's end
        rows = ImageRows.of(kwargs)
        cond = self.litelvlm.fold(rows.text_ids, rows.num_texts)
        chosen = self.litelvlm.select(states[:, self.litelvlm_drop_cls:], states, cond, rows.budgets)
        layout = self.litelvlm_layout
        feats = states[:, 1 - layout.extra:] if self.litelvlm_drop_cls else states  # what the projector reads
        indices = [idx for idx, _ in chosen]
        sizes = [layout.extra + len(idx) for idx in indices]
        check_rows(sizes, rows.counts)
        if len(set(sizes)) == 1:  # one gather and one projector call for the batch
            return tuple(self.multi_modal_projector(layout.assemble(feats, torch.stack(indices))).unbind(0))
        kept = [layout.assemble(feats[i:i + 1], idx[None])[0] for i, idx in enumerate(indices)]
        return torch.split(self.multi_modal_projector(torch.cat(kept)), sizes)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_scorer_weights(self, super().load_weights, weights)


__all__ = ["LiteLVLMLlavaForConditionalGeneration", "CONFIG_KEY"]
