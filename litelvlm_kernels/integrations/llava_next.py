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

from ._towers import model_part
from .adapter import FamilyAdapter, Modality, register_adapter
from .llava import grid_side, image_token_id
from .views import contribution, select_views, view_reports, view_similarity


def geometry(model, image_size) -> dict:
    """Views, tile grid and cropped grid of one image (``image_size`` = (H, W)), by the installed
    transformers' own helpers (``get_anyres_image_grid_shape``, ``unpad_image``), so counts follow its rules.

    Returns ``{"views", "nh", "nw", "crop"}``; ``crop`` [h', w'] holds the flat full-grid index of each
    cell the unpadding keeps.
    """
    mod, cfg = sys.modules[type(model).__module__], model.config
    size = [int(x) for x in image_size]
    nh, nw = mod.get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
    g = grid_side(model)
    full = torch.arange(nh * g * nw * g).view(1, nh * g, nw * g)
    crop = mod.unpad_image(full, size)[0]
    return {"views": 1 + nh * nw, "nh": nh, "nw": nw, "crop": crop}


def stock_placeholder_count(model, image_size) -> int:
    """Placeholders the stock model (and its processor) gives one image: M + h' (w' + 1)."""
    crop = geometry(model, image_size)["crop"]
    return grid_side(model) ** 2 + crop.shape[0] * (crop.shape[1] + 1)


@register_adapter
class LlavaNextAdapter(FamilyAdapter):
    """``model_type == "llava_next"``: pixel_values [N, V_max, 3, H, W] and image_sizes [N, 2] (H, W)."""

    model_types = ("llava_next",)

    def check_model(self) -> None:
        if self.strategy() != "default":
            raise ValueError("vision_feature_select_strategy: only 'default' is supported for LLaVA-NeXT")

    def side(self) -> int:
        return grid_side(self.model)

    def geometry(self, image_size) -> dict:
        return geometry(self.model, image_size)

    def stock_count(self, geo) -> int:
        return self.side() ** 2 + geo["crop"].shape[0] * (geo["crop"].shape[1] + 1)

    def modalities(self) -> list:
        return [Modality("pixel_values", image_token_id(self.model.config), ("image_sizes",),
                         lambda kw: [self.stock_count(geo) for geo in self._check_sizes(kw)],
                         self.image_features, pixel_dims=(4, 5))]

    def _check_sizes(self, kwargs) -> list:
        """Geometry per image; pixel_values as the stock model takes them: [N, V_max, 3, H, W] (views padded per
        image) or [sum V, 3, H, W] (each image's views concatenated, counted from image_sizes)."""
        sizes = kwargs.get("image_sizes")
        px = kwargs["pixel_values"]
        if sizes is None or (px.dim() == 5 and len(sizes) != px.shape[0]):
            raise ValueError(f"image_sizes: one (height, width) per image needed, got "
                             f"{None if sizes is None else len(sizes)} for {px.shape[0]} images")
        geos = [self.geometry(sz) for sz in sizes]
        views = [geo["views"] for geo in geos]
        if px.dim() == 5 and px.shape[1] < max(views, default=0):
            raise ValueError(f"pixel_values: {px.shape[1]} views per image, but image_sizes need up to {max(views)}")
        if px.dim() == 4 and px.shape[0] != sum(views):
            raise ValueError(f"pixel_values: {px.shape[0]} views, but image_sizes need {sum(views)} ({views})")
        return geos

    def valid_mask(self, geo) -> torch.Tensor:
        """[views, M] bool: which tokens of each view survive the unpadding (the base view: all)."""
        g, nw = self.side(), geo["nw"]
        valid = torch.zeros(geo["views"], g * g, dtype=torch.bool)
        valid[0] = True
        cells = geo["crop"].flatten()
        Y, X = cells // (nw * g), cells % (nw * g)
        valid[1 + (Y // g) * nw + X // g, (Y % g) * g + X % g] = True
        return valid

    def image_features(self, kwargs: dict, cond) -> list:
        geos = self._check_sizes(kwargs)
        px = kwargs["pixel_values"]
        rows = torch.cat([px[i, :geo["views"]] for i, geo in enumerate(geos)]) if px.dim() == 5 else px
        cap = self.pruner.capture(rows, full_tower=True)
        counts = [geo["views"] for geo in geos]
        view_item = torch.repeat_interleave(torch.arange(len(geos)), torch.tensor(counts))
        s, num = view_similarity(self.pruner, cap.hidden, cond, view_item)
        c = contribution(cap)
        valid = torch.cat([self.valid_mask(geo) for geo in geos]).to(s.device)
        starts = torch.tensor([0] + counts).cumsum(0).tolist()
        groups = [list(range(starts[i], starts[i + 1])) for i in range(len(geos))]
        chosen = select_views(s, c, num, valid, groups, self.settings, joint=self.settings.budget == "global")
        kept = [idx for idx, _ in chosen]
        proj = model_part(self.model, "multi_modal_projector")(self.features_of(cap, kwargs))  # [views, M, H]
        newline = model_part(self.model, "image_newline")
        feats = [self.layout(geo, proj[starts[i]:starts[i + 1]], kept[starts[i]:starts[i + 1]], newline)
                 for i, geo in enumerate(geos)]
        g = self.side()
        return feats, [view_reports(chosen[starts[i]:starts[i + 1]], (g, g)) for i in range(len(geos))], cap

    def layout(self, geo, proj, kept, newline) -> torch.Tensor:
        """Kept base tokens, then kept tile tokens row by row of the cropped grid, with newlines."""
        g, nw = self.side(), geo["nw"]
        crop = geo["crop"]
        h, w = crop.shape
        # position in the cropped grid of every (tile, token) kept, as one flat index r * w + col
        where = torch.full((nw * g * geo["nh"] * g,), -1, dtype=torch.long)
        where[crop.flatten()] = torch.arange(h * w)
        parts, pos = [], []
        for v in range(1, geo["views"]):
            t = kept[v].to("cpu")
            Y, X = ((v - 1) // nw) * g + t // g, ((v - 1) % nw) * g + t % g
            pos.append(where[Y * (nw * g) + X])
            parts.append(proj[v, kept[v]])
        pos = torch.cat(pos) if pos else torch.empty(0, dtype=torch.long)
        feats = torch.cat(parts) if parts else proj.new_zeros(0, proj.shape[-1])
        order = torch.argsort(pos)
        pos, feats = pos[order], feats[order.to(feats.device)]
        rows = grid_rows(feats, pos // w, h, newline, self.settings.image_newline)
        return torch.cat([proj[0, kept[0]], *rows])


def grid_rows(feats: torch.Tensor, row_of: torch.Tensor, num_rows: int, newline: torch.Tensor, mode: str) -> list:
    """Kept grid tokens row by row, each row followed by the ``newline`` embedding [H] as ``mode`` says.

    ``feats`` [k, H]: the kept tokens in raster order; ``row_of`` [k] (CPU): their grid rows, ascending.
    ``mode``: ``"all"`` a newline after every row (as stock), ``"kept_rows"`` after each row that kept a
    token, ``"none"`` none. Shared by LLaVA-NeXT and LLaVA-OneVision.
    """
    nl = newline.to(feats.device, feats.dtype)[None]
    out = []
    for mine in feats.split(torch.bincount(row_of, minlength=num_rows).tolist()):
        out.append(mine)
        if mode == "all" or (mode == "kept_rows" and mine.shape[0] > 0):
            out.append(nl)
    return out
