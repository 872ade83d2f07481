"""The keep-all contract's cases: each supported family's tiny model and stock inputs, in every padding layout.

A case is a family's model (built once, eager attention so attention maps are
real) and a function giving its stock inputs for one padding layout. The
placeholder counts come from the stock model itself (its own
``get_image_features`` / ``get_video_features``), never from the library.

Layouts of a 2-prompt batch whose rows hold 1 and 2 visual items (one item per
prompt for the video and single-image families): ``left`` (as a processor pads
for generation), ``right``, ``pad_column`` (one more padding column that every
row has), ``row`` (the first prompt cut out of the padded batch, its padding
kept) and ``unpadded`` (the first prompt alone, no attention mask).
"""

from __future__ import annotations

import functools

import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers.LlavaForConditionalGeneration, "get_image_features"):
    # transformers 4.45 (the oldest supported) counts placeholders only inside its forward; its keep-all
    # behaviour is held by the per-family tests (tests/test_llava*.py, test_paligemma.py, test_siglip.py)
    pytest.skip("this transformers has no get_image_features to count stock placeholders with",
                allow_module_level=True)

import _lvlm_models as lm  # noqa: E402
from _lvlm_models import tl, tq  # noqa: E402

LAYOUTS = ("left", "right", "pad_column", "row", "unpadded")
SIZES = torch.tensor([[50, 120], [100, 90], [128, 40]])  # (H, W): wide 1 x 2, 2 x 2, tall 2 x 1 tiles
FRAMES = 2


def _counts(out) -> list:
    """Per item: the feature rows a stock ``get_*_features`` returns (transformers 5.2x: its pooler_output)."""
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, torch.Tensor):  # [N, n, H]; 4.x videos: [N, frames, P, H]
        return [feats[0, ..., 0].numel()] * feats.shape[0]
    return [f[..., 0].numel() for f in feats]  # [n, H]; 4.x videos: [frames, P, H]


def stock_counts(model, key: str, pixels: dict) -> list:
    inner = lm.inner(model)
    with torch.no_grad():
        if key == "pixel_values_videos":
            return _counts(inner.get_video_features(pixels[key]))  # 5.x names it pixel_values_videos, 4.x not
        return _counts(inner.get_image_features(**pixels))


def _rows(n_items, counts, token: int, **kw):
    return tl.prompt_ids(n_items, [(token, n) for n in counts], **kw)


def layout(batch: dict, items_per_row: list, kind: str, per_item: tuple) -> dict:
    """``batch`` (left padded) in layout ``kind``; ``per_item``: the keys whose first dim counts visual items."""
    mask = batch["attention_mask"]
    if kind == "left":
        return dict(batch)
    if kind == "right":
        shift = [int((1 - m).sum()) for m in mask]
        out = dict(batch)
        for k in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "labels"):
            if k in batch:
                out[k] = torch.stack([torch.roll(r, -sh) for r, sh in zip(batch[k], shift)])
        return out
    if kind == "pad_column":
        out = dict(batch)
        for k, pad in (("input_ids", tl.PAD), ("attention_mask", 0), ("token_type_ids", 0), ("mm_token_type_ids", 0),
                       ("labels", -100)):
            if k in batch:
                out[k] = torch.cat([torch.full_like(batch[k][:, :1], pad), batch[k]], 1)
        return out
    n = items_per_row[0]
    row = {k: (v[:n] if k in per_item else v[:1]) for k, v in batch.items()}
    if "image_grid_thw" in batch:  # Qwen: pixel_values hold each image's patch rows, image_grid_thw counts them
        row["pixel_values"] = batch["pixel_values"][:int(batch["image_grid_thw"][:n].prod(-1).sum())]
    if kind == "row":
        return row
    assert kind == "unpadded"
    real = row["attention_mask"][0].bool()
    return {k: (v[:, real] if k in ("input_ids", "token_type_ids", "mm_token_type_ids", "labels") else v)
            for k, v in row.items() if k != "attention_mask"}


def _llava_like(model, token=tl.IMAGE_TOKEN):
    px = lm.pixels(3, 3, tl.IMAGE, tl.IMAGE)
    counts = stock_counts(model, "pixel_values", {"pixel_values": px})
    ids, mask = _rows([1, 2], counts, token)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=px), [1, 2], ("pixel_values",)


def _anyres(model):
    V = 5
    px = lm.pixels(3, V, 3, tl.IMAGE, tl.IMAGE)
    pixels = {"pixel_values": px, "image_sizes": SIZES}
    counts = stock_counts(model, "pixel_values", pixels)
    ids, mask = _rows([1, 2], counts, tl.IMAGE_TOKEN)
    return dict(input_ids=ids, attention_mask=mask, **pixels), [1, 2], ("pixel_values", "image_sizes")


def _video(model):
    px = lm.pixels(2, FRAMES, 3, tl.IMAGE, tl.IMAGE)
    counts = stock_counts(model, "pixel_values_videos", {"pixel_values_videos": px})
    ids, mask = _rows([1, 1], counts, tl.VIDEO_TOKEN)
    return dict(input_ids=ids, attention_mask=mask, pixel_values_videos=px), [1, 1], ("pixel_values_videos",)


def _qwen(family: str):
    """Qwen2.5-VL / Qwen3-VL: the processor's batch (rows of 1 and 2 images; placeholder counts from the grids)."""
    def build(model):
        batch = tq.inputs(family)
        counts = stock_counts(model, "pixel_values", {k: batch[k] for k in ("pixel_values", "image_grid_thw")})
        assert counts == (batch["image_grid_thw"].prod(-1) // tq.MERGE ** 2).tolist()
        return batch, [1, 2], ("image_grid_thw",)
    return build


def _paligemma(model):
    batch = tl.paligemma_prompt([1, 2])
    batch["pixel_values"] = lm.pixels(3, 3, tl.IMAGE, tl.IMAGE)
    return batch, [1, 2], ("pixel_values",)


@functools.lru_cache(maxsize=None)
def model(family: str):
    """The family's tiny model with eager attention (real attention maps)."""
    if family == "paligemma":
        return lm.paligemma(attn="eager")
    if family == "llava_onevision":
        return lm.onevision(attn="eager")
    if family in tq.FAMILIES:
        return lm.qwen(family, attn="eager")
    return lm.lvlm(family, attn="eager")


# the families whose test batch has a prompt with two images
MULTI_IMAGE = ("llava", "llava_siglip", "llava_next", "llava_onevision", "paligemma", "qwen2_5_vl", "qwen3_vl")

# family -> its inputs builder
FAMILIES = {
    "llava": _llava_like,
    "llava_siglip": _llava_like,
    "llava_next": _anyres,
    "llava_next_video": _video,
    "llava_onevision": _anyres,
    "paligemma": _paligemma,
    # a paired scorer (the tiny CLIP); kept rows reach the stock forward as mm_encoder_outputs at stock positions
    "qwen2_5_vl": _qwen("qwen2_5_vl"),
    "qwen3_vl": _qwen("qwen3_vl"),
}


def inputs(family: str, kind: str) -> dict:
    """The stock inputs of ``family`` in layout ``kind``."""
    batch, items_per_row, per_item = FAMILIES[family](model(family))
    return layout(batch, items_per_row, kind, per_item)


def base_model(family: str):
    """The family's base model (``LlavaModel`` ...): the one inside ``model(family)``, without the LM head."""
    return lm.inner(model(family))
