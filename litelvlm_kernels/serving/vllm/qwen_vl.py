"""What the Qwen2.5-VL and Qwen3-VL model files share (``qwen2_5_vl.py``, ``qwen3_vl.py``; docs/design.md section 12).

A paired scorer (``paired.PairedSelector``: the CLIP / SigLIP checkpoint named by ``litelvlm.scorer``) selects
R' of each image's N = t gh gw / merge^2 merged tokens; the rest is vLLM's Qwen model.

*Counts* (the processor, before the model runs): N from the processed item's ``image_grid_thw`` (so per-request
``min_pixels`` / ``max_pixels`` are honoured), R' = ``LiteLVLMSettings.kept_count`` (the transformers rule):
min(R, N) for ``num_retain``, min(N, max(1, ceil(q N - 1e-9))) for ``retain_ratio``, from the request
(``mm_processor_kwargs``: one of the two) or else the settings. The item's placeholders are that count
(``litelvlm_meta``), which ``_get_prompt_updates`` emits. Videos and ``image_embeds`` are refused by name.

*Positions* (M-RoPE): every kept token keeps its stock (t, h, w) = base + (0, r, c) and the text after an image
its stock position base + max(h, w), as ``enable_litelvlm`` gathers them. ``get_mrope_input_positions`` (when a
request is added, before the encoder runs) gives the text those positions and each image's slots its base; the
image path returns the kept rows with their (r, c) as 4 extra channels (hi / lo bytes: exact in bf16), and the
pruning hook ``recompute_mrope_positions`` writes (base, base + r, base + c) into the slots of each prefill chunk
and strips the channels (a chunk or a prefix-cache hit may start inside an image: slots are filled from
``num_computed_tokens``). vLLM calls the hook only when its runner's ``is_multimodal_pruning_enabled`` is set,
which it never sets for images (nor on CPU at all): ``mrope_hook.enable`` (from ``plugin.register``) sets it.

*Image path*: vLLM's tower on every row (Qwen3-VL: [main | DeepStack levels] per token, so one row selection
prunes DeepStack in step); the scorer on the pixel rows as the tower sees them (``visual.input_norm``: vLLM
sends uint8 pixels and normalises on the device); the kept rows in ascending raster order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...selection.layouts.merged_grid import merged_grid
from ...selection.settings import kept_count
from . import checkpoint
from .engine import ImageRows, check_rows, load_scorer_weights, pixel_input
from .paired import PairedSelector
from .processing import LiteLVLMInfoMixin, LiteLVLMProcessorMixin, field_names, refuse_embeddings
from .report import write_records
from .settings import (
    CONFIG_KEY,
    NUM_RETAIN_KEY,
    RETAIN_RATIO_KEY,
    RequestOptions,
    check_texts_fit,
    request_expressions,
    settings_from_config,
)

CHANNELS = 4  # (r // 256, r % 256, c // 256, c % 256) after each kept row
VIDEO_REFUSED = ("LiteLVLM serves Qwen2.5-VL / Qwen3-VL images only (videos would need a scorer run per frame pair "
                 "and their own placeholder layout); send the frames as images")


def qwen_settings(hf_config):
    """The ``litelvlm`` settings (``settings_from_config``) with the Qwen rule: num_retain or retain_ratio."""
    raw = getattr(hf_config, CONFIG_KEY, None) or {}
    if NUM_RETAIN_KEY in raw and raw.get(RETAIN_RATIO_KEY) is not None:
        raise ValueError(f"{CONFIG_KEY}.{NUM_RETAIN_KEY} / {RETAIN_RATIO_KEY}: give one of them (a count per image, "
                         "or a share of each image's tokens)")
    return settings_from_config(hf_config, paired=True)


@dataclasses.dataclass(frozen=True)
class QwenRequest(RequestOptions):
    """A request's expressions and budget: ``num_retain`` (0 when a ratio is in effect) or ``retain_ratio``."""

    retain_ratio: float | None = None

    def kept(self, n: int) -> int:
        """R' of an image of ``n`` tokens (``selection.settings.kept_count``)."""
        if self.retain_ratio is not None:
            return kept_count(n, retain_ratio=self.retain_ratio)
        return kept_count(n, num_retain=self.num_retain)


def qwen_request(settings, kwargs) -> QwenRequest:
    """The request's options (``mm_processor_kwargs``), validated with errors naming the field."""
    r, q = kwargs.get(NUM_RETAIN_KEY), kwargs.get(RETAIN_RATIO_KEY)
    if r is not None and q is not None:
        raise ValueError(f"mm_processor_kwargs.{NUM_RETAIN_KEY} / {RETAIN_RATIO_KEY}: give one of them")
    if r is not None and (isinstance(r, bool) or not isinstance(r, int)):
        raise TypeError(f"mm_processor_kwargs.{NUM_RETAIN_KEY}: expected an int, got {type(r).__name__} ({r!r})")
    if r is not None and r < 1:
        raise ValueError(f"mm_processor_kwargs.{NUM_RETAIN_KEY}={r} is out of range: expected >= 1")
    if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1):
        raise ValueError(f"mm_processor_kwargs.{RETAIN_RATIO_KEY}={q!r}: expected a number in (0, 1]")
    if r is None and q is None:  # the settings' budget
        r, q = (None, settings.retain_ratio) if settings.retain_ratio is not None else (settings.num_retain, None)
    return QwenRequest(expressions=request_expressions(settings, kwargs), num_retain=int(r or 0),
                       retain_ratio=None if q is None else float(q))


def processor_normalisation(model_config) -> tuple:
    """(image_mean, image_std) of the checkpoint's image processor (what vLLM's processor and tower use)."""
    from vllm.transformers_utils.processor import cached_image_processor_from_config

    ip = cached_image_processor_from_config(model_config)
    return tuple(ip.image_mean), tuple(ip.image_std)


# ---- positions -------------------------------------------------------------------------------------------------


def mrope_positions(input_tokens, mm_features, merge: int) -> tuple:
    """([3, L] int64, delta): text at its stock positions (after an image: base + max(h, w)), each image slot at its
    image's base on every axis (the hook adds (0, r, c)); delta = max + 1 - L."""
    parts, st, cur = [], 0, 0
    for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
        if f.modality != "image":
            raise ValueError(f"{f.modality}: {VIDEO_REFUSED}")
        off, n = f.mm_position.offset, f.mm_position.length
        _, h, w = merged_grid(f.data["image_grid_thw"].data.tolist(), merge)
        parts.append(np.arange(cur, cur + off - st)[None].repeat(3, 0))
        cur += off - st
        parts.append(np.full((3, n), cur))
        cur += max(h, w)
        st = off + n
    parts.append(np.arange(cur, cur + len(input_tokens) - st)[None].repeat(3, 0))
    pos = np.concatenate(parts, 1).astype(np.int64)
    return torch.from_numpy(pos), int(pos.max(initial=-1)) + 1 - len(input_tokens)


def position_channels(indices: torch.Tensor, w: int) -> torch.Tensor:
    """[R', 4]: each kept token's row and column (of a w-wide grid) as hi / lo bytes (exact in bf16)."""
    r, c = indices // w, indices % w
    return torch.stack([r // 256, r % 256, c // 256, c % 256], 1)


def place_kept_rows(input_ids, embeds, positions: torch.Tensor, num_computed: int, image_token_id: int) -> tuple:
    """The pruning hook's work: the embeddings of this prefill chunk (each a run of kept rows + 4 channels) fill the
    image slots from ``num_computed`` on, in order; each slot's position becomes base + (0, r, c), base being what
    ``mrope_positions`` put there (unchanged on axis 0, so calling it again is harmless). Returns (embeddings
    without the channels, positions, delta)."""
    n = len(input_ids)
    if not embeds:  # every step of every request lands here (decode steps too): nothing to place
        return [], positions, int(positions.max()) + 1 - n
    pos = positions.clone()
    ids = torch.as_tensor(input_ids, dtype=torch.long).to(pos.device)  # a list (V1) or a device tensor (V2)
    slots = (ids[num_computed:] == image_token_id).nonzero().flatten() + num_computed
    out, k = [], 0
    for mm in embeds:
        ch = mm[:, -CHANNELS:].round().long().to(pos.device)
        idx = slots[k:k + mm.shape[0]]
        k += mm.shape[0]
        base = pos[0, idx]
        pos[1, idx] = base + ch[:, 0] * 256 + ch[:, 1]
        pos[2, idx] = base + ch[:, 2] * 256 + ch[:, 3]
        out.append(mm[:, :-CHANNELS])
    return out, pos, int(pos.max()) + 1 - n


# ---- processing ------------------------------------------------------------------------------------------------


class QwenInfoMixin(LiteLVLMInfoMixin):
    """On a Qwen ``ProcessingInfo``: images only; the request's options and the counts per image grid. vLLM's own
    ``get_num_image_tokens`` (the stock count N) stays: the memory profile's upper bound."""

    def settings(self):
        return qwen_settings(self.get_hf_config())

    def get_supported_mm_limits(self):
        return {"image": None, "video": 0}

    def validate_num_items(self, modality: str, num_items: int) -> None:
        if modality == "video" and num_items:
            raise ValueError(f"video: {VIDEO_REFUSED}")
        super().validate_num_items(modality, num_items)

    def request_options(self, kwargs) -> QwenRequest:
        self.check_engine_kwargs()
        return qwen_request(self.settings(), kwargs or {})

    def kept_counts(self, opts: QwenRequest, grids) -> list:
        """R' per image of ``grids`` ([n, 3] image_grid_thw); each must hold the request's expressions."""
        merge = self.get_hf_config().vision_config.spatial_merge_size
        settings, out = self.settings(), []
        for thw in torch.as_tensor(grids).tolist():
            t, h, w = merged_grid(thw, merge)
            out.append(opts.kept(t * h * w))
            check_texts_fit(settings, opts.expressions, out[-1], t * h * w)
        return out


class QwenProcessorMixin(LiteLVLMProcessorMixin):
    """On a Qwen ``MultiModalProcessor``: R' image tokens per image (``litelvlm_meta``), videos refused."""

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        refuse_embeddings(mm_items)
        if mm_items.get_count("video", strict=False):
            raise ValueError(f"video: {VIDEO_REFUSED}")
        return super()._apply_hf_processor_main(mm_items, hf_kwargs)

    def litelvlm_counts(self, modality: str, mm_items, opts, processed) -> list:
        return self.info.kept_counts(opts, processed["image_grid_thw"])

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        from vllm.multimodal.processing import PromptReplacement

        refuse_embeddings(mm_items)
        token = self.info.get_hf_config().image_token_id
        meta = field_names("image")[1]

        def replacement(i: int) -> list:
            return [token] * int(out_mm_kwargs["image"][i][meta].data[2])

        return [PromptReplacement(modality="image", target=[token], replacement=replacement)]


# ---- the model -------------------------------------------------------------------------------------------------


class QwenModelMixin:
    """On vLLM's Qwen model: the paired selector, the image path, the positions and the pruning hook."""

    litelvlm_mrope_hook = True  # mrope_hook.enable sets the runner's flag for models with this

    def __init__(self, *, vllm_config, prefix: str = "") -> None:  # vLLM reads these two names off the signature
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.litelvlm_settings = qwen_settings(self.config)
        mean, std = processor_normalisation(vllm_config.model_config)
        self.litelvlm = PairedSelector(self.config.vision_config, checkpoint.config(self.litelvlm_settings.scorer),
                                       self.litelvlm_settings, image_mean=mean, image_std=std)
        # our rows carry position channels: vLLM's encoder CUDA graphs (which bypass embed_multimodal) stay off
        self.is_multimodal_pruning_enabled = True

    def get_mrope_input_positions(self, input_tokens, mm_features):
        return mrope_positions(input_tokens, mm_features, self.config.vision_config.spatial_merge_size)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        return place_kept_rows(input_ids, list(multimodal_embeddings), mrope_positions, num_computed_tokens,
                               self.config.image_token_id)

    def embed_multimodal(self, **kwargs: object):
        for key in ("pixel_values_videos", "video_embeds"):
            if kwargs.get(key) is not None:
                raise ValueError(f"{key}: {VIDEO_REFUSED}")
        image_input = pixel_input(self, kwargs)
        if image_input is None:
            return []
        feats = self._process_image_input(image_input)  # per image [N_i, D] (Qwen3-VL: D = main + DeepStack)
        grids = image_input["image_grid_thw"].tolist()
        rows = ImageRows.of(kwargs)
        pixels = self.visual.input_norm(image_input["pixel_values"].to(self.visual.device), torch.float32)
        chosen = self.litelvlm.select_images(pixels, grids, self.litelvlm.fold(rows.text_ids, rows.num_texts),
                                             rows.counts)
        check_rows([len(idx) for idx, _ in chosen], rows.counts)
        merge = self.config.vision_config.spatial_merge_size
        # num_retain 0 in the meta is a ratio request: its record's budget is the R' it gave
        write_records(self.litelvlm_settings.report_path, rows.reports, [[c] for c in chosen],
                      [r or n for r, n in zip(rows.budgets, rows.counts)], rows.counts,
                      [[merged_grid(thw, merge)[1:]] for thw in grids])
        return tuple(torch.cat([f[idx.to(f.device)], position_channels(idx, thw[2] // merge).to(f.device, f.dtype)], 1)
                     for f, thw, (idx, _) in zip(feats, grids, chosen))

    def load_weights(self, weights):
        return load_scorer_weights(self, super().load_weights, weights)


def family_classes(name: str, module: str, info, processor, dummy_inputs, model) -> tuple:
    """The plugin's (ProcessingInfo, MultiModalProcessor, model) classes of one Qwen family, ``LiteLVLM<name>...``:
    vLLM's ``info`` / ``processor`` / ``model`` classes under the mixins above, registered with vLLM's multimodal
    registry (with vLLM's ``dummy_inputs``); a family file binds them to their names in ``module``."""
    from vllm.multimodal import MULTIMODAL_REGISTRY

    def make(suffix: str, bases: tuple, doc: str):
        qual = f"LiteLVLM{name}{suffix}"
        return type(qual, bases, {"__doc__": doc, "__module__": module, "__qualname__": qual})

    info_cls = make("ProcessingInfo", (QwenInfoMixin, info), "Images only; R' per image from its grid and the request.")
    proc_cls = make("MultiModalProcessor", (QwenProcessorMixin, processor),
                    "Emits R' image tokens per image and the per-image text fields.")
    model_cls = make("ForConditionalGeneration", (QwenModelMixin, model),
                     "Images keep R' tokens chosen by a paired scorer, at their stock M-RoPE positions.")
    return info_cls, proc_cls, MULTIMODAL_REGISTRY.register_processor(proc_cls, info=info_cls,
                                                                      dummy_inputs=dummy_inputs)(model_cls)


__all__ = ["QwenInfoMixin", "family_classes", "QwenModelMixin", "QwenProcessorMixin", "QwenRequest", "mrope_positions",
           "place_kept_rows", "position_channels", "qwen_request", "qwen_settings"]
