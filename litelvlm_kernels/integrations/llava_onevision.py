"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): a SigLIP tower, AnyRes images, pooled video frames.

The stock model (transformers 4.45 - 5.x, ``modeling_llava_onevision.py``)
projects every view's select-layer states (``vision_feature_layer=-1`` of a
tower that drops SigLIP's last layer; ``"full"``: all M patches, SigLIP has no
[CLS]; 27 x 27 = 729 for so400m-384) and then lays them out:

* **an image alone in its prompt** (``batch_num_images`` absent or 1): the
  base view (M tokens), then the nh x nw tiles as one (g nh) x (g nw) grid,
  cropped ("unpadded") to the image's aspect ratio (h x w cells); if that grid
  holds more than about N views' worth of cells (``vision_aspect_ratio =
  "anyres_max_N"``: ratio = sqrt(h w / (N g^2)) > 1.1) it is bilinearly
  downsampled to h2 x w2 = int(h // ratio) x int(w // ratio); one
  ``image_newline`` after every row: M + h2 (w2 + 1) placeholders;
* **several images in one prompt** (``batch_num_images[b] > 1``): only the base
  view, then one newline: M + 1;
* **a video**: every frame's grid bilinearly downsampled 2 x (g -> ceil(g / 2),
  ``apply_pooling``), frames concatenated, ONE newline after the last frame:
  F ceil(g / 2)^2 + 1.

LiteLVLM selects among the tokens the LLM sees. Text similarity s [V, T, M]
(the SigLIP fold, ``siglip.py``) and contribution c [V, M] are computed on
each view's tower grid and then pushed, as extra channels, through the very
same spatial ops as the features (the installed version's own
``pack_image_features`` / ``apply_pooling``: unpad, bilinear downsample,
pooling), so a final token's scores are the same bilinear mix of its sources
as its features. Then, as LLaVA-NeXT / LLaVA-NeXT-Video (``views.py``):

* ``budget="per_tile"`` (default): the base view keeps R' = min(R, M) of its
  tokens, every tile R' of the final grid cells it owns. On a downsampled grid
  a cell mixes up to four source cells, possibly of two tiles: it belongs to
  the tile that holds its CENTRE (final row i of h2 has its centre at cropped
  row (i + 1/2) h / h2, the point bilinear interpolation samples; a centre on
  a tile border goes to the later tile). A tile's cells form a rectangle of
  the final grid; without downsampling they are exactly its unpadded tokens.
  ``budget="global"``: one selection of R' over all of the image's final
  tokens (base view and tiles; contributions as shares of their own view's
  total, ``views.py``);
* a multi-image view has one view: R' of its M tokens;
* videos: ``video_budget="per_frame"`` (default) R' = min(R, pooled tokens)
  per frame, ``"per_clip"`` R' over all frames of the video (per-frame
  shares);
* kept tokens keep the stock layout in raster order (base, then the grid row
  by row; frames in order), whatever ``order`` says; ``image_newline``:
  ``"kept_rows"`` (default) a newline after each grid row that kept a token,
  ``"all"`` after every row (as stock), ``"none"`` none. The single newline
  that closes a multi-image view or a video is kept unless ``"none"`` (it
  follows tokens that are always kept);
* every placeholder run shrinks to exactly the features built; keeping every
  token (R >= M, per_tile / per_frame, ``image_newline="all"``) gives the
  stock features bit for bit (tested).

``vision_feature_select_strategy``: the rows fed to the projector must be the
patch grid. A SigLIP tower needs ``"full"`` (what OneVision checkpoints use):
``"default"`` would drop its first PATCH (there is no [CLS]), and the stock
model itself then fails for AnyRes images and videos (M - 1 rows do not form
the g x g grid). A CLIP tower (not a released checkpoint) needs ``"default"``.
The other choice is refused, naming the field.
"""

from __future__ import annotations

import torch

from ..selection.layouts.onevision import OneVision, max_views
from ..selection.layouts.video import PooledVideo
from ..selection.towers import config_get, model_part
from ..selection.views import contribution, view_reports, view_similarity
from .adapter import FamilyAdapter, Modality, register_adapter
from .llava import grid_side, image_token_id
from .llava_next import anyres_layout


def _owner(model):
    """The module holding ``pack_image_features`` / ``apply_pooling`` with the stock signature: the inner
    ``LlavaOnevisionModel`` (transformers >= 4.52) or the model itself (4.45 - 4.51)."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "apply_pooling") else model


def pack(model, per_image: list, image_sizes, aspect: str, newline=None) -> list:
    """The installed version's ``pack_image_features`` on per-image [views, M, C] tensors (any C): unpad,
    downsample, flatten, one [n_i, C] tensor per image (with the newline rows only if ``newline`` is given)."""
    out, lens = _owner(model).pack_image_features(list(per_image), image_sizes, image_newline=newline,
                                                  vision_aspect_ratio=aspect)
    return list(out.split(lens.tolist())) if isinstance(out, torch.Tensor) else list(out)  # 4.45: concatenated


def pooling(model, x: torch.Tensor) -> torch.Tensor:
    """The installed version's ``apply_pooling``: [frames, M, C] -> [frames, P, C] (bilinear, g -> ceil(g / 2))."""
    return _owner(model).apply_pooling(x)


def onevision_layout(model) -> OneVision:
    """The model's layout (its AnyRes geometry read with its own modeling module's helpers)."""
    return OneVision(anyres_layout(model))


def geometry(model, image_size, aspect: str, multi_view: bool = True) -> dict:
    """Views, stock placeholder count and final grid of one image (``OneVision.geometry``) for ``model``."""
    return onevision_layout(model).geometry(image_size, aspect, multi_view)


@register_adapter
class LlavaOnevisionAdapter(FamilyAdapter):
    """``model_type == "llava_onevision"``: ``pixel_values`` [N, V_max, 3, H, W] (or the views concatenated,
    [sum V, 3, H, W]) with ``image_sizes`` [N, 2] (H, W) and optional ``batch_num_images``;
    ``pixel_values_videos`` [B, F, 3, H, W]."""

    model_types = ("llava_onevision",)

    def check_model(self) -> None:
        st = self.strategy()
        want = "default" if self.pruner.has_cls else "full"
        if st != want:
            tower = "a CLIP tower ([CLS] first)" if self.pruner.has_cls else "a SigLIP tower (no [CLS])"
            raise ValueError(f"vision_feature_select_strategy={st!r}: LLaVA-OneVision with {tower} needs {want!r}, "
                             "so that the projector's rows are exactly the patch grid")
        self.aspect({})
        self.layout = onevision_layout(self.model)

    def side(self) -> int:
        return grid_side(self.model)

    def aspect(self, kwargs: dict) -> str:
        """``vision_aspect_ratio`` of the call or the config ("anyres_max_N")."""
        a = kwargs.get("vision_aspect_ratio") or config_get(self.model.config, "vision_aspect_ratio",
                                                             default="anyres_max_9")
        max_views(a)
        return a

    def multi_view(self, kwargs: dict, n: int) -> list:
        """Per image: AnyRes (alone in its prompt) or its base view only (``batch_num_images[b] > 1``)."""
        bni = kwargs.get("batch_num_images")
        if bni is None:
            return [True] * n
        counts = [int(x) for x in (bni.tolist() if isinstance(bni, torch.Tensor) else bni)]
        if sum(counts) != n:
            raise ValueError(f"batch_num_images: {counts} counts {sum(counts)} images but image_sizes has {n}")
        return [c == 1 for c in counts for _ in range(c)]

    def geometries(self, kwargs: dict) -> list:
        sizes, px = kwargs.get("image_sizes"), kwargs["pixel_values"]
        n = len(sizes) if sizes is not None else 0
        if sizes is None or (px.dim() == 5 and n != px.shape[0]):
            raise ValueError(f"image_sizes: one (height, width) per image needed, got "
                             f"{None if sizes is None else n} for {px.shape[0]} images")
        aspect = self.aspect(kwargs)
        geos = [self.layout.geometry(sz, aspect, mv) for sz, mv in zip(sizes, self.multi_view(kwargs, n))]
        views = [geo["views"] for geo in geos]
        if px.dim() == 5 and px.shape[1] < max(views):
            raise ValueError(f"pixel_values: {px.shape[1]} views per image, but image_sizes need up to {max(views)}")
        if px.dim() == 4 and px.shape[0] != sum(views):
            raise ValueError(f"pixel_values: {px.shape[0]} views, but image_sizes need {sum(views)} ({views})")
        return geos

    def pooled_per_frame(self) -> int:
        return pooling(self.model, torch.zeros(1, self.side() ** 2, 1)).shape[1]

    def modalities(self) -> list:
        cfg = self.model.config
        image = Modality("pixel_values", image_token_id(cfg), ("image_sizes", "batch_num_images"),
                         lambda kw: [geo["stock"] for geo in self.geometries(kw)], self.image_features,
                         pixel_dims=(4, 5))
        video = Modality("pixel_values_videos", int(config_get(cfg, "video_token_id", "video_token_index")),
                         ("image_sizes_videos",), self.video_counts, self.video_features, pixel_dims=(5,),
                         stacked=True)
        return [image, video]

    def video_counts(self, kwargs: dict) -> list:
        B, Fr = kwargs["pixel_values_videos"].shape[:2]
        return [Fr * self.pooled_per_frame() + 1] * B

    def _scores(self, cap, cond, view_item):
        """[V, M, T + 1] fp32: the similarity to each text and the contribution, as channels, and T, num_texts."""
        s, num = view_similarity(self.pruner.ln_eps, cap.hidden, cond, view_item)
        c = contribution(cap).to(s.device, s.dtype)
        return torch.cat([s.transpose(1, 2), c[..., None]], -1), s.shape[1], num

    def image_features(self, kwargs: dict, cond) -> tuple:
        geos = self.geometries(kwargs)
        px, sizes, aspect = kwargs["pixel_values"], kwargs["image_sizes"], self.aspect(kwargs)
        counts = [geo["views"] for geo in geos]
        rows = torch.cat([px[i, :n] for i, n in enumerate(counts)]) if px.dim() == 5 else px
        cap = self.pruner.capture(rows, full_tower=True)
        view_item = torch.arange(len(geos)).repeat_interleave(torch.tensor(counts))
        maps, T, num = self._scores(cap, cond, view_item)
        final_maps = pack(self.model, maps.split(counts), sizes, aspect)                  # [n_i, T + 1] per image
        proj = model_part(self.model, "multi_modal_projector")(self.features_of(cap, kwargs))  # [views, M, H]
        final = pack(self.model, proj.split(counts), sizes, aspect)                       # [n_i, H] per image
        chosen, kept = self.layout.select(final_maps, geos, T, num, self.settings)
        newline = model_part(self.model, "image_newline")
        feats = [self.layout.assemble(geo, final[i], kept[i], newline, self.settings.image_newline)
                 for i, geo in enumerate(geos)]
        starts = torch.tensor([0] + counts).cumsum(0).tolist()
        reports = [[view_reports([chosen[v]], grid)[0] for v, grid in zip(range(starts[i], starts[i + 1]),
                                                                          geo["cell_grids"])]
                   for i, geo in enumerate(geos)]
        return feats, reports, cap

    def video_features(self, kwargs: dict, cond) -> tuple:
        px = kwargs["pixel_values_videos"]                                                # [B, F, 3, H, W]
        B, Fr = px.shape[:2]
        cap = self.pruner.capture(px.flatten(0, 1), full_tower=True)
        maps, T, num = self._scores(cap, cond, torch.arange(B).repeat_interleave(Fr))
        pooled = pooling(self.model, maps)                                                # [B F, P, T + 1]
        proj = pooling(self.model, model_part(self.model, "multi_modal_projector")(self.features_of(cap, kwargs)))
        video = PooledVideo(pooled.shape[1], closing_newline=True)
        chosen = video.select(pooled[..., :T].transpose(1, 2), pooled[..., T], num, B, self.settings)
        feats = video.assemble(proj, chosen, B, model_part(self.model, "image_newline"), self.settings.image_newline)
        return feats, [view_reports(chosen[b * Fr:(b + 1) * Fr], (video.side, video.side)) for b in range(B)], cap
