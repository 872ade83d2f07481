"""Stock LVLM inputs -> the inputs of a forward that sees only the kept visual tokens.

Steps 1, 3 and 4 of ``lvlm.py``'s list: find each item's placeholder run and
its prompt, shrink the runs to the kept counts and re-pad the rows
(``attention_mask``, ``position_ids`` renumbered, ``labels``, ``token_type_ids``), embed and merge.
"""

from __future__ import annotations

import torch

from ._towers import config_get
from .capture import check_pixels
from .text import check_expression

# The call's per-token arguments: shrunk with input_ids (each item's dropped placeholders removed, the rows re-padded
# on their side) -> the value their padding gets. token_type_ids: PaliGemma's prefix (0, attended bidirectionally)
# / suffix (1) marks; the kept placeholders keep their type, so the prefix-LM mask stays the stock one minus the
# dropped tokens.
PER_TOKEN = {"attention_mask": 0, "position_ids": 1, "labels": -100, "token_type_ids": 0}
# those checked against input_ids' shape here (position_ids may be [1, L] or 3-D in other models: not checked)
_SAME_SHAPE = ("attention_mask", "labels", "token_type_ids")


def check_inputs(adapter, kwargs: dict) -> None:
    """The LVLM call's tensors, checked once at the boundary with errors naming the argument.

    The stock model would fail deep inside (an embedding error for float ids, an IndexError for 1-D ids) or,
    worse, read a 3-D or 5-D ``pixel_values`` as another number of images.
    """
    ids = kwargs.get("input_ids")
    if ids is None:
        raise ValueError("input_ids: needed with pixel inputs (LiteLVLM shrinks their placeholder runs)")
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"input_ids: expected a torch.Tensor, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"input_ids: expected integer token ids, got {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"input_ids: expected [batch, sequence], got shape {tuple(ids.shape)}"
                         + (" (add the batch dimension: input_ids[None])" if ids.dim() == 1 else ""))
    for name in _SAME_SHAPE:
        t = kwargs.get(name)
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != ids.shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected the shape of input_ids {tuple(ids.shape)}, got {got}")
        if name != "attention_mask" and t is not None and (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{name}: expected integer values, got {t.dtype}")
    vision_config = adapter.model.config.vision_config
    for mod in adapter.modalities():
        px = kwargs.get(mod.pixel_key)
        if px is not None:
            check_pixels(px, vision_config, mod.pixel_key, mod.pixel_dims)


def _items_per_row(ids: torch.Tensor, token_id: int, counts: list, what: str) -> tuple:
    """(flat positions of each item's placeholders, row of each item); checks the count is exact."""
    mask = ids == token_id
    per_row = mask.sum(1).tolist()
    total, need = sum(per_row), sum(counts)
    if total != need:
        raise ValueError(f"input_ids: {total} {what} placeholder tokens (id {token_id}) but the {len(counts)} "
                         f"{what} input(s) take {need} in the stock model ({counts}); build input_ids with the "
                         "model's processor and do not prune them yourself")
    rows, b, used = [], 0, 0
    for i, n in enumerate(counts):
        while b < len(per_row) and used == per_row[b]:
            b, used = b + 1, 0
        if b >= len(per_row) or used + n > per_row[b]:
            raise ValueError(f"input_ids: the placeholders of {what} {i} span two prompts")
        rows.append(b)
        used += n
    return mask, rows


def _expressions_per_item(expressions, rows: list, batch: int, missing: str) -> list:
    if expressions is None:
        if missing == "cls":
            return [[] for _ in rows]
        raise ValueError("referring_expressions: required (one str or list of str per prompt), e.g. "
                         "model.generate(**inputs, referring_expressions=[['the man on the left']]); or enable "
                         "with missing_expressions='cls' for [CLS]-context selection without text")
    if isinstance(expressions, str):
        expressions = [expressions]
    if not isinstance(expressions, (list, tuple)):
        raise TypeError(f"referring_expressions: expected one str, list of str or None per prompt, got "
                        f"{type(expressions).__name__}")
    expressions = list(expressions)
    if len(expressions) != batch:
        raise ValueError(f"referring_expressions: got {len(expressions)} entries for a batch of {batch} prompts "
                         "(one str, list of str, or None per prompt)")
    per_row = []
    for b, e in enumerate(expressions):
        if e is not None and not isinstance(e, (str, list, tuple)):
            raise TypeError(f"referring_expressions[{b}]: expected a str, a list of str or None, "
                            f"got {type(e).__name__}")
        e = [] if e is None else [e] if isinstance(e, str) else list(e)
        e = [check_expression(t, f"referring_expressions[{b}][{j}]") for j, t in enumerate(e)]
        if not e and missing != "cls" and b in rows:
            raise ValueError(f"referring_expressions[{b}]: prompt {b} has an image but no expression; pass one, "
                             "or enable with missing_expressions='cls'")
        per_row.append(e)
    return [per_row[b] for b in rows]


def _padding_side(attention_mask) -> str:
    if attention_mask is not None and not bool(attention_mask[:, 0].all()) and bool(attention_mask[:, -1].all()):
        return "left"
    if attention_mask is not None and not bool(attention_mask[:, -1].all()):
        return "right"
    return "left"  # no padding in the input: left, what generate() needs for decoder-only models


def shrink(dropped: torch.Tensor, real: torch.Tensor, tensors: dict, pads: dict, side: str) -> dict:
    """Drop the ``dropped`` [B, L] placeholders and the padding (``~real``) of each [B, L] tensor, re-pad the
    rows to the longest on ``side`` with ``pads[name]``.

    ``position_ids`` are renumbered (minus the placeholders dropped before each position) so each row's
    positions stay consecutive.
    """
    keep = real & ~dropped
    n = keep.sum(1)
    L = int(n.max()) if n.numel() else 0
    out = {}
    for name, t in tensors.items():
        if t is None:
            out[name] = None
            continue
        if name == "position_ids":
            t = t - dropped.long().cumsum(1)
        new = t.new_full((t.shape[0], L), pads[name])
        for b in range(t.shape[0]):
            row = t[b][keep[b]]
            if side == "left":
                new[b, L - row.numel():] = row
            else:
                new[b, :row.numel()] = row
        out[name] = new
    return out


def prepare_inputs(adapter, kwargs: dict, expressions) -> tuple:
    """Stock inputs -> (kwargs for the stock forward / generate with inputs_embeds, shrunk input_ids, report)."""
    ids = kwargs["input_ids"]  # check_inputs ran first
    for name in ("inputs_embeds", "mm_encoder_outputs"):  # the latter: pre-encoded features (transformers 5.2x)
        if kwargs.get(name) is not None:
            raise ValueError(f"{name}: cannot be combined with pixel inputs while LiteLVLM is enabled")
    s = adapter.settings
    dropped = torch.zeros_like(ids, dtype=torch.bool)
    merges, report = [], {}
    for mod in adapter.modalities():
        if kwargs.get(mod.pixel_key) is None:
            continue
        counts = mod.stock_counts(kwargs)
        what = "video" if "video" in mod.pixel_key else "image"
        mask, rows = _items_per_row(ids, mod.token_id, counts, what)
        cond = adapter.text_condition(_expressions_per_item(expressions, rows, ids.shape[0], s.missing_expressions))
        feats, views = mod.features(kwargs, cond)
        flat = mask.flatten().nonzero().flatten()
        start, kept_counts = 0, []
        if len(feats) != len(counts) or any(f.shape[0] > n for n, f in zip(counts, feats)):
            raise RuntimeError(f"{type(adapter).__name__}: built {[f.shape[0] for f in feats]} {what} features for "
                               f"runs of {counts} placeholders (an adapter bug: it may only shrink them)")
        for n, f in zip(counts, feats):
            dropped.view(-1)[flat[start + f.shape[0]:start + n]] = True  # the tail of each item's run
            start += n
            kept_counts.append(f.shape[0])
        merges.append((mod.token_id, torch.cat(feats, 0)))
        report[what] = {"stock": counts, "kept": kept_counts, "views": views}
    mask = kwargs.get("attention_mask")
    side = _padding_side(mask)
    if mask is None:
        mask = torch.ones_like(ids)
    cfg = adapter.model.config
    pad_id = config_get(cfg, "pad_token_id", default=None)
    if pad_id is None:
        pad_id = config_get(getattr(cfg, "text_config", cfg), "pad_token_id", default=0)
    tensors = {"input_ids": ids, **{k: kwargs.get(k) for k in PER_TOKEN}, "attention_mask": mask}
    new = shrink(dropped, mask.bool(), tensors, {"input_ids": pad_id, **PER_TOKEN}, side)
    embeds = adapter.model.get_input_embeddings()(new["input_ids"])
    for token_id, feats in merges:
        where = (new["input_ids"] == token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(where, feats.to(embeds.device, embeds.dtype))
    out = {k: v for k, v in kwargs.items() if k not in pixel_keys(adapter)}
    out.update(attention_mask=new["attention_mask"], inputs_embeds=embeds, input_ids=None)
    for k in PER_TOKEN:
        if k != "attention_mask" and new[k] is not None:
            out[k] = new[k]
    visual = [token_id for token_id, _ in merges]
    report["rows"] = {  # per prompt: what the LLM attends to, before and after
        "visual_stock": sum((ids == t).sum(1) for t in visual).tolist(),
        "visual_kept": sum((new["input_ids"] == t).sum(1) for t in visual).tolist(),
        "tokens_stock": mask.sum(1).tolist(), "tokens_kept": new["attention_mask"].sum(1).tolist()}
    return out, new["input_ids"], report


def pixel_keys(adapter) -> set:
    keys = set()
    for mod in adapter.modalities():
        keys.add(mod.pixel_key)
        keys.update(mod.extra_keys)
    return keys
