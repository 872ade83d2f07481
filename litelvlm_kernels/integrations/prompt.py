"""The shrunk prompt: each visual item's placeholder run cut to its kept count, the kept features merged in.

Steps 3 and 4 of ``lvlm.py``'s list. The layout rule (docs/integrations.md,
"Padding"): every row loses exactly its own dropped placeholders and nothing
else. The caller's padding stays where it was, so keeping every token gives the
caller's tensors back unchanged (a padding column that every row has, a row cut
out of a padded batch, a fixed-length batch: all stay as they are). Rows that
drop more than the row that drops least get that many extra padding positions,
on the side the caller padded (left when the input is not padded: what
``generate()`` needs for decoder-only models), so the batch stays rectangular:
the shrunk length is ``L - min_b(dropped_b)``.
"""

from __future__ import annotations

import torch

from ..selection.towers import config_get
from .inputs import PER_TOKEN, expressions_per_item, items_per_row, pixel_keys, placeholder_ids
from .vision_outputs import legacy, vision_output


def padding_side(attention_mask) -> str:
    """"left" or "right": where the caller padded (its first or last column has padding); "left" if it did not."""
    if attention_mask is None:
        return "left"
    first, last = attention_mask[:, 0].all(), attention_mask[:, -1].all()
    return "right" if bool(first) and not bool(last) else "left"


def shrink(dropped: torch.Tensor, tensors: dict, pads: dict, side: str) -> dict:
    """Remove the ``dropped`` [B, L] positions from each [B, L, ...] tensor; rows that drop more than the least
    get padding ``pads[name]`` (a scalar, or a tensor of the trailing shape) on ``side``.

    ``position_ids`` are renumbered (minus the placeholders dropped before each position) so each row's
    positions stay consecutive. ``shift_labels`` (position i holds the label of token i + 1) are re-aimed: a kept
    position takes the value held by the position just before the next kept one, so the last kept placeholder of
    a run still predicts the text that follows the image.
    """
    B, L = dropped.shape
    counts = dropped.sum(1).tolist()
    least = min(counts) if counts else 0
    keep = ~dropped
    out = {}
    for name, t in tensors.items():
        if t is None:
            out[name] = None
            continue
        if t.shape[0] != B:  # position_ids [1, L]: one row for the batch
            t = t.expand(B, *t.shape[1:])
        if name == "position_ids":
            t = t - dropped.to(t.device).long().cumsum(1)
        if name == "shift_labels":
            t = _reaimed(t, keep.to(t.device))
        new = t.new_empty((B, L - least) + tuple(t.shape[2:]))
        new[:] = pads[name]
        for b in range(B):
            row = t[b][keep[b].to(t.device)]
            if side == "left":
                new[b, new.shape[1] - row.shape[0]:] = row
            else:
                new[b, :row.shape[0]] = row
        out[name] = new
    return out


def _reaimed(shift_labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[B, L]: at each kept position, the shifted label of the position before the next kept one (at dropped
    positions: unchanged, they are removed next)."""
    L = keep.shape[1]
    pos = torch.arange(L, device=keep.device).expand_as(keep)
    # the next kept position after each position (L if none): a reversed running minimum over kept indices
    marked = torch.where(keep, pos, torch.full_like(pos, L))
    nxt = torch.cat([marked[:, 1:], torch.full_like(marked[:, :1], L)], 1).flip(1).cummin(1).values.flip(1)
    return shift_labels.gather(1, (nxt - 1).clamp(max=L - 1))


def _unaim_first_tokens(labels: torch.Tensor, caller_mask: torch.Tensor, dropped: torch.Tensor) -> None:
    """A label is a target only for the position before it. A row whose first token had no position before it in
    the caller's prompt (no left padding) but got the extra padding of a row that dropped fewer keeps it so: its
    first label becomes -100, or the loss would gain a term the stock loss of that prompt does not have."""
    extra = (dropped - dropped.min()).tolist()
    for b, n in enumerate(extra):
        if n > 0 and bool(caller_mask[b, 0]):
            labels[b, n] = -100


def _pad_id(config) -> int:
    pad_id = config_get(config, "pad_token_id", default=None)
    if pad_id is None:
        pad_id = config_get(getattr(config, "text_config", config), "pad_token_id", default=0)
    return int(pad_id)


# Host-side bookkeeping (placeholder runs, per-row counts, Python loops): under torch.compile(model) it runs eagerly,
# as a skipped frame, instead of breaking the graph at every data-dependent branch (each break printed a warning);
# the stock forward it feeds is compiled as usual.
@torch.compiler.disable
def prepare_inputs(adapter, kwargs: dict, expressions) -> tuple:
    """Stock inputs -> (kwargs for the stock forward / generate with ``inputs_embeds``, the shrunk placeholder ids,
    the report, the vision outputs {output field: value} to attach to the stock output).

    ``check_inputs`` ran first. The shrunk ids are ``input_ids`` shrunk (None when the caller passed only
    ``inputs_embeds``: then the placeholder positions were read off the embeddings).
    """
    ids = placeholder_ids(adapter, kwargs)
    s = adapter.settings
    dropped = torch.zeros_like(ids, dtype=torch.bool)
    merges, report, outputs = [], {}, {}
    for mod in adapter.modalities():
        if kwargs.get(mod.pixel_key) is None:
            continue
        counts = mod.stock_counts(kwargs)
        what = "video" if "video" in mod.pixel_key else "image"
        mask, rows = items_per_row(ids, mod.token_id, counts, what)
        cond = adapter.text_condition(expressions_per_item(expressions, rows, ids.shape[0], s.missing_expressions))
        feats, views, cap = mod.features(kwargs, cond)
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
        outputs[what] = (vision_output(adapter, mod, feats, cap, kwargs), legacy(mod, feats))
    caller_mask = kwargs.get("attention_mask")
    side = padding_side(caller_mask)
    counts = dropped.sum(1)
    # without a caller's mask, one is needed only where rows get extra padding (else the stock call's None stays)
    needs_mask = caller_mask is not None or (counts.numel() > 0 and bool((counts != counts.min()).any()))
    mask = caller_mask if caller_mask is not None else torch.ones_like(ids, dtype=torch.long)
    table = adapter.model.get_input_embeddings()
    pad_id = _pad_id(adapter.model.config)
    tensors = {"input_ids": kwargs.get("input_ids"), "inputs_embeds": kwargs.get("inputs_embeds"), "ids": ids,
               **{k: kwargs.get(k) for k in PER_TOKEN}, "attention_mask": mask}
    pads = {"input_ids": pad_id, "ids": pad_id, **PER_TOKEN}
    if tensors["inputs_embeds"] is not None:  # extra padding positions hold what the pad token embeds to
        pads["inputs_embeds"] = table(torch.full((), pad_id, device=ids.device)).to(tensors["inputs_embeds"].dtype)
    new = shrink(dropped, tensors, pads, side)
    if new["labels"] is not None and side == "left":
        _unaim_first_tokens(new["labels"], mask, counts)
    embeds = new["inputs_embeds"] if new["inputs_embeds"] is not None else table(new["input_ids"])
    for token_id, feats in merges:
        where = (new["ids"] == token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(where, feats.to(embeds.device, embeds.dtype))
    out = {k: v for k, v in kwargs.items() if k not in pixel_keys(adapter)}
    out.update(inputs_embeds=embeds, input_ids=None,
               attention_mask=new["attention_mask"] if needs_mask else None)
    for k in PER_TOKEN:
        if k != "attention_mask" and new[k] is not None:
            out[k] = new[k]
    if kwargs.get("cache_position") is not None:  # transformers 4.x: a prefill from position 0 (no cache filled)
        out["cache_position"] = torch.arange(embeds.shape[1], device=embeds.device)
    visual = [token_id for token_id, _ in merges]
    kept_mask = new["attention_mask"]
    report["rows"] = {  # per prompt: what the LLM attends to, before and after
        "visual_stock": sum((ids == t).sum(1) for t in visual).tolist(),
        "visual_kept": sum((new["ids"] == t).sum(1) for t in visual).tolist(),
        "tokens_stock": mask.sum(1).tolist(), "tokens_kept": kept_mask.sum(1).tolist()}
    return out, new["input_ids"], report, outputs
