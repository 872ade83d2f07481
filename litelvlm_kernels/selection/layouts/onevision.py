"""LLaVA-OneVision's layout: AnyRes with ``anyres_max_N`` downsampling, and single-view images in multi-image prompts.

The stock layout of one image (M = g x g tokens per view):

* **an image alone in its prompt**: the base view (M tokens), then the nh x nw tiles as one
  (g nh) x (g nw) grid, cropped ("unpadded") to the image's aspect ratio (h x w cells); if that grid holds
  more than about N views' worth of cells (``vision_aspect_ratio = "anyres_max_N"``:
  ratio = sqrt(h w / (N g^2)) > 1.1) it is bilinearly downsampled to h2 x w2 = int(h // ratio) x
  int(w // ratio); one newline after every row: M + h2 (w2 + 1) placeholders;
* **several images in one prompt** (transformers' ``batch_num_images[b] > 1``): only the base view, then
  one newline: M + 1.

The scores are pushed through the very same spatial ops as the features (the front end's own ``pack``:
transformers' ``pack_image_features``, a serving engine's merge), so a final token's scores are the same
bilinear mix of its sources as its features. A final cell of a downsampled grid mixes up to four source
cells, possibly of two tiles: it belongs to the tile holding its CENTRE (final row i has its centre at
cropped row (i + 1/2) h / h2; a centre on a tile border goes to the later tile). Budgets, kept order and
newlines as LLaVA-NeXT (``anyres.py``, ``views.py``).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..views import grid_rows, select_views
from .anyres import AnyRes

__all__ = ["OneVision"]


def max_views(aspect: str) -> int:
    """N of ``"anyres_max_N"`` (a named error for anything else)."""
    if not (isinstance(aspect, str) and aspect.startswith("anyres_max_") and aspect[len("anyres_max_"):].isdigit()):
        raise ValueError(f"vision_aspect_ratio={aspect!r}: expected 'anyres_max_N'")
    return int(aspect[len("anyres_max_"):])


@dataclasses.dataclass(frozen=True)
class OneVision:
    """The layout of LLaVA-OneVision's images (``anyres``: the AnyRes geometry of its tiles)."""

    anyres: AnyRes

    @property
    def num_patches(self) -> int:
        return self.anyres.num_patches

    def geometry(self, image_size, aspect: str, multi_view: bool = True) -> dict:
        """Views, stock placeholder count and final grid of one image (``image_size`` = (H, W)).

        Returns ``{"views", "stock", "grid": (h2, w2) or None, "cells", "cell_grids"}``: ``cells`` per view the
        positions (into the image's final tokens without newlines: base 0..M-1, then M + r w2 + col) it owns, in
        raster order; ``cell_grids`` per view the (rows, cols) of that rectangle.
        """
        g, M = self.anyres.side, self.num_patches
        if not multi_view:
            return {"views": 1, "stock": M + 1, "grid": None, "cells": [torch.arange(M)], "cell_grids": [(g, g)]}
        geo = self.anyres.geometry(image_size)
        nh, nw, crop = geo["nh"], geo["nw"], geo["crop"]
        h, w = crop.shape
        ratio = math.sqrt(h * w / (max_views(aspect) * g ** 2))
        h2, w2 = (int(h // ratio), int(w // ratio)) if ratio > 1.1 else (h, w)
        top, left = (int(crop[0, 0]) // (nw * g), int(crop[0, 0]) % (nw * g)) if crop.numel() else (0, 0)
        # tile of each final row / column: the one holding its centre, top + (i + 1/2) h / h2, in integers
        tile_row = ((2 * top * h2 + (2 * torch.arange(h2) + 1) * h) // (2 * h2 * g)).clamp(max=nh - 1)
        tile_col = ((2 * left * w2 + (2 * torch.arange(w2) + 1) * w) // (2 * w2 * g)).clamp(max=nw - 1)
        cells, cell_grids = [torch.arange(M)], [(g, g)]
        for t in range(nh * nw):
            r = (tile_row == t // nw).nonzero().flatten()
            c = (tile_col == t % nw).nonzero().flatten()
            cells.append((M + r[:, None] * w2 + c[None, :]).flatten())
            cell_grids.append((r.numel(), c.numel()))
        return {"views": geo["views"], "stock": M + h2 * (w2 + 1), "grid": (h2, w2), "cells": cells,
                "cell_grids": cell_grids}

    def kept_count(self, geo: dict, num_retain: int, budget: str, image_newline: str) -> int:
        """Placeholders of the image with LiteLVLM before the model runs (docs/design.md 11.4; "all" / "none")."""
        if image_newline == "kept_rows":
            raise ValueError("image_newline='kept_rows': the count depends on which rows keep a token; a serving "
                             "engine, which fixes the prompt before the model runs, needs 'all' or 'none'")
        owned = [c.numel() for c in geo["cells"]]
        kept = min(num_retain, sum(owned)) if budget == "global" else sum(min(num_retain, n) for n in owned)
        rows = 1 if geo["grid"] is None else geo["grid"][0]
        return kept + (rows if image_newline == "all" else 0)

    def select(self, final_maps: list, geos: list, T: int, num, settings) -> tuple:
        """The selection over the final tokens: ``final_maps`` per image [n_i, T + 1] (similarity channels, then the
        contribution), already packed as the features; ``num`` [V] texts per view (or None).

        Returns (per view ``(indices, from_similarity)`` into the view's own cells, per image the kept positions
        into its final tokens, ascending).
        """
        cells = [c for geo in geos for c in geo["cells"]]
        view_item = [i for i, geo in enumerate(geos) for _ in range(geo["views"])]
        offsets = torch.tensor([0] + [f.shape[0] for f in final_maps]).cumsum(0)
        width = max(c.numel() for c in cells)
        idx = torch.zeros(len(cells), width, dtype=torch.long)
        valid = torch.zeros(len(cells), width, dtype=torch.bool)
        for v, (i, c) in enumerate(zip(view_item, cells)):
            idx[v, :c.numel()] = c + offsets[i]
            valid[v, :c.numel()] = True
        dev = final_maps[0].device
        table = torch.cat(final_maps)[idx.to(dev)]                                        # [V, width, T + 1]
        counts = [geo["views"] for geo in geos]
        starts = torch.tensor([0] + counts).cumsum(0).tolist()
        groups = [list(range(starts[i], starts[i + 1])) for i in range(len(geos))]
        chosen = select_views(table[..., :T].transpose(1, 2), table[..., T], num, valid.to(dev), groups, settings,
                              joint=settings.budget == "global")
        kept = [torch.cat([cells[v][chosen[v][0].cpu()] for v in group]).sort().values for group in groups]
        return chosen, kept

    def assemble(self, geo: dict, final: torch.Tensor, kept: torch.Tensor, newline: torch.Tensor,
                 mode: str) -> torch.Tensor:
        """``final`` [n, H]: the image's stock tokens without newlines; ``kept``: ascending positions into it."""
        nl = [newline.to(final.device, final.dtype)[None]]
        if geo["grid"] is None:  # a multi-image view: its tokens, then the newline that closes it
            return torch.cat([final[kept.to(final.device)]] + (nl if mode != "none" else []))
        M = self.num_patches
        h2, w2 = geo["grid"]
        base, grid = kept[kept < M], kept[kept >= M] - M
        rows = grid_rows(final[(M + grid).to(final.device)], grid // w2, h2, newline, mode)
        return torch.cat([final[base.to(final.device)], *rows])
