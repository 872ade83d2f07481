"""``LiteLVLMLlavaOnevisionForConditionalGeneration``: vLLM's LLaVA-OneVision with LiteLVLM in its image and video
paths (SigLIP tower, AnyRes with ``anyres_max_N`` downsampling, several images per prompt, videos).

Chosen with ``--hf-overrides '{"architectures": ["LiteLVLMLlavaOnevisionForConditionalGeneration"], "litelvlm":
{"scorer": "google/siglip-so400m-patch14-384", "num_retain": 64}}'`` on a stock LLaVA-OneVision checkpoint.
Everything else is vLLM's own LLaVA-OneVision: the language model, the projector, ``image_newline``, the spatial
merge and pooling, weight loading.

Layout (``selection.layouts.onevision.OneVision`` / ``video.PooledVideo``, docs/design.md 11.4):

* every image, also in a multi-image prompt, is laid out as vLLM lays it out: AnyRes (base view, then the
  unpadded tile grid, downsampled when it holds more than ``vision_aspect_ratio = "anyres_max_N"`` views' worth);
  ``budget="per_tile"`` (default): the base view and each tile keep min(R, final cells the tile owns), ``"global"``
  min(R, all) over the image; kept tokens in the stock raster order; ``image_newline`` "all" (default: a newline
  after every final row, as stock) or "none";
* a video: each frame pooled to P = ceil(g / 2)^2 tokens; ``video_budget="per_frame"`` (default) min(R, P) per
  frame, ``"per_clip"`` min(R, F P) over the clip; frames in order; one closing newline (none with "none").

The counts are the layouts' ``kept_count`` at the request's budget, for the prompt and the memory profile. vLLM's
own count and merge hard-code ``anyres_max_9``; this file reads the config's ``vision_aspect_ratio`` for both (the
same for the released checkpoints, which use anyres_max_9). vLLM's ``get_image_size_with_most_features`` is a
constant (1153 x 944) found for stock counts; with pruning the largest count is elsewhere, so it is the argmax of
our count at the configured budget over a sweep of image sizes (``largest_image``, computed once per configuration).

Image path (``embed_multimodal``): each image's real views (1 + nh nw from ``image_sizes``; vLLM pads
``pixel_values`` to the request's largest image) through vLLM's tower, built without post-layernorm or head: with
"full", its output is both the LLM's features and the final state the scorer continues from (the SigLIP layers the
LVLM dropped, the original post-layernorm and pooling head, from ``litelvlm.scorer``). The per-view similarity and
contribution maps go through vLLM's own ``_merge_image_patch_embeddings`` (unpad, downsample; any channel count)
exactly as the projected features do, so every final token is scored as the same bilinear mix of its sources;
``OneVision.select`` / ``assemble`` then keep and place the rows. Videos: the maps through vLLM's ``apply_pooling``
as the projected frames, ``PooledVideo.select`` / ``assemble``. Each item's rows are checked against the
processor's count. Unlike LLaVA's path this one syncs with the host: the multi-view selection (``select_views``,
``OneVision.select``) drops masked cells and orders the kept positions there (per batch of images, per video).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterable

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.llava import _get_num_hidden_layers
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import ImageProcessorItems, ImageSize, VideoProcessorItems

from ...selection.kinds import is_siglip_config
from ...selection.layouts.anyres import AnyRes
from ...selection.layouts.onevision import OneVision, max_views
from ...selection.layouts.video import PooledVideo
from .engine import ImageRows, check_rows, load_scorer_weights, scorer_selector
from .processing import LiteLVLMInfoMixin, LiteLVLMProcessorMixin
from .report import write_records
from .selector import device_tensor

EMBEDS_REFUSED = ("{}: LiteLVLM selects tokens from the vision tower's own states, so it needs the pixels, not "
                  "precomputed embeddings")


def aspect_ratio(config) -> str:
    """The config's ``vision_aspect_ratio`` ("anyres_max_N"; transformers' default when absent)."""
    aspect = getattr(config, "vision_aspect_ratio", None) or "anyres_max_9"
    max_views(aspect)  # a named error for anything else
    return aspect


def check_onevision_config(config) -> str:
    """Refuse, by the config field's name, a LLaVA-OneVision this file cannot serve; returns the aspect ratio."""
    vc = config.vision_config
    if not is_siglip_config(vc):
        raise ValueError("vision_config: LiteLVLM serves LLaVA-OneVision with a SigLIP tower, as its checkpoints "
                         "have (the pooling head of the original SigLIP scores the views)")
    layer = config.vision_feature_layer
    if isinstance(layer, bool) or not isinstance(layer, int) or _get_num_hidden_layers(config) != vc.num_hidden_layers:
        raise ValueError(f"vision_feature_layer={layer!r}: LiteLVLM needs -1, the tower's final state, which its "
                         "scorer continues from (as LLaVA-OneVision)")
    if config.vision_feature_select_strategy != "full":
        raise ValueError(f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: a SigLIP tower "
                         "has no [CLS]; 'full' (every patch) makes the views' rows the patch grid the layout needs")
    return aspect_ratio(config)


def onevision_layout(config) -> OneVision:
    """The config's layout, its geometry read with the helpers vLLM's own merge imports."""
    from transformers.models.llava_onevision import modeling_llava_onevision

    return OneVision(AnyRes.from_config(config, helpers=modeling_llava_onevision))


@functools.lru_cache(maxsize=8)
def _geometries(side: int, pinpoints: tuple, view_size: int, aspect: str) -> tuple:
    """``((H, W), OneVision geometry)`` of every distinct geometry met by a sweep of image sizes (the pinpoints and
    a grid of step view_size / 16 up to the largest pinpoint + one view). An image's geometry depends on its size
    only through its tile grid and its unpadded crop, so few sizes need the full (slower) geometry."""
    from transformers.models.llava_onevision import modeling_llava_onevision

    layout = OneVision(AnyRes(side, [list(p) for p in pinpoints], view_size, modeling_llava_onevision))
    step = max(1, view_size // 16)
    top = max(max(p) for p in pinpoints) + view_size
    sizes = [tuple(p) for p in pinpoints] + list(itertools.product(range(step, top + 1, step), repeat=2))
    seen: dict = {}
    for size in sizes:
        geo = layout.anyres.geometry(size)
        crop = geo["crop"]
        key = (geo["nh"], geo["nw"], tuple(crop.shape), int(crop[0, 0]) if crop.numel() else -1)
        if key not in seen:
            seen[key] = (size, layout.geometry(size, aspect))
    return tuple(seen.values())


def largest_image(layout: OneVision, aspect: str, num_retain: int, budget: str, image_newline: str) -> tuple:
    """(H, W) of an image with the most placeholders under these settings (the memory profile's dummy image)."""
    a = layout.anyres
    geos = _geometries(a.side, tuple(tuple(p) for p in a.pinpoints), a.view_size, aspect)
    return max(geos, key=lambda sg: layout.kept_count(sg[1], num_retain, budget, image_newline))[0]


def host_sizes(sizes) -> list:
    """``image_sizes`` (CPU: a tensor [N, 2] or a list of [2] tensors; (height, width)) as host pairs."""
    return [tuple(int(v) for v in s.tolist()) for s in sizes]


class LiteLVLMLlavaOnevisionProcessingInfo(LiteLVLMInfoMixin, LlavaOnevisionProcessingInfo):
    """LLaVA-OneVision's processing info with the layouts' kept counts (images, videos, the memory profile)."""

    def layout(self) -> OneVision:
        return onevision_layout(self.get_hf_config())

    def frame_tokens(self) -> int:
        """P: the pooled tokens of one frame (vLLM's own count)."""
        return self._get_num_frame_tokens(image_width=0, image_height=0)

    def image_count(self, width: int, height: int, num_retain: int) -> int:
        s, layout = self.settings(), self.layout()
        geo = layout.geometry((height, width), aspect_ratio(self.get_hf_config()))
        return layout.kept_count(geo, num_retain, s.budget, s.image_newline)

    def video_count(self, frames: int, num_retain: int) -> int:
        s = self.settings()
        return PooledVideo(self.frame_tokens(), closing_newline=True).kept_count(frames, num_retain, s.video_budget,
                                                                                 s.image_newline)

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return self.image_count(image_width, image_height, self.budget())

    def get_num_video_tokens(self, *, image_width: int, image_height: int, num_frames: int) -> int:
        return self.video_count(num_frames, self.budget())

    def _get_max_video_frames(self, max_tokens: int) -> int:
        # the profile's dummy video gets as many frames as stock vLLM gives it (P tokens per frame + the newline), so
        # the tower's peak is profiled; a per-clip count would never outgrow max_tokens
        return max(0, (max_tokens - 1) // self.frame_tokens())

    def get_image_size_with_most_features(self) -> ImageSize:
        s = self.settings()
        h, w = largest_image(self.layout(), aspect_ratio(self.get_hf_config()), s.num_retain, s.budget,
                             s.image_newline)
        return ImageSize(width=w, height=h)

    def item_counts(self, modality: str, mm_items, num_retain: int) -> list:
        items = mm_items[modality]
        if modality == "image":
            if not isinstance(items, ImageProcessorItems):
                raise ValueError(EMBEDS_REFUSED.format("image_embeds"))
            sizes = [items.get_image_size(i) for i in range(items.get_count())]
            return [self.image_count(s.width, s.height, num_retain) for s in sizes]
        if not isinstance(items, VideoProcessorItems):
            raise ValueError(EMBEDS_REFUSED.format("video_embeds"))
        return [self.video_count(items.get_num_frames(i), num_retain) for i in range(items.get_count())]


class LiteLVLMLlavaOnevisionDummyInputsBuilder(LlavaOnevisionDummyInputsBuilder):
    """vLLM's dummy inputs at the image size with the most of our placeholders; the processor adds an expression."""


class LiteLVLMLlavaOnevisionMultiModalProcessor(LiteLVLMProcessorMixin, LlavaOnevisionMultiModalProcessor):
    """Emits each item's kept count of placeholders and its text fields, per modality (``processing.py``)."""


@MULTIMODAL_REGISTRY.register_processor(LiteLVLMLlavaOnevisionMultiModalProcessor,
                                        info=LiteLVLMLlavaOnevisionProcessingInfo,
                                        dummy_inputs=LiteLVLMLlavaOnevisionDummyInputsBuilder)
class LiteLVLMLlavaOnevisionForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    """LLaVA-OneVision whose images and videos keep the tokens LiteLVLM chooses (see the module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        aspect = check_onevision_config(vllm_config.model_config.hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.litelvlm, self.litelvlm_settings = scorer_selector(self.config)
        self.litelvlm_layout = onevision_layout(self.config)
        self.litelvlm_aspect = aspect

    def embed_multimodal(self, **kwargs: object):
        for key in ("image_embeds", "video_embeds"):
            if kwargs.get(key) is not None:
                raise ValueError(EMBEDS_REFUSED.format(key))
        out: tuple = ()
        # vLLM's parse keeps the modalities in the order of the request's kwargs (the placeholders' order)
        for modality, parsed in self._parse_and_validate_multimodal_inputs(**kwargs).items():
            path = self._litelvlm_images if modality == "image" else self._litelvlm_videos
            out += tuple(path(parsed, ImageRows.of(kwargs, modality)))
        return out

    def _scores(self, states: torch.Tensor, rows: ImageRows, counts: list) -> tuple:
        """[V, M, T + 1]: each view's similarity to the texts and its contribution as channels (what the spatial ops
        carry like features), T, and the texts per view (or None); ``counts``: views per item."""
        view_item = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        cond = self.litelvlm.fold(rows.text_ids, rows.num_texts)  # one text group per item
        s, c, num = self.litelvlm.view_scores(states, states, cond, view_item)
        return torch.cat([s.transpose(1, 2), c[..., None]], -1), s.shape[1], num

    def _record(self, budgets: list, chosen: list) -> None:
        if self.litelvlm.recorder is not None:  # per view, in order (host copies: tests only)
            self.litelvlm.recorder.extend((r, idx.cpu(), fs.cpu()) for r, (idx, fs) in zip(budgets, chosen))

    def _pack(self, sizes, per_image) -> list:
        """vLLM's own merge (unpad, downsample) of each image's [views, M, C] -> [n_i, C], no newline rows."""
        merge, aspect = self._merge_image_patch_embeddings, self.litelvlm_aspect
        return [merge(size, x, image_newline=None, vision_aspect_ratio=aspect, strategy="spatial_unpad")
                for size, x in zip(sizes, per_image)]

    def _litelvlm_images(self, image_input, rows: ImageRows) -> list:
        layout, sizes = self.litelvlm_layout, image_input["image_sizes"]
        geos = [layout.geometry(size, self.litelvlm_aspect) for size in host_sizes(sizes)]
        views = [geo["views"] for geo in geos]
        pixels = torch.cat([px[:n] for px, n in zip(image_input["pixel_values"], views)])
        states = self.vision_tower(pixels, feature_select_strategy="full")  # [sum V, M, D]: final state, no post-LN
        maps, T, num = self._scores(states, rows, views)
        final_maps = self._pack(sizes, maps.split(views))
        final = self._pack(sizes, self.multi_modal_projector(states).split(views))
        base, starts = self.litelvlm_settings.selection, [0, *itertools.accumulate(views)]
        kept, chosen = [None] * len(geos), [None] * starts[-1]
        for r in sorted(set(rows.budgets)):  # one selection per distinct budget
            mine = [i for i, b in enumerate(rows.budgets) if b == r]
            own = [v for i in mine for v in range(starts[i], starts[i + 1])]
            vnum = num if num is None or len(mine) == len(geos) else num[device_tensor(own, num.device)]
            got, got_kept = layout.select([final_maps[i] for i in mine], [geos[i] for i in mine], T, vnum,
                                          dataclasses.replace(base, num_retain=r))
            for v, res in zip(own, got):
                chosen[v] = res
            for i, k in zip(mine, got_kept):
                kept[i] = k
        self._record([r for r, n in zip(rows.budgets, views) for _ in range(n)], chosen)
        # records: each view's indices row-major in its own rectangle of the image's final (unpadded) grid
        write_records(self.litelvlm_settings.report_path, rows.reports,
                      [chosen[a:z] for a, z in zip(starts, starts[1:])], rows.budgets, rows.counts,
                      [geo["cell_grids"] for geo in geos])
        mode = self.litelvlm_settings.image_newline
        feats = [layout.assemble(geo, f, k, self.image_newline, mode) for geo, f, k in zip(geos, final, kept)]
        check_rows([f.shape[0] for f in feats], rows.counts)
        return feats

    def _litelvlm_videos(self, video_input, rows: ImageRows) -> list:
        clips = list(video_input["pixel_values_videos"])  # per video [F_i, 3, H, W]
        frames = [clip.shape[0] for clip in clips]
        states = self.vision_tower(torch.cat(clips), feature_select_strategy="full")  # [sum F, M, D]
        maps, T, num = self._scores(states, rows, frames)
        pooled = self.apply_pooling(maps)  # [sum F, P, T + 1], as the features
        proj = self.apply_pooling(self.multi_modal_projector(states))  # as stock: project, then pool
        video = PooledVideo(pooled.shape[1], closing_newline=True)
        base, mode = self.litelvlm_settings.selection, self.litelvlm_settings.image_newline
        starts, feats, per_video = [0, *itertools.accumulate(frames)], [], []
        side = round(pooled.shape[1] ** 0.5)  # the pooled frame's grid
        for b, (a, z) in enumerate(zip(starts, starts[1:])):  # one selection per video (its frames, its budget)
            chosen = video.select(pooled[a:z, :, :T].transpose(1, 2), pooled[a:z, :, T],
                                  None if num is None else num[a:z], 1,
                                  dataclasses.replace(base, num_retain=rows.budgets[b]))
            self._record([rows.budgets[b]] * len(chosen), chosen)
            per_video.append(chosen)  # per frame, or one over the whole clip (video_budget="per_clip")
            feats += video.assemble(proj[a:z], chosen, 1, self.image_newline, mode)
        # a record's view: a frame's side x side grid, or the clip's frames stacked (frame-major) for per_clip
        write_records(self.litelvlm_settings.report_path, rows.reports, per_video, rows.budgets, rows.counts,
                      [[(f // len(c) * side, side)] * len(c) for f, c in zip(frames, per_video)], modality="video")
        check_rows([f.shape[0] for f in feats], rows.counts)
        return feats

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_scorer_weights(self, super().load_weights, weights)


__all__ = ["LiteLVLMLlavaOnevisionForConditionalGeneration", "check_onevision_config", "largest_image"]
