"""LLaVA-NeXT's layout (AnyRes): a base view plus a grid of tiles, unpadded, with a newline per row.

The stock layout of one image (M = g x g tokens per view; g = 24 for CLIP ViT-L/14-336)::

    base view: M tokens
    tiles: the nh x nw tiles form a (g nh) x (g nw) grid, cropped ("unpadded") to the image's
           aspect ratio (h' x w' cells), read row by row with a newline after every row

so an image takes M + h' (w' + 1) placeholders. With LiteLVLM, tokens cut by the unpadding are never
candidates (``valid_mask``), the kept tokens keep this layout in raster order (kept base tokens, then
kept tile tokens row by row), and ``image_newline`` decides the newlines: "all" after every row (as
stock), "kept_rows" after each row that kept a token, "none" none.

The geometry comes from the installed transformers' own helpers (``get_anyres_image_grid_shape``,
``unpad_image``) so counts follow its rules; a layout reads configs, never a model instance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..views import grid_rows

__all__ = ["AnyRes"]


def _default_helpers():
    from transformers.models.llava_next import modeling_llava_next

    return modeling_llava_next


@dataclasses.dataclass(frozen=True)
class AnyRes:
    """The layout of LLaVA-NeXT's images.

    Parameters
    ----------
    side : int
        g, tokens per side of one view.
    pinpoints : list
        ``image_grid_pinpoints`` of the config.
    view_size : int
        The tower's input size in pixels (``vision_config.image_size``).
    helpers : module, optional
        The module holding ``get_anyres_image_grid_shape`` / ``unpad_image`` (a family's modeling module;
        default transformers' LLaVA-NeXT one).
    """

    side: int
    pinpoints: Any
    view_size: int
    helpers: Any = None

    @classmethod
    def from_config(cls, config, helpers=None) -> AnyRes:
        vc = config.vision_config
        return cls(vc.image_size // vc.patch_size, config.image_grid_pinpoints, vc.image_size, helpers)

    @property
    def num_patches(self) -> int:
        return self.side ** 2

    def geometry(self, image_size) -> dict:
        """Views, tile grid and cropped grid of one image (``image_size`` = (H, W)).

        Returns ``{"views", "nh", "nw", "crop"}``; ``crop`` [h', w'] holds the flat full-grid index of each cell
        the unpadding keeps.
        """
        mod = self.helpers or _default_helpers()
        size = [int(x) for x in image_size]
        nh, nw = mod.get_anyres_image_grid_shape(size, self.pinpoints, self.view_size)
        g = self.side
        full = torch.arange(nh * g * nw * g).view(1, nh * g, nw * g)
        crop = mod.unpad_image(full, size)[0]
        return {"views": 1 + nh * nw, "nh": nh, "nw": nw, "crop": crop}

    def stock_count(self, geo: dict) -> int:
        """Placeholders the stock model (and its processor) gives the image: M + h' (w' + 1)."""
        h, w = geo["crop"].shape
        return self.num_patches + h * (w + 1)

    def valid_mask(self, geo: dict) -> torch.Tensor:
        """[views, M] bool: which tokens of each view survive the unpadding (the base view: all)."""
        g, nw = self.side, geo["nw"]
        valid = torch.zeros(geo["views"], g * g, dtype=torch.bool)
        valid[0] = True
        cells = geo["crop"].flatten()
        Y, X = cells // (nw * g), cells % (nw * g)
        valid[1 + (Y // g) * nw + X // g, (Y % g) * g + X % g] = True
        return valid

    def kept_count(self, geo: dict, num_retain: int, budget: str, image_newline: str) -> int:
        """Placeholders of the image with LiteLVLM, before the model runs (docs/design.md 11.4): only for the
        count-stable newline choices ("all", "none"); "kept_rows" depends on the selection."""
        if image_newline == "kept_rows":
            raise ValueError("image_newline='kept_rows': the count depends on which rows keep a token; a serving "
                             "engine, which fixes the prompt before the model runs, needs 'all' or 'none'")
        real = self.valid_mask(geo).sum(1).tolist()
        kept = min(num_retain, sum(real)) if budget == "global" else sum(min(num_retain, n) for n in real)
        return kept + (geo["crop"].shape[0] if image_newline == "all" else 0)

    def assemble(self, geo: dict, proj: torch.Tensor, kept: list, newline: torch.Tensor, mode: str) -> torch.Tensor:
        """Kept base tokens, then kept tile tokens row by row of the cropped grid, with newlines.

        ``proj`` [views, M, H]: the projected views; ``kept``: per view, the kept token indices (ascending).
        """
        g, nw = self.side, geo["nw"]
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
        rows = grid_rows(feats, pos // w, h, newline, mode)
        return torch.cat([proj[0, kept[0]], *rows])
