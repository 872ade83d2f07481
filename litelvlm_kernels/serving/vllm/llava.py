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
state, no post-layernorm), looked up per image first (``tower_cache.py``: a second expression on an image
runs no tower) and run on the rest in chunks of stock vLLM's encoder batch; the selection
(``selector.EngineSelector``: one fused select per batch of images with the same budget, no host sync); the
kept indices appended to ``litelvlm.report_path`` for the requests that ask (``report.py``); vLLM's
projector on the kept rows only.
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
from .engine import ImageRows, load_scorer_weights, pixel_input, project_kept, scorer_selector
from .processing import LiteLVLMInfoMixin, LiteLVLMProcessorMixin
from .report import write_records
from .settings import CONFIG_KEY
from .tower_cache import tower_cache_for


def single_layout(config) -> Single:
    """The layout of one image: M patches, +1 row when a CLIP tower's [CLS] goes to the LLM ("full")."""
    vc = config.vision_config
    extra = int(config.vision_feature_select_strategy == "full" and not is_siglip_config(vc))
    return Single((vc.image_size // vc.patch_size) ** 2, extra)


def check_llava_config(config) -> None:
    """The select layer must be the state the scorer continues from (docs/design.md 11.1: CLIP -2, the last layer's
    input; SigLIP -1, the tower's output) and a SigLIP tower's features all its patches ("full"); ValueError naming
    the field otherwise."""
    vc = config.vision_config
    layer, strategy = config.vision_feature_layer, config.vision_feature_select_strategy
    built = _get_num_hidden_layers(config) if isinstance(layer, int) else None
    siglip = is_siglip_config(vc)
    end = vc.num_hidden_layers if siglip else vc.num_hidden_layers - 1
    if built != end:
        raise ValueError(f"vision_feature_layer={layer!r}: LiteLVLM needs the select layer to be the state its "
                         f"scorer reads ({'-1, the tower' if siglip else '-2, the last layer'}'s "
                         f"{'output' if siglip else 'input'}, as {'LLaVA-Interleave' if siglip else 'LLaVA-1.5'})")
    if strategy not in ("default", "full") or (siglip and strategy != "full"):
        raise ValueError(f"vision_feature_select_strategy={strategy!r}: "
                         + ("a SigLIP tower has no [CLS] to drop: 'full'" if siglip else "default or full"))


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


@MULTIMODAL_REGISTRY.register_processor(LiteLVLMLlavaMultiModalProcessor, info=LiteLVLMLlavaProcessingInfo,
                                        dummy_inputs=LiteLVLMLlavaDummyInputsBuilder)
class LiteLVLMLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA whose images keep R' = min(R, M) tokens chosen by LiteLVLM (see the module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        check_llava_config(self.config)
        self.litelvlm, self.litelvlm_settings = scorer_selector(self.config)
        self.litelvlm_layout = single_layout(self.config)
        # the tower's row 0 is [CLS] (not a patch) for CLIP; SigLIP has none
        self.litelvlm_drop_cls = 0 if is_siglip_config(self.config.vision_config) else 1
        layout = self.litelvlm_layout  # stock vLLM's placeholders per image: M (+1), what its encoder budget counts
        self.litelvlm_towers = tower_cache_for(vllm_config, self.litelvlm_settings, layout.stock_count())
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        self.litelvlm_grid = (side, side)

    def embed_multimodal(self, **kwargs: object):
        image_input = pixel_input(self, kwargs)
        if image_input is None:
            return []
        pixels = image_input["pixel_values"]
        if isinstance(pixels, (list, tuple)):
            pixels = torch.stack(list(pixels))
        rows = ImageRows.of(kwargs)
        states = self.litelvlm_towers.stacked(rows.keys, pixels, self._litelvlm_tower)  # [N, (1 +) M, D]
        chosen = self._select(states, rows)
        layout = self.litelvlm_layout
        feats = states[:, 1 - layout.extra:] if self.litelvlm_drop_cls else states  # what the projector reads
        return project_kept(layout, feats, chosen, rows.counts, self.multi_modal_projector)

    def _select(self, states: torch.Tensor, rows: ImageRows) -> list:
        """Per image (kept indices, from-similarity flags): the expressions folded (cached by content), one fused
        select per budget; the records of the requests that ask for them (``report.py``)."""
        cond = self.litelvlm.fold(rows.text_ids, rows.num_texts)
        chosen = self.litelvlm.select(states[:, self.litelvlm_drop_cls:], states, cond, rows.budgets)
        write_records(self.litelvlm_settings.report_path, rows.reports, [[c] for c in chosen], rows.budgets,
                      rows.counts, [[self.litelvlm_grid]] * len(chosen))
        return chosen

    def _litelvlm_tower(self, pixels: torch.Tensor) -> torch.Tensor:
        """vLLM's tower up to the select layer, every row kept: the scorer's end state."""
        return self.vision_tower(pixels, feature_select_strategy="full")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_scorer_weights(self, super().load_weights, weights)


__all__ = ["LiteLVLMLlavaForConditionalGeneration", "CONFIG_KEY", "check_llava_config"]
