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
def prepare_inputs(adapter, kwargs: dict, expressions, generate: bool = False) -> tuple:
    """Stock inputs -> (kwargs for the stock forward / generate with ``inputs_embeds``, the shrunk placeholder ids,
    the report, the vision outputs {output field: value} to attach to the stock output).

    ``check_inputs`` ran first. The shrunk ids are ``input_ids`` shrunk (None when the caller passed only
    ``inputs_embeds``: then the placeholder positions were read off the embeddings). Modalities with an
    ``encoder_output`` hand their kept features over as ``mm_encoder_outputs`` (the stock forward merges them):
    if no modality merges here, the shrunk ``input_ids`` go to the stock call as ids. An adapter whose
    ``stock_positions`` gives positions has them gathered with the kept tokens (``generate``: for generate()'s
    prefill) and turned into the call's position arguments by its ``kept_positions``.
    """
    ids = placeholder_ids(adapter, kwargs)
    s = adapter.settings
    dropped = torch.zeros_like(ids, dtype=torch.bool)
    positions = adapter.stock_positions(kwargs, generate)  # None, or (the full prompt's [B, L, K], info)
    merges, encoded, report, outputs = [], {}, {}, {}
    for mod in adapter.modalities():
        if kwargs.get(mod.pixel_key) is None:
            continue
        counts = mod.stock_counts(kwargs)
        what = "video" if "video" in mod.pixel_key else "image"
        mask, rows = items_per_row(ids, mod.token_id, counts, what)
        cond = adapter.text_condition(expressions_per_item(expressions, rows, ids.shape[0], s.missing_expressions))
        feats, views, cap = (mod.features(kwargs, cond, generate=generate) if mod.features_take_generate
                             else mod.features(kwargs, cond))
        flat = mask.flatten().nonzero().flatten()
        start, kept_counts = 0, []
        if len(feats) != len(counts) or any(f.shape[0] > n for n, f in zip(counts, feats)):
            raise RuntimeError(f"{type(adapter).__name__}: built {[f.shape[0] for f in feats]} {what} features for "
                               f"runs of {counts} placeholders (an adapter bug: it may only shrink them)")
        columns = None if mod.run_columns is None else mod.run_columns(cap)
        for i, (n, f) in enumerate(zip(counts, feats)):
            run = flat[start:start + n]
            if columns is None:
                dropped.view(-1)[run[f.shape[0]:]] = True  # the tail of each item's run
            else:  # the columns of the kept tokens stay (their stock positions are gathered with them)
                gone = torch.ones(n, dtype=torch.bool, device=run.device)
                gone[columns[i].to(run.device)] = False
                if int(n - gone.sum()) != f.shape[0]:
                    raise RuntimeError(f"{type(adapter).__name__}: {f.shape[0]} features for {n - int(gone.sum())} "
                                       f"kept columns of {what} {i} (an adapter bug)")
                dropped.view(-1)[run[gone]] = True
            start += n
            kept_counts.append(f.shape[0])
        report[what] = {"stock": counts, "kept": kept_counts, "views": views}
        if mod.encoder_output is not None:  # the stock forward merges them (and returns this object)
            encoded[what] = mod.encoder_output(feats, cap)
            outputs[what] = (encoded[what], legacy(mod, feats))
        else:
            merges.append((mod.token_id, torch.cat(feats, 0)))
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
    if positions is not None:  # gathered with the kept tokens, never renumbered; they replace the caller's
        tensors.update(position_ids=None, stock_positions=positions[0])
        pads["stock_positions"] = 0
    new = shrink(dropped, tensors, pads, side)
    if new["labels"] is not None and side == "left":
        _unaim_first_tokens(new["labels"], mask, counts)
    out = {k: v for k, v in kwargs.items() if k not in pixel_keys(adapter)}
    out["attention_mask"] = new["attention_mask"] if needs_mask else None
    if merges or new["inputs_embeds"] is not None:
        embeds = new["inputs_embeds"] if new["inputs_embeds"] is not None else table(new["input_ids"])
        for token_id, feats in merges:
            where = (new["ids"] == token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(where, feats.to(embeds.device, embeds.dtype))
        out.update(inputs_embeds=embeds, input_ids=None)
    else:  # every modality hands its features over as mm_encoder_outputs: the stock forward embeds the ids
        out.update(input_ids=new["input_ids"], inputs_embeds=None)
    if encoded:
        out["mm_encoder_outputs"] = encoded
    for k in PER_TOKEN:
        if k != "attention_mask" and new[k] is not None:
            out[k] = new[k]
    if positions is not None:
        out.update(adapter.kept_positions(new["stock_positions"], new["attention_mask"], positions[1], generate))
    if kwargs.get("cache_position") is not None:  # transformers 4.x: a prefill from position 0 (no cache filled)
        out["cache_position"] = torch.arange(new["ids"].shape[1], device=ids.device)
    visual = [mod.token_id for mod in adapter.modalities() if kwargs.get(mod.pixel_key) is not None]
    kept_mask = new["attention_mask"]
    report["rows"] = {  # per prompt: what the LLM attends to, before and after
        "visual_stock": sum((ids == t).sum(1) for t in visual).tolist(),
        "visual_kept": sum((new["ids"] == t).sum(1) for t in visual).tolist(),
        "tokens_stock": mask.sum(1).tolist(), "tokens_kept": kept_mask.sum(1).tolist()}
    return out, new["input_ids"], report, outputs
