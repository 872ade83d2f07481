"""The paired scorer: a CLIP or SigLIP chosen by the user scores the image for an LVLM without either tower.

Qwen2.5-VL and Qwen3-VL have neither CLIP's [CLS] nor SigLIP's pooling head: their towers have nothing
that plays [EOS] and [CLS]. A *paired* scorer (docs/design.md section 12) is a CLIP (or SigLIP) checkpoint
run on the same image; its per-patch signals are computed exactly as for an own tower (``clip.py``,
``siglip.py``: similarity of the folded text against the select-layer state, contribution to [CLS] / to
the pooled embedding), then resampled onto the LVLM's token grid (``layouts.merged_grid``), and the
unchanged selection rule keeps R' of the LVLM's N tokens (``litelvlm_kernels.select_scores``).

The image, per LVLM image (``scorer_image``): its pixel rows unpatchified (the image as the LVLM sees it,
after its own resize), un-normalised with the LVLM processor's mean / std, resized for the scorer with one
scale factor and no crop (bicubic, antialiased, to the ``merged_grid.scorer_grid`` of patches), clamped to
[0, 1] and normalised with the scorer's own mean / std; the scorer runs with its position embeddings
interpolated to that grid.

It wraps the scorer of its kind (``inner``, built by ``kinds.paired_scorer_for``) and reuses its text side
(tokenizer, text tower, fold: a ``folding.TextFolder`` on this scorer folds with the inner one's
projection and layernorm) and its capture. Torch only: a serving engine builds the same object.
"""

from __future__ import annotations

import torch

from .. import ops
from .layouts.merged_grid import resample, scorer_grid, unpatchify
from .scorer import Scorer

__all__ = ["NORMALISATION", "PairedScorer"]

# The scorer checkpoints' own normalisation (their preprocessor_config.json): OpenAI CLIP's for CLIP, 0.5 for SigLIP
NORMALISATION = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _triple(value, name: str) -> tuple:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise ValueError(f"{name}: expected 3 numbers (one per RGB channel), got {value!r}")
    if name.endswith("std") and min(out) <= 0:
        raise ValueError(f"{name}: every channel's std must be > 0, got {value!r}")
    return out


class PairedScorer(Scorer):
    """A scorer of the LVLM's tokens through a paired CLIP / SigLIP (see the module docstring).

    Parameters
    ----------
    inner : Scorer
        The CLIP or SigLIP scorer of the paired checkpoint's own tower (``ClipScorer`` / ``SiglipScorer``).
    image_mean, image_std : sequence of 3 floats
        The LVLM processor's normalisation, undone before the scorer's own.
    patch, merge, temporal : int
        The LVLM's pixel layout: patch size p, ``spatial_merge_size`` m, ``temporal_patch_size``.
    scorer_image_mean, scorer_image_std : sequence of 3 floats, optional
        The scorer checkpoint's normalisation (default: ``NORMALISATION`` of its kind).
    """

    kind = "paired"

    def __init__(self, inner: Scorer, *, image_mean, image_std, patch: int, merge: int, temporal: int,
                 scorer_image_mean=None, scorer_image_std=None):
        super().__init__(inner.text_model, inner.tokenizer)
        self.inner = inner
        self.has_cls, self.end_layer = inner.has_cls, inner.end_layer
        self.image_mean, self.image_std = _triple(image_mean, "image_mean"), _triple(image_std, "image_std")
        default_mean, default_std = NORMALISATION[inner.kind]
        self.scorer_image_mean = _triple(default_mean if scorer_image_mean is None else scorer_image_mean,
                                         "scorer_image_mean")
        self.scorer_image_std = _triple(default_std if scorer_image_std is None else scorer_image_std,
                                        "scorer_image_std")
        self.patch, self.merge, self.temporal = int(patch), int(merge), int(temporal)

    # ---- the text side: the inner scorer's ------------------------------------------------------

    def projection(self) -> tuple:
        return self.inner.projection()

    @property
    def post_layernorm(self) -> torch.nn.Module:
        return self.inner.post_layernorm

    def fold_weights(self) -> list:
        return self.inner.fold_weights()

    def text_length(self) -> int | None:
        return self.inner.text_length()

    def token_ids(self, enc) -> tuple:
        return self.inner.token_ids(enc)

    def encode_ids(self, input_ids, attention_mask) -> torch.Tensor:
        return self.inner.encode_ids(input_ids, attention_mask)

    def encode(self, flat_texts=None, input_ids=None, attention_mask=None) -> torch.Tensor:
        return self.inner.encode(flat_texts, input_ids, attention_mask)

    # ---- the scorer's grid and image -------------------------------------------------------------

    @property
    def scorer_patch(self) -> int:
        """q: the scorer tower's patch size in pixels."""
        return int(self.inner.tower.config.patch_size)

    @property
    def native_patches(self) -> int:
        """M0: the scorer's patches at its native resolution (G x G; 196 for ViT-B/16 at 224 px)."""
        side = int(self.inner.tower.config.image_size) // self.scorer_patch
        return side * side

    def bounds(self, min_patches: int | None = None, max_patches: int | None = None) -> tuple:
        """(p_min, p_max) of the grid rule; None: the native count M0 and 4 M0."""
        m0 = self.native_patches
        lo = min(m0, max_patches) if min_patches is None and max_patches is not None else (
            m0 if min_patches is None else min_patches)
        hi = max(4 * m0, lo) if max_patches is None else max_patches
        return lo, hi

    def grid(self, h: int, w: int, min_patches: int | None = None, max_patches: int | None = None) -> tuple:
        """(h', w'): the scorer's patch grid for an h x w token grid (``merged_grid.scorer_grid``)."""
        return scorer_grid(h, w, *self.bounds(min_patches, max_patches))

    def scorer_image(self, rows: torch.Tensor, grid_thw, hp: int, wp: int) -> torch.Tensor:
        """[1, 3, h' q, w' q]: one LVLM image's pixel rows as the scorer's input (module docstring)."""
        img = unpatchify(rows.float(), grid_thw, patch=self.patch, merge=self.merge, temporal=self.temporal)
        mean = img.new_tensor(self.image_mean)[:, None, None]
        std = img.new_tensor(self.image_std)[:, None, None]
        img = img * std + mean  # the resized image in [0, 1], as the LVLM's processor had it before normalising
        q = self.scorer_patch
        img = torch.nn.functional.interpolate(img[None], size=(hp * q, wp * q), mode="bicubic", antialias=True,
                                              align_corners=False).clamp(0.0, 1.0)
        smean = img.new_tensor(self.scorer_image_mean)[:, None, None]
        sstd = img.new_tensor(self.scorer_image_std)[:, None, None]
        tower = self.inner.tower
        param = next(tower.parameters())
        return ((img - smean) / sstd).to(param.device, param.dtype)

    # ---- the signals -----------------------------------------------------------------------------

    def patch_signals(self, pixels: torch.Tensor, folded) -> tuple:
        """(s [1, T, P] fp32, c [1, P] fp32) per scorer patch: the inner scorer's capture at its ``end_layer``
        (position embeddings interpolated), the folded texts' similarity, and the contribution."""
        cap = self.inner.capture(pixels, select_layer=self.inner.end_layer, interpolate_pos_encoding=True)
        w, b = folded
        s = ops.text_similarity(cap.hidden, w.to(cap.hidden.device), b.to(cap.hidden.device), self.ln_eps)
        if cap.contribution is not None:
            c = cap.contribution.float()
        else:
            c = ops.cls_contribution(cap.q_cls, cap.keys, cap.values)
        return s, c

    def token_scores(self, rows: torch.Tensor, grid_thw, folded, *, min_patches: int | None = None,
                     max_patches: int | None = None) -> tuple:
        """(s [1, T, N], c [1, N], (h', w')): one LVLM image's signals on its h x w tokens (raster order), the
        area-weighted means of the scorer patches each token's region overlaps. ``folded``: (w [1, T, Dv],
        b [1, T]) of this image's texts (``TextFolder``)."""
        _, gh, gw = (int(x) for x in grid_thw)
        h, w = gh // self.merge, gw // self.merge
        hp, wp = self.grid(h, w, min_patches, max_patches)
        with torch.no_grad():
            s, c = self.patch_signals(self.scorer_image(rows, grid_thw, hp, wp), folded)
            return resample(s, h, w, hp, wp), resample(c, h, w, hp, wp), (hp, wp)
