"""``LiteLVLMPaliGemmaForConditionalGeneration``: vLLM's PaliGemma with LiteLVLM in its image path.

Chosen with ``--hf-overrides '{"architectures": ["LiteLVLMPaliGemmaForConditionalGeneration"],
"litelvlm": {"scorer": <the SigLIP checkpoint>, "num_retain": 64}}'`` on a stock PaliGemma checkpoint. Everything
but the image path is vLLM's PaliGemma: the Gemma LLM (which scales the text embeddings, not the image features, as
transformers 5), the prompt (vLLM inserts <image> x n + <bos> in front of the text and appends "\\n"; one image
per prompt), weight loading.

Layout: one view per image, no [CLS] (``selection.layouts.single``): R' = min(R, M) placeholders. The count is
the layout's, asked by vLLM's own prompt insertion (``get_num_image_tokens``) at the request's budget.

Image path (``embed_multimodal``): vLLM's SigLIP tower, run by its parts so as to stop before its post-layernorm
(its forward applies it): the last layer's output h is the scorer's select-layer and end state (the scorer applies
the ORIGINAL SigLIP's post-layernorm and pooling head, from ``litelvlm.scorer``: PaliGemma's own post-layernorm was
trained further for the LLM); then the kept rows of h through PaliGemma's post-layernorm and projector, which is
what the stock model feeds its LLM for those rows (both act row by row).

Prefix-LM: vLLM marks PaliGemma's image (+ <bos>) positions bidirectional from the placeholder ranges, so the kept
tokens keep that on backends that honour it; vLLM's CPU attention ignores it and runs PaliGemma fully causal.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.paligemma import (
    PaliGemmaDummyInputsBuilder,
    PaliGemmaForConditionalGeneration,
    PaliGemmaMultiModalProcessor,
    PaliGemmaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ...selection.kinds import is_siglip_config
from ...selection.layouts.single import Single
from .engine import ImageRows, load_scorer_weights, pixel_input, project_kept, scorer_selector
from .processing import LiteLVLMInfoMixin, LiteLVLMProcessorMixin
from .report import write_records


def paligemma_layout(config) -> Single:
    """M patch tokens per image, nothing in front (SigLIP has no [CLS])."""
    vc = config.vision_config
    return Single((vc.image_size // vc.patch_size) ** 2)


def check_paligemma_config(config) -> None:
    """A SigLIP tower (the scorer reads its pooling head from the original SigLIP); ValueError naming the field."""
    vc = config.vision_config
    if not is_siglip_config(vc):
        raise ValueError(f"vision_config: model_type={vc.model_type!r}; LiteLVLM serves PaliGemma with its SigLIP "
                         "tower (siglip_vision_model) only")


class LiteLVLMPaliGemmaProcessingInfo(LiteLVLMInfoMixin, PaliGemmaProcessingInfo):
    """PaliGemma's processing info with R' = min(R, M) tokens per image."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return paligemma_layout(self.get_hf_config()).kept_count(self.budget())

    def item_counts(self, modality: str, mm_items, num_retain: int) -> list:
        n = mm_items.get_count(modality, strict=False)
        return [paligemma_layout(self.get_hf_config()).kept_count(num_retain)] * n


class LiteLVLMPaliGemmaDummyInputsBuilder(PaliGemmaDummyInputsBuilder):
    """vLLM's PaliGemma dummy inputs (one image of the tower's size); the processor adds a dummy expression."""


class LiteLVLMPaliGemmaMultiModalProcessor(LiteLVLMProcessorMixin, PaliGemmaMultiModalProcessor):
    """Inserts R' placeholders (+ <bos>) per image and adds the per-image text fields (``processing.py``)."""


@MULTIMODAL_REGISTRY.register_processor(LiteLVLMPaliGemmaMultiModalProcessor, info=LiteLVLMPaliGemmaProcessingInfo,
                                        dummy_inputs=LiteLVLMPaliGemmaDummyInputsBuilder)
class LiteLVLMPaliGemmaForConditionalGeneration(PaliGemmaForConditionalGeneration):
    """PaliGemma whose images keep R' = min(R, M) tokens chosen by LiteLVLM (see the module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        check_paligemma_config(self.config)
        if self.vision_tower.vision_model.post_layernorm is None:
            raise ValueError("vision_config: vLLM built the tower without the post_layernorm PaliGemma's features "
                             "go through")
        self.litelvlm, self.litelvlm_settings = scorer_selector(self.config)
        self.litelvlm_layout = paligemma_layout(self.config)

    def embed_multimodal(self, **kwargs: object):
        image_input = pixel_input(self, kwargs)
        if image_input is None:
            return []
        vt = self.vision_tower.vision_model
        pixels = image_input["data"]
        if isinstance(pixels, (list, tuple)):
            pixels = torch.stack(list(pixels))
        pixels = pixels.to(dtype=self.vision_tower.get_input_embeddings().weight.dtype)
        # the tower's forward would apply post_layernorm: run its parts and stop before it
        h = vt.encoder(inputs_embeds=vt.embeddings(pixels), return_all_hidden_states=False)  # [N, M, D]
        rows = ImageRows.of(kwargs)
        cond = self.litelvlm.fold(rows.text_ids, rows.num_texts)
        chosen = self.litelvlm.select(h, h, cond, rows.budgets)
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        write_records(self.litelvlm_settings.report_path, rows.reports, [[c] for c in chosen], rows.budgets,
                      rows.counts, [[(side, side)]] * len(chosen))
        return project_kept(self.litelvlm_layout, h, chosen, rows.counts,
                            lambda kept: self.multi_modal_projector(vt.post_layernorm(kept)))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_scorer_weights(self, super().load_weights, weights)


__all__ = ["LiteLVLMPaliGemmaForConditionalGeneration", "check_paligemma_config"]
