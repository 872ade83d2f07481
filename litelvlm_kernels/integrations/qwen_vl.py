"""Qwen2.5-VL and Qwen3-VL (shared by ``qwen2_5_vl.py`` and ``qwen3_vl.py``): a paired scorer selects, the stock
model merges (docs/design.md section 12; docs/integrations.md, "Qwen2.5-VL and Qwen3-VL").

The towers have no [CLS] and no pooling head, so a CLIP or SigLIP chosen by the user scores each image
(``selection.paired.PairedScorer``): its signals are resampled onto the image's h x w merged tokens and
``litelvlm_kernels.select_scores`` keeps R' of the N = h w tokens (``num_retain``: min(R, N);
``retain_ratio``: a share of N). The stock tower runs unchanged (``get_image_features``); the kept rows, in
ascending raster order (``order`` does not apply: each row carries its own position), reach the stock
forward as ``mm_encoder_outputs`` with the placeholder run shrunk to R', so the stock code merges them and,
for Qwen3-VL, scatters the DeepStack rows kept with the same indices.

Positions (M-RoPE): the stock positions of the caller's FULL prompt (its own ``position_ids``, else what the
stock forward / generate would compute: ``get_rope_index`` from ``mm_token_type_ids`` and the grids) are
gathered with the kept tokens, so every kept image token keeps its (t, h, w) and the text after an image keeps
its stock position (base + max(h, w)). The stock ``rope_deltas`` (which a later cached turn reads) is set to
the shrunk prompt's: max kept position + 1 - kept length, per row. Videos are refused (by name): their
temporal patches would need per-frame scorer runs and the vLLM plugin does not take them either.
"""

from __future__ import annotations

import inspect

import torch

from ..api import select_scores
from ..selection.folding import TextFolder
from ..selection.kinds import paired_scorer_for
from ..selection.layouts.merged_grid import merged_grid, tokens_per_image
from ..selection.paired import NORMALISATION, PairedScorer
from ..selection.views import view_reports
from .adapter import FamilyAdapter, Modality

__all__ = ["MIN_TRANSFORMERS", "PairedPruner", "QwenAdapter", "check_transformers"]

MIN_TRANSFORMERS = (5, 19)  # mm_encoder_outputs and mm_token_type_ids (4.57 has neither; 5.19: the vLLM venv's)


def check_transformers(version: str | None = None) -> None:
    """Qwen support needs transformers >= 5.19: ValueError naming the installed version otherwise."""
    import transformers

    version = transformers.__version__ if version is None else version
    try:
        key = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        key = (0, 0)
    if key < MIN_TRANSFORMERS:
        raise ValueError(f"transformers {version}: LiteLVLM supports Qwen2.5-VL / Qwen3-VL on transformers >= "
                         f"{'.'.join(map(str, MIN_TRANSFORMERS))} only (it hands the kept rows over as "
                         "mm_encoder_outputs and reads mm_token_type_ids); upgrade transformers")


class PairedPruner:
    """What a Qwen adapter selects with: a paired scorer and the text folder on it (``cache_size`` folds kept)."""

    has_cls = False

    def __init__(self, scorer: PairedScorer, cache_size: int = 64):
        if not isinstance(scorer, PairedScorer):
            raise TypeError(f"pruner: expected a paired scorer's pruner, got a {type(scorer).__name__}")
        self.scorer = scorer
        self.folder = TextFolder(scorer, cache_size)

    def prepare_text(self, input_ids=None, attention_mask=None, texts=None, *, text_embeds=None,
                     texts_per_image=None, similarity_keep: str = "lowest"):
        """As ``LiteLVLMPruner.prepare_text``: texts -> a folded ``TextCondition``, cached by content."""
        return self.folder.prepare(input_ids, attention_mask, texts, text_embeds=text_embeds,
                                   texts_per_image=texts_per_image, similarity_keep=similarity_keep)


def _positions_as_rows(pos: torch.Tensor, batch: int, length: int) -> tuple:
    """A caller's ``position_ids`` as ([B, L, 3] M-RoPE positions, whether it had the text row): [B, L] / [1, L]
    (the same position on every axis, as the stock text model expands them), [3, B, L] or [4, B, L] ([text; t; h;
    w])."""
    if not isinstance(pos, torch.Tensor) or pos.is_floating_point() or pos.dim() not in (2, 3) or \
            pos.shape[-1] != length or (pos.dim() == 3 and (pos.shape[0] not in (3, 4) or pos.shape[1] != batch)):
        got = tuple(pos.shape) if isinstance(pos, torch.Tensor) else type(pos).__name__
        raise ValueError(f"position_ids: expected integer [B, L], [3, B, L] or [4, B, L] (B, L = {batch}, {length}), "
                         f"got {got}")
    if pos.dim() == 2:
        return pos.expand(batch, length)[..., None].expand(batch, length, 3), False
    return pos[-3:].permute(1, 2, 0), pos.shape[0] == 4


class QwenAdapter(FamilyAdapter):
    """The shared adapter; a family file sets ``model_types``, ``image_normalisation`` (its checkpoints') and
    ``deepstack`` (whether its encoder output carries DeepStack rows, pruned with the same indices)."""

    paired_scorer = True
    image_normalisation: tuple = NORMALISATION["clip"]
    deepstack = False

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def build_pruner(cls, model, text_model, tokenizer, options: dict) -> PairedPruner:
        """A ``PairedPruner`` on ``text_model`` (the paired CLIPModel / SiglipModel) and its tokenizer."""
        check_transformers()
        for name in ("visual_projection", "vision_head"):
            if options.get(name) is not None:
                raise ValueError(f"{name}: the paired scorer is a whole CLIPModel / SiglipModel (text_model=), which "
                                 "carries its projection and head")
        if text_model is None:
            raise ValueError("text_model: Qwen2.5-VL / Qwen3-VL need a paired scorer: pass a CLIPModel (or a "
                             "SiglipModel with its head) and its tokenizer, e.g. openai/clip-vit-base-patch16")
        mean, std = options.get("image_mean"), options.get("image_std")
        if (mean is None) != (std is None):
            raise ValueError(f"{'image_std' if std is None else 'image_mean'}: give image_mean and image_std together "
                             "(the LVLM processor's, e.g. processor.image_processor.image_mean / image_std)")
        if mean is None:
            mean, std = cls.image_normalisation
        vc = model.config.vision_config
        scorer = paired_scorer_for(text_model, tokenizer, image_mean=mean, image_std=std, patch=vc.patch_size,
                                   merge=vc.spatial_merge_size, temporal=vc.temporal_patch_size,
                                   scorer_image_mean=options.get("scorer_image_mean"),
                                   scorer_image_std=options.get("scorer_image_std"),
                                   head_contribution=options.get("head_contribution") or "exact")
        return PairedPruner(scorer)

    def check_model(self) -> None:
        check_transformers()
        if not isinstance(self.pruner, PairedPruner):
            raise TypeError(f"pruner: {type(self.pruner).__name__} scores with an LVLM's own CLIP / SigLIP tower; "
                            f"{type(self.model).__name__} needs a paired scorer (pass text_model= instead)")

    @property
    def inner(self):
        """The base model (``Qwen*Model``: ``visual``, ``get_rope_index``, ``rope_deltas``), or the model itself."""
        inner = getattr(self.model, "model", None)
        return inner if hasattr(inner, "visual") else self.model

    @property
    def merge(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def modalities(self) -> list:
        cfg = self.model.config
        image = Modality("pixel_values", int(cfg.image_token_id), ("image_grid_thw",),
                         lambda kw: tokens_per_image(kw["image_grid_thw"], self.merge), self.image_features,
                         check=self.check_images, encoder_output=self.encoder_output, features_take_generate=True,
                         run_columns=lambda cap: cap[1])
        # listed so a video-only call is refused (check_call) instead of reaching the stock model unpruned
        video = Modality("pixel_values_videos", int(cfg.video_token_id), ("video_grid_thw", "second_per_grid_ts"),
                         lambda kw: tokens_per_image(kw["video_grid_thw"], self.merge), self.video_features,
                         check=self.check_call)
        return [image, video]

    # ---- checks ----------------------------------------------------------------------------------

    def check_call(self, kwargs: dict) -> None:
        for key in ("pixel_values_videos", "video_grid_thw"):
            if kwargs.get(key) is not None:
                raise ValueError(f"{key}: videos are not supported by LiteLVLM for Qwen2.5-VL / Qwen3-VL yet "
                                 "(images only); pass the frames as images, or disable LiteLVLM for video prompts")

    def check_images(self, kwargs: dict) -> None:
        """``pixel_values`` [sum of t gh gw, C temporal p p] (float) against ``image_grid_thw`` [n, 3] (int)."""
        px, grid = kwargs["pixel_values"], kwargs.get("image_grid_thw")
        vc = self.model.config.vision_config
        width = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
        if not isinstance(px, torch.Tensor) or not px.is_floating_point() or px.dim() != 2 or px.shape[1] != width:
            got = f"shape {tuple(px.shape)}, {px.dtype}" if isinstance(px, torch.Tensor) else type(px).__name__
            raise ValueError(f"pixel_values: expected the processor's floating [patches, {width}] rows, got {got}")
        if not isinstance(grid, torch.Tensor) or grid.dim() != 2 or grid.shape[1] != 3 or grid.is_floating_point():
            got = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
            raise ValueError(f"image_grid_thw: expected an integer [num_images, 3] tensor with pixel_values, got {got}")
        rows = int(grid.prod(-1).sum())
        if rows != px.shape[0]:
            raise ValueError(f"pixel_values: {px.shape[0]} rows, but image_grid_thw {grid.tolist()} takes {rows}")
        for thw in grid.tolist():
            if thw[0] != 1:
                raise ValueError(f"image_grid_thw: an image of t={thw[0]} temporal patches; images have t = 1")
            merged_grid(thw, self.merge)

    # ---- positions (M-RoPE) ----------------------------------------------------------------------

    def stock_positions(self, kwargs: dict, generate: bool) -> tuple:
        """The stock positions of the caller's full prompt as [B, L, 3] (t, h, w), and how they were made: the
        caller's ``position_ids``; else generate()'s own rule (``_prepare_position_ids_for_generation``: 4 rows,
        text positions first) or forward()'s (``compute_3d_position_ids``; None there means the stock text model
        numbers the columns 0 .. L - 1 on every axis). Both rules set the stock ``rope_deltas`` as the stock
        call would (for the full prompt; ``kept_positions`` corrects it)."""
        ids, embeds, mask = kwargs.get("input_ids"), kwargs.get("inputs_embeds"), kwargs.get("attention_mask")
        ref = ids if ids is not None else embeds[..., 0]
        B, L = ref.shape
        if kwargs.get("position_ids") is not None:
            pos, text_row = _positions_as_rows(kwargs["position_ids"], B, L)
            return pos, {"text_row": text_row, "deltas": False}
        found = {k: kwargs[k] for k in ("attention_mask", "mm_token_type_ids", "image_grid_thw", "video_grid_thw",
                                        "second_per_grid_ts") if kwargs.get(k) is not None}
        if generate:  # generate() without an attention_mask derives one from pad tokens: here the prompt is unpadded
            if ids is not None:
                found["input_ids"] = ids
            pos = type(self.model)._prepare_position_ids_for_generation(self.model, ref if ids is not None else embeds,
                                                                        found)
            return pos[1:].permute(1, 2, 0), {"text_row": True, "deltas": True}
        inner, before = self.inner, self.inner.rope_deltas
        params = inspect.signature(inner.compute_3d_position_ids).parameters
        args = {**dict.fromkeys(("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")),
                **found, "input_ids": ids, "inputs_embeds": embeds, "attention_mask": mask, "cache": None,
                "past_key_values": None}  # the cache argument's name before 5.20
        pos = inner.compute_3d_position_ids(**{k: v for k, v in args.items() if k in params})
        if pos is None:
            pos = torch.arange(L, device=ref.device).expand(3, B, L)
        return pos.permute(1, 2, 0), {"text_row": False, "deltas": inner.rope_deltas is not before}

    def kept_positions(self, kept: torch.Tensor, attention_mask, info: dict, generate: bool) -> dict:
        """``position_ids`` of the shrunk prompt: the kept tokens' stock (t, h, w), and for generate() (or a
        caller who gave 4 rows) the text row first, numbered over the shrunk prompt as the stock generate numbers
        it; ``rope_deltas`` = max kept position + 1 - kept length per row, where the stock call would set it."""
        pos = kept.permute(2, 0, 1).contiguous()  # [3, B, L']
        real = attention_mask.bool()
        if info["deltas"]:
            deltas = [pos[:, b][:, real[b]].max() + 1 - real[b].sum() for b in range(pos.shape[1])]
            self.inner.rope_deltas = torch.stack(deltas).to(torch.int64)[:, None]
        if generate or info["text_row"]:
            text = (attention_mask.long().cumsum(-1) - 1).masked_fill(~real, 0)
            pos = torch.cat([text[None].to(pos.device, pos.dtype), pos])
        return {"position_ids": pos}

    def prefix_state(self) -> dict:
        return {"rope_deltas": self.inner.rope_deltas}

    def restore_prefix_state(self, state: dict) -> None:
        if "rope_deltas" in state:
            self.inner.rope_deltas = state["rope_deltas"]

    # ---- features --------------------------------------------------------------------------------

    def tower_kwargs(self, kwargs: dict, generate: bool) -> dict:
        """What the stock forward passes on to ``get_image_features`` (its ``**kwargs``: output_attentions ...);
        nothing in generate(), which encodes the images with their own arguments only."""
        if generate:
            return {}
        from transformers.utils.generic import TransformersKwargs

        named = inspect.signature(type(self.model).forward).parameters
        return {k: v for k, v in kwargs.items() if k not in named and k in TransformersKwargs.__optional_keys__}

    def image_features(self, kwargs: dict, cond, generate: bool = False) -> tuple:
        px, grid = kwargs["pixel_values"], kwargs["image_grid_thw"]
        enc = self.inner.get_image_features(px, grid, return_dict=True, **self.tower_kwargs(kwargs, generate))
        s, scorer = self.settings, self.pruner.scorer
        kept, views, start = [], [], 0
        folded, num = cond.folded, cond.num_texts
        for i, thw in enumerate(grid.tolist()):
            rows = px[start:start + thw[0] * thw[1] * thw[2]]
            start += rows.shape[0]
            _, h, w = merged_grid(thw, self.merge)
            sim, con, _ = scorer.token_scores(rows, thw, (folded.w[i:i + 1], folded.b[i:i + 1]),
                                              min_patches=s.scorer_min_patches, max_patches=s.scorer_max_patches)
            res = select_scores(sim, con, num_retain=s.kept(h * w), multi_text=s.multi_text, k_per_text=s.k_per_text,
                                num_texts=num[i:i + 1].to(sim.device), order="spatial")
            kept.append(res.indices[0])
            views.append(view_reports([(res.indices[0], res.from_similarity[0])], (h, w)))
        feats = [f[k.to(f.device)] for f, k in zip(enc.pooler_output, kept)]
        return feats, views, (enc, kept)

    def video_features(self, kwargs: dict, cond):
        self.check_call(kwargs)  # pragma: no cover - check_inputs refused the call already

    def encoder_output(self, feats: list, cap: tuple):
        """The stock encoder output with every per-token field cut to the kept rows: ``pooler_output`` and, for
        Qwen3-VL, each DeepStack level (the same indices, so every level's rows stay aligned with the main ones)."""
        enc, kept = cap
        fields = dict(enc.items())
        fields["pooler_output"] = tuple(feats)
        if self.deepstack and enc.get("deepstack_features") is not None:
            fields["deepstack_features"] = [tuple(f[k.to(f.device)] for f, k in zip(level, kept))
                                            for level in enc["deepstack_features"]]
        return type(enc)(**fields)
