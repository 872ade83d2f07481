"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): AnyRes, a base view plus a grid of tiles.

The stock layout of one image (M = 576 tokens per 336-px view for CLIP ViT-L/14-336)::

    base view: M tokens (24 x 24)
    tiles: the nh x nw tiles form a (24 nh) x (24 nw) grid, cropped ("unpadded")
           to the image's aspect ratio, read row by row with an image_newline
           embedding after every row of the cropped grid

so an image takes M + h' (w' + 1) placeholders (h' x w' the cropped grid).
With LiteLVLM:

* tokens cut by the unpadding are never candidates (see ``views.py``);
* ``budget="per_tile"`` (default): the base view and every tile keep R' of
  their own tokens (fewer for a tile with fewer real tokens);
  ``budget="global"``: one selection of R' over all real tokens of the image
  (contributions made comparable per view, see ``views.py``);
* kept tokens keep the stock layout, in raster order: kept base tokens,
  then kept tile tokens row by row of the cropped grid; ``image_newline``:
  ``"kept_rows"`` (default) puts one newline after each grid row that kept a
  token, ``"all"`` after every row (as stock), ``"none"`` drops them;
* the placeholder run of each image shrinks from the stock count to exactly
  the number of features built here.

Keeping every token (``num_retain >= M``, per_tile) reproduces the stock
features exactly (tested). The projector runs on all views' select-layer
states in one call, as stock does, and the kept rows are gathered after it
(the projector is about 0.3% of a 7B prefill at 576 tokens).
"""

from __future__ import annotations

import sys

import torch

from ..selection.layouts.anyres import AnyRes
from ..selection.towers import model_part
from ..selection.views import contribution, select_views, view_reports, view_similarity
from .adapter import FamilyAdapter, Modality, register_adapter
from .llava import grid_side, image_token_id


def anyres_layout(model) -> AnyRes:
    """The model's AnyRes layout, read with its own modeling module's geometry helpers."""
    return AnyRes.from_config(model.config, helpers=sys.modules[type(model).__module__])


def geometry(model, image_size) -> dict:
    """Views, tile grid and cropped grid of one image (``AnyRes.geometry``) for ``model``."""
    return anyres_layout(model).geometry(image_size)


def stock_placeholder_count(model, image_size) -> int:
    """Placeholders the stock model (and its processor) gives one image: M + h' (w' + 1)."""
    layout = anyres_layout(model)
    return layout.stock_count(layout.geometry(image_size))


@register_adapter
class LlavaNextAdapter(FamilyAdapter):
    """``model_type == "llava_next"``: pixel_values [N, V_max, 3, H, W] and image_sizes [N, 2] (H, W)."""

    model_types = ("llava_next",)

    def check_model(self) -> None:
        if self.strategy() != "default":
            raise ValueError("vision_feature_select_strategy: only 'default' is supported for LLaVA-NeXT")
        self.layout = anyres_layout(self.model)

    def side(self) -> int:
        return grid_side(self.model)

    def modalities(self) -> list:
        return [Modality("pixel_values", image_token_id(self.model.config), ("image_sizes",),
                         lambda kw: [self.layout.stock_count(geo) for geo in self._check_sizes(kw)],
                         self.image_features, pixel_dims=(4, 5))]

    def _check_sizes(self, kwargs) -> list:
        """Geometry per image; pixel_values as the stock model takes them: [N, V_max, 3, H, W] (views padded per
        image) or [sum V, 3, H, W] (each image's views concatenated, counted from image_sizes)."""
        sizes = kwargs.get("image_sizes")
        px = kwargs["pixel_values"]
        if sizes is None or (px.dim() == 5 and len(sizes) != px.shape[0]):
            raise ValueError(f"image_sizes: one (height, width) per image needed, got "
                             f"{None if sizes is None else len(sizes)} for {px.shape[0]} images")
        geos = [self.layout.geometry(sz) for sz in sizes]
        views = [geo["views"] for geo in geos]
        if px.dim() == 5 and px.shape[1] < max(views, default=0):
            raise ValueError(f"pixel_values: {px.shape[1]} views per image, but image_sizes need up to {max(views)}")
        if px.dim() == 4 and px.shape[0] != sum(views):
            raise ValueError(f"pixel_values: {px.shape[0]} views, but image_sizes need {sum(views)} ({views})")
        return geos

    def image_features(self, kwargs: dict, cond) -> list:
        geos = self._check_sizes(kwargs)
        px = kwargs["pixel_values"]
        rows = torch.cat([px[i, :geo["views"]] for i, geo in enumerate(geos)]) if px.dim() == 5 else px
        cap = self.pruner.capture(rows, full_tower=True)
        counts = [geo["views"] for geo in geos]
        view_item = torch.repeat_interleave(torch.arange(len(geos)), torch.tensor(counts))
        s, num = view_similarity(self.pruner.ln_eps, cap.hidden, cond, view_item)
        c = contribution(cap)
        valid = torch.cat([self.layout.valid_mask(geo) for geo in geos]).to(s.device)
        starts = torch.tensor([0] + counts).cumsum(0).tolist()
        groups = [list(range(starts[i], starts[i + 1])) for i in range(len(geos))]
        chosen = select_views(s, c, num, valid, groups, self.settings, joint=self.settings.budget == "global")
        kept = [idx for idx, _ in chosen]
        proj = model_part(self.model, "multi_modal_projector")(self.features_of(cap, kwargs))  # [views, M, H]
        newline = model_part(self.model, "image_newline")
        feats = [self.layout.assemble(geo, proj[starts[i]:starts[i + 1]], kept[starts[i]:starts[i + 1]], newline,
                                      self.settings.image_newline) for i, geo in enumerate(geos)]
        g = self.side()
        return feats, [view_reports(chosen[starts[i]:starts[i + 1]], (g, g)) for i in range(len(geos))], cap
