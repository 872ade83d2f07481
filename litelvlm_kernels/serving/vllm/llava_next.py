"""``LiteLVLMLlavaNextForConditionalGeneration``: vLLM's LLaVA-NeXT with LiteLVLM in its image path (AnyRes, CLIP
tower).

Chosen with ``--hf-overrides '{"architectures": ["LiteLVLMLlavaNextForConditionalGeneration"], "litelvlm":
{"scorer": ..., "num_retain": 64}}'`` on a stock LLaVA-NeXT checkpoint. Everything but the image path is vLLM's own
LLaVA-NeXT: the language model, the projector, ``image_newline``, the placeholder merge, weight loading.

Layout (``selection.layouts.anyres.AnyRes``, docs/design.md 11.4): a base view plus nh x nw tiles whose grid is
cropped ("unpadded") to the image's aspect ratio. Tokens cut by the unpadding are never candidates; with
``budget="per_tile"`` (default) the base view and every tile keep min(R, real tokens of the tile), with
``budget="global"`` the image keeps min(R, its real tokens) over all views; the kept tokens stay in the stock
raster order (kept base tokens, then kept tile tokens row by row of the cropped grid) and ``image_newline`` "all"
(default: one newline after every row of the cropped grid, as stock, so the count depends on the image size only)
or "none". The count is ``AnyRes.kept_count`` of the image's geometry, for the prompt and for the memory profile
(vLLM's ``get_image_size_with_most_features`` takes the largest of our counts over the pinpoints).

Image path (``embed_multimodal``): each image's real views only (1 + nh nw from ``image_sizes``; vLLM pads
``pixel_values`` to the request's largest image) through vLLM's tower up to the last layer's input, [CLS] kept
(the scorer's end state); per view the folded texts' similarity and the [CLS] contribution; ``select_views`` over
the valid tokens; vLLM's projector on the views' patch rows; ``AnyRes.assemble`` with vLLM's ``image_newline``
(vLLM's ``_merge_image_patch_embeddings`` lays out full grids only); each image's rows checked against the
processor's count. Host syncs on a GPU: the shared ``select_views`` drops each view's padding cells and
``AnyRes.assemble`` orders the kept cells on the host, a few small reads per view (the LLaVA file has none).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder, _get_num_hidden_layers
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ...selection.kinds import is_siglip_config
from ...selection.layouts.anyres import AnyRes
from ...selection.views import select_views
from .engine import ImageRows, check_rows, host_sizes, load_scorer_weights, pixel_input, scorer_selector
from .processing import LiteLVLMInfoMixin, LiteLVLMProcessorMixin, refuse_embeddings
from .report import write_records
from .selector import device_tensor
from .tower_cache import tower_cache_for


def check_next_config(config) -> None:
    """Refuse, by the config field's name, a LLaVA-NeXT this file cannot serve."""
    vc = config.vision_config
    if is_siglip_config(vc):
        raise ValueError("vision_config: LiteLVLM serves LLaVA-NeXT with a CLIP tower (its [CLS] and last layer "
                         "score the views); a SigLIP tower is served as LLaVA-OneVision or LLaVA (Interleave)")
    layer = config.vision_feature_layer
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer!r}: LiteLVLM needs one layer, -2 (the last layer's input, "
                         "which its scorer reads); a list concatenates several layers' states")
    if _get_num_hidden_layers(config) != vc.num_hidden_layers - 1:
        raise ValueError(f"vision_feature_layer={layer!r}: LiteLVLM needs -2, the last layer's input, which its "
                         "scorer reads (as LLaVA-NeXT)")
    if config.vision_feature_select_strategy != "default":
        raise ValueError(f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: LLaVA-NeXT's "
                         "layout takes the M patch rows of each view ('default'); the [CLS] row is not a grid cell")


class LiteLVLMLlavaNextProcessingInfo(LiteLVLMInfoMixin, LlavaNextProcessingInfo):
    """LLaVA-NeXT's processing info with the AnyRes layout's kept count per image (vLLM's own
    ``get_image_size_with_most_features`` then profiles the largest of these counts over the pinpoints)."""

    def layout(self) -> AnyRes:
        return AnyRes.from_config(self.get_hf_config())

    def kept_count(self, width: int, height: int, num_retain: int) -> int:
        s, layout = self.settings(), self.layout()
        return layout.kept_count(layout.geometry((height, width)), num_retain, s.budget, s.image_newline)

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return self.kept_count(image_width, image_height, self.budget())

    def item_counts(self, modality: str, mm_items, num_retain: int) -> list:
        refuse_embeddings(mm_items)
        images = mm_items[modality]
        sizes = [images.get_image_size(i) for i in range(images.get_count())]
        return [self.kept_count(s.width, s.height, num_retain) for s in sizes]


class LiteLVLMLlavaNextDummyInputsBuilder(LlavaDummyInputsBuilder[LiteLVLMLlavaNextProcessingInfo]):
    """vLLM's dummy inputs (the pinpoint with the most placeholders); the processor adds a dummy expression."""


class LiteLVLMLlavaNextMultiModalProcessor(LiteLVLMProcessorMixin, LlavaNextMultiModalProcessor):
    """Emits each image's kept count of placeholders and its text fields (``processing.py``)."""


@MULTIMODAL_REGISTRY.register_processor(LiteLVLMLlavaNextMultiModalProcessor, info=LiteLVLMLlavaNextProcessingInfo,
                                        dummy_inputs=LiteLVLMLlavaNextDummyInputsBuilder)
class LiteLVLMLlavaNextForConditionalGeneration(LlavaNextForConditionalGeneration):
    """LLaVA-NeXT whose views keep the tokens LiteLVLM chooses (see the module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        check_next_config(vllm_config.model_config.hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.litelvlm, self.litelvlm_settings = scorer_selector(self.config)
        self.litelvlm_layout = AnyRes.from_config(self.config)
        # the tower's states per image (tower_cache.py), its calls at most the views stock encodes in one step
        # (stock's encoder budget over its count of the largest image, whose views that many)
        big = max((self.litelvlm_layout.geometry(tuple(p)) for p in self.config.image_grid_pinpoints),
                  key=self.litelvlm_layout.stock_count)
        self.litelvlm_towers = tower_cache_for(vllm_config, self.litelvlm_settings,
                                               self.litelvlm_layout.stock_count(big), big["views"])

    def embed_multimodal(self, **kwargs: object):
        image_input = pixel_input(self, kwargs)
        if image_input is None:
            return []
        layout = self.litelvlm_layout
        geos = [layout.geometry(size) for size in host_sizes(image_input["image_sizes"])]
        views = [geo["views"] for geo in geos]
        rows = ImageRows.of(kwargs)
        # each image's real views (vLLM pads pixel_values to the largest image of the request) through the tower
        # up to the last layer's input, [CLS] kept (the scorer's end), unless the image's states are cached
        per_image = [px[:n] for px, n in zip(image_input["pixel_values"], views)]
        states = torch.cat(self.litelvlm_towers.states(rows.keys, per_image, self._litelvlm_tower))  # [sum V, 1+M, D]
        hidden = states[:, 1:]  # the select layer's patch rows: what "default" projects
        chosen = self._select(hidden, states, rows, geos)
        proj = self.multi_modal_projector(hidden)  # [sum V, M, H]
        starts = [0, *itertools.accumulate(views)]
        feats = [layout.assemble(geo, proj[a:b], [idx for idx, _ in chosen[a:b]], self.image_newline,
                                 self.litelvlm_settings.image_newline)
                 for geo, a, b in zip(geos, starts, starts[1:])]
        check_rows([f.shape[0] for f in feats], rows.counts)
        return feats

    def _select(self, hidden: torch.Tensor, states: torch.Tensor, rows: ImageRows, geos: list) -> list:
        """(kept indices, from-similarity flags) of every view, ascending, real tokens only; one ``select_views``
        call per distinct budget."""
        sel, layout = self.litelvlm, self.litelvlm_layout
        views = [geo["views"] for geo in geos]
        dev = hidden.device
        view_item = torch.repeat_interleave(torch.arange(len(geos)), torch.tensor(views))
        cond = sel.fold(rows.text_ids, rows.num_texts)  # one text group per image
        s, c, num = sel.view_scores(hidden, states, cond, view_item)
        valid = torch.cat([layout.valid_mask(geo) for geo in geos]).to(dev)
        base = self.litelvlm_settings.selection
        view_budget = [r for r, n in zip(rows.budgets, views) for _ in range(n)]
        chosen: list = [None] * len(view_budget)
        for r in sorted(set(rows.budgets)):
            mine = [v for v, rv in enumerate(view_budget) if rv == r]
            pick = None if len(mine) == len(view_budget) else device_tensor(mine, dev)

            def take(x, pick=pick):
                return x if pick is None or x is None else x[pick]
            sizes = [n for n, rb in zip(views, rows.budgets) if rb == r]  # each image's views, numbered within
            groups = [list(range(e - n, e)) for n, e in zip(sizes, itertools.accumulate(sizes))]  # this budget's
            out = select_views(take(s), take(c), take(num), take(valid), groups,
                               dataclasses.replace(base, num_retain=r), joint=base.budget == "global")
            for v, res in zip(mine, out):
                chosen[v] = res
        if sel.recorder is not None:  # per view, in order (a host copy: tests only)
            sel.recorder.extend((r, idx.cpu(), fs.cpu()) for r, (idx, fs) in zip(view_budget, chosen))
        ends = list(itertools.accumulate(views))  # the records of the requests that ask (report.py), per image
        write_records(self.litelvlm_settings.report_path, rows.reports, [chosen[e - n:e] for n, e in zip(views, ends)],
                      rows.budgets, rows.counts, [[(layout.side, layout.side)] * n for n in views])
        return chosen

    def _litelvlm_tower(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(pixels, feature_select_strategy="full")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_scorer_weights(self, super().load_weights, weights)


__all__ = ["LiteLVLMLlavaNextForConditionalGeneration", "check_next_config"]
