"""The stock LVLM call's inputs: checked at the boundary, and each visual item's placeholder run and prompt.

Step 1 of ``lvlm.py``'s list (``prompt.py`` does steps 3 and 4): the
placeholders are read from ``input_ids`` or, when the caller passes
``inputs_embeds`` instead, from the rows equal to the placeholder token's
embedding, as the stock models find them.
"""

from __future__ import annotations

import torch

from ..selection.capture import check_pixels
from ..selection.text import check_expression

# The call's per-token arguments: shrunk with input_ids (each item's dropped placeholders removed, the caller's padding
# kept, see ``prompt.shrink``) -> the value a padding position gets. token_type_ids: PaliGemma's prefix (0, attended
# bidirectionally) / suffix (1) marks; the kept placeholders keep their type, so the prefix-LM mask stays the stock one
# minus the dropped tokens. shift_labels: transformers 5's pre-shifted labels, aligned with input_ids like labels.
# mm_token_type_ids: transformers 5.2x's modality per token (0 text, 1 image, 2 video; Qwen's M-RoPE reads them).
PER_TOKEN = {"attention_mask": 0, "position_ids": 1, "labels": -100, "shift_labels": -100, "token_type_ids": 0,
             "mm_token_type_ids": 0}
# those checked against input_ids' shape here (position_ids may be [1, L] or 3-D in other models: not checked)
_SAME_SHAPE = ("attention_mask", "labels", "shift_labels", "token_type_ids", "mm_token_type_ids")


def check_inputs(adapter, kwargs: dict) -> None:
    """The LVLM call's tensors, checked once at the boundary with errors naming the argument.

    The stock model would fail deep inside (an embedding error for float ids, an IndexError for 1-D ids) or,
    worse, read a 3-D or 5-D ``pixel_values`` as another number of images.
    """
    embeds = kwargs.get("inputs_embeds")
    if embeds is not None and (not isinstance(embeds, torch.Tensor) or embeds.dim() != 3
                               or not embeds.is_floating_point()):
        got = (f"shape {tuple(embeds.shape)}, {embeds.dtype}" if isinstance(embeds, torch.Tensor)
               else type(embeds).__name__)
        raise ValueError(f"inputs_embeds: expected a floating [batch, sequence, hidden] tensor, got {got}")
    if kwargs.get("mm_encoder_outputs") is not None:  # transformers 5.2x: features encoded beforehand
        raise ValueError("mm_encoder_outputs: cannot be combined with pixel inputs (the stock model refuses both too)")
    ids = kwargs.get("input_ids")
    if ids is None and embeds is None:
        raise ValueError("input_ids: needed with pixel inputs (or inputs_embeds holding the placeholder token's "
                         "embedding at each image position, as the stock model takes them)")
    if ids is not None:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"input_ids: expected a torch.Tensor, got {type(ids).__name__}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"input_ids: expected integer token ids, got {ids.dtype}")
        if ids.dim() != 2:
            raise ValueError(f"input_ids: expected [batch, sequence], got shape {tuple(ids.shape)}"
                             + (" (add the batch dimension: input_ids[None])" if ids.dim() == 1 else ""))
        if embeds is not None and tuple(embeds.shape[:2]) != tuple(ids.shape):
            raise ValueError(f"inputs_embeds: shape {tuple(embeds.shape)} does not match input_ids "
                             f"{tuple(ids.shape)}")
    else:
        ids = embeds[..., 0]  # the [batch, sequence] shape the per-token arguments are checked against
    prompt = "input_ids" if kwargs.get("input_ids") is not None else "inputs_embeds"
    for name in _SAME_SHAPE:
        t = kwargs.get(name)
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != ids.shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected the shape of {prompt} {tuple(ids.shape)}, got {got}")
        if name != "attention_mask" and t is not None and (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{name}: expected integer values, got {t.dtype}")
    adapter.check_call(kwargs)
    vision_config = adapter.model.config.vision_config
    for mod in adapter.modalities():
        px = kwargs.get(mod.pixel_key)
        if px is not None and mod.check is not None:
            mod.check(kwargs)
        elif px is not None:
            check_pixels(px, vision_config, mod.pixel_key, mod.pixel_dims)


def placeholder_ids(adapter, kwargs: dict) -> torch.Tensor:
    """[B, L] ids that locate the placeholders: ``input_ids``, or, with ``inputs_embeds`` alone, each modality's
    token id where a row equals that token's embedding (the stock ``get_placeholder_mask`` rule) and -1 elsewhere."""
    if kwargs.get("input_ids") is not None:
        return kwargs["input_ids"]
    embeds = kwargs["inputs_embeds"]
    table = adapter.model.get_input_embeddings()
    ids = torch.full(embeds.shape[:2], -1, dtype=torch.long, device=embeds.device)
    for mod in adapter.modalities():
        token = table(torch.full((), mod.token_id, dtype=torch.long, device=embeds.device)).to(embeds.dtype)
        ids = ids.masked_fill((embeds == token).all(-1), mod.token_id)
    return ids


def items_per_row(ids: torch.Tensor, token_id: int, counts: list, what: str) -> tuple:
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


def expressions_per_item(expressions, rows: list, batch: int, missing: str) -> list:
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


def pixel_keys(adapter) -> set:
    keys = set()
    for mod in adapter.modalities():
        keys.add(mod.pixel_key)
        keys.update(mod.extra_keys)
    return keys
