"""Selection over several views of one visual input (LLaVA-NeXT tiles, video frames), with the public ops.

A view is one CLIP forward row (the base image, a tile, a frame). Some of a
view's tokens may not exist in the model's input (LLaVA-NeXT's unpadding crops
the padded border of the tile grid): those are masked out of the selection
by giving them the last place in both rankings (similarity +inf: bottom-k
takes them after every real token; contribution -inf: recovery takes them
after every real token), and dropped from the result. A view whose real
tokens number fewer than R' therefore keeps all of them.

Budgets:

* **per view** (``per_tile`` / ``per_frame``): every view keeps its own R'.
* **joint** (``global`` / ``per_clip``): one selection of R' over the real
  tokens of all views of an item. Text similarity is comparable across views
  as it is (the same folded text, one formula per token). The [CLS]
  contribution is not: each view has its own [CLS], whose softmax sums to 1
  over its own tokens, and ||v|| differs from view to view. Each view's
  contributions are therefore divided by their sum over the view's real
  tokens, so a token's score is its share of its own view's [CLS] output and
  every view carries the same total weight 1 (a tile of a 2 x 2 grid covers a
  quarter of the image but also sees it at twice the base view's
  resolution).
"""

from __future__ import annotations

import torch

from .. import ops
from .._validate import min_votes_of

INF = float("inf")


def view_similarity(ln_eps: float, hidden, cond, view_item: torch.Tensor):
    """s [V, T, M] fp32 and num_texts [V] (or None) for views of items ``view_item`` [V]; ``ln_eps``: the eps of the
    scorer's layernorm."""
    folded = cond.folded
    if cond.num_groups == 1:
        w, b, num = folded.w, folded.b, None
    else:
        idx = view_item.to(folded.w.device)
        w, b, num = folded.w[idx], folded.b[idx], cond.num_texts[idx]
    return ops.text_similarity(hidden.detach(), w, b, ln_eps), num


def contribution(cap):
    """c [V, M] fp32: each patch's contribution to its own view's [CLS] (last layer), or to its view's pooled
    embedding for a tower without [CLS] (SigLIP: computed by the capture)."""
    if cap.contribution is not None:
        return cap.contribution.detach()
    return ops.cls_contribution(cap.q_cls.detach(), cap.keys.detach(), cap.values.detach())


def select_views(s, c, num, valid: torch.Tensor, groups: list, settings, joint: bool) -> list:
    """(kept token indices, kept-by-similarity flags) of each view: ascending, real tokens only.

    s [V, T, M], c [V, M], num [V] or None, valid [V, M] bool; ``groups``: the
    views of each item (used when ``joint``). Returns one ``(indices [k] int64,
    from_similarity [k] bool)`` pair per view.
    """
    R, mv, kpt = settings.num_retain, min_votes_of(settings.multi_text), settings.k_per_text or 0
    s = s.masked_fill(~valid[:, None, :], INF)
    c = c.masked_fill(~valid, -INF)
    if not joint:
        idx, _, from_sim = ops.select_tokens(s, c, R, mv, kpt, "spatial", num)
        real = [valid[v, row] for v, row in enumerate(idx)]
        return [(row[r], f[r]) for row, f, r in zip(idx, from_sim, real)]
    kept = [None] * s.shape[0]
    for views in groups:
        sv = torch.cat([s[v][:, valid[v]] for v in views], -1).unsqueeze(0)
        share = [c[v][valid[v]] / c[v][valid[v]].sum().clamp_min(torch.finfo(c.dtype).tiny) for v in views]
        idx, _, from_sim = ops.select_tokens(sv, torch.cat(share).unsqueeze(0), R, mv, kpt, "spatial",
                                             None if num is None else num[views[:1]])
        start = 0
        for v in views:
            real = valid[v].nonzero().flatten()
            mine = (idx[0] >= start) & (idx[0] < start + real.numel())
            kept[v] = (real[idx[0][mine] - start], from_sim[0][mine])
            start += real.numel()
    return kept


def view_reports(kept: list, grid: tuple) -> list:
    """One ``{"indices", "from_similarity", "grid"}`` dict per view (on the CPU): what ``viz.save_kept_tokens``
    takes as keyword arguments."""
    return [{"indices": i.cpu(), "from_similarity": f.cpu(), "grid": grid} for i, f in kept]


def grid_rows(feats: torch.Tensor, row_of: torch.Tensor, num_rows: int, newline: torch.Tensor, mode: str) -> list:
    """Kept grid tokens row by row, each row followed by the ``newline`` embedding [H] as ``mode`` says.

    ``feats`` [k, H]: the kept tokens in raster order; ``row_of`` [k] (CPU): their grid rows, ascending.
    ``mode``: ``"all"`` a newline after every row (as stock), ``"kept_rows"`` after each row that kept a
    token, ``"none"`` none. Shared by the AnyRes layouts (LLaVA-NeXT, LLaVA-OneVision).
    """
    nl = newline.to(feats.device, feats.dtype)[None]
    out = []
    for mine in feats.split(torch.bincount(row_of, minlength=num_rows).tolist()):
        out.append(mine)
        if mode == "all" or (mode == "kept_rows" and mine.shape[0] > 0):
            out.append(nl)
    return out
