"""Hand-built references for the Qwen tests (tests/test_qwen_vl.py, tests/test_paired_scorer.py).

Written from the formulas, not from the library's code paths: the image is rebuilt from the pixel rows by
explicit loops, the area weights by brute-force rectangle overlaps, the scores by ``reference.similarity_direct``
/ ``contribution_direct`` on the stock CLIPVisionModel's hidden states, the selection by ``reference.select``,
and the LLM is called directly (``language_model``) on only the kept rows at positions gathered from the
stock ``get_rope_index`` of the full prompt, with Qwen3-VL's DeepStack rows gathered with the same indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _lvlm_models import clip, text_embeds, tq

from litelvlm_kernels import reference
from litelvlm_kernels.integrations.hf import vision_tower
from litelvlm_kernels.selection.paired import NORMALISATION


def unpatchify_loop(rows: torch.Tensor, thw, patch: int) -> torch.Tensor:
    """[3, gh p, gw p]: patch (2 (r w + c) + 2 i + j)'s frame 0 placed at token (r, c), sub-patch (i, j)."""
    _, gh, gw = (int(x) for x in thw)
    w = gw // 2
    img = torch.zeros(3, gh * patch, gw * patch)
    for r in range(gh // 2):
        for c in range(w):
            for i in range(2):
                for j in range(2):
                    block = rows[4 * (r * w + c) + 2 * i + j].reshape(3, tq.TEMPORAL, patch, patch)[:, 0]
                    y, x = (2 * r + i) * patch, (2 * c + j) * patch
                    img[:, y:y + patch, x:x + patch] = block
    return img


def area_matrix_brute(h: int, w: int, hp: int, wp: int) -> torch.Tensor:
    """[h w, h' w'] float64: overlap area of token and patch rectangles over the token's area."""
    out = torch.zeros(h * w, hp * wp, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            for a in range(hp):
                for b in range(wp):
                    oy = max(0.0, min((r + 1) / h, (a + 1) / hp) - max(r / h, a / hp))
                    ox = max(0.0, min((c + 1) / w, (b + 1) / wp) - max(c / w, b / wp))
                    out[r * w + c, a * wp + b] = oy * ox * h * w
    return out


def scorer_reference(rows, thw, family: str, expressions: list, hp: int, wp: int) -> tuple:
    """(s [1, T, N], c [1, N]) of one image by hand: the tiny CLIP on the image resized to (h' 8, w' 8)."""
    mean, std = (torch.tensor(v)[:, None, None] for v in tq.MEAN_STD[family])
    smean, sstd = (torch.tensor(v)[:, None, None] for v in NORMALISATION["clip"])
    img = unpatchify_loop(rows, thw, tq.PATCH[family]) * std + mean
    px = F.interpolate(img[None], size=(hp * 8, wp * 8), mode="bicubic", antialias=True).clamp(0, 1)
    px = (px - smean) / sstd
    model = clip()
    tower = vision_tower(model)
    with torch.no_grad():
        hs = model.vision_model(px, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        ln = tower.post_layernorm
        s = reference.similarity_direct(hs[-2][:, 1:], text_embeds(expressions)[None],
                                        model.visual_projection.weight, ln.weight, ln.bias, ln.eps)
        last = tower.encoder.layers[-1]
        x = last.layer_norm1(hs[-2])
        c = reference.contribution_direct(last.self_attn.q_proj(x)[:, 0], last.self_attn.k_proj(x)[:, 1:],
                                          last.self_attn.v_proj(x)[:, 1:])
    _, gh, gw = (int(v) for v in thw)
    W = area_matrix_brute(gh // 2, gw // 2, hp, wp)
    return (s.double() @ W.T).float(), (c.double() @ W.T).float()


def shrunk(model, batch: dict, kept: list) -> dict:
    """The LLM inputs of the pruned prompt by hand: each image's run cut to its ``kept`` rows (ascending), the caller's
    left padding kept, the stock ``get_rope_index`` positions of the full prompt gathered column by column; the
    kept main (and DeepStack) rows; the stock rope delta of the shrunk prompt."""
    ids, mask, grid = batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"]
    inner = model.model
    with torch.no_grad():
        pos, _ = inner.get_rope_index(ids, batch["mm_token_type_ids"], grid, attention_mask=mask)
        enc = inner.get_image_features(batch["pixel_values"], grid, return_dict=True)
    cols, item = [], 0
    for b in range(ids.shape[0]):
        row, run = [], None
        for j in range(ids.shape[1]):
            if ids[b, j] == tq.IMAGE_TOKEN:
                if run is None:
                    run, keep = j, set(kept[item].tolist())
                    item += 1
                if j - run in keep:
                    row.append(j)
            else:
                run = None
                if mask[b, j]:
                    row.append(j)
        cols.append(row)
    L = ids.shape[1] - min(int(mask[b].sum()) - len(c) for b, c in enumerate(cols))
    out = dict(ids=torch.full((ids.shape[0], L), tq.PAD), mask=torch.zeros(ids.shape[0], L, dtype=torch.long),
               pos=torch.zeros(3, ids.shape[0], L, dtype=torch.long))
    for b, c in enumerate(cols):
        out["ids"][b, L - len(c):] = ids[b, c]
        out["mask"][b, L - len(c):] = 1
        out["pos"][:, b, L - len(c):] = pos[:, b, c]
    out["pooled"] = [f[k] for f, k in zip(enc.pooler_output, kept)]
    ds = getattr(enc, "deepstack_features", None)
    out["deepstack"] = None if ds is None else [[f[k] for f, k in zip(level, kept)] for level in ds]
    out["max_pos"] = torch.stack([out["pos"][:, b][:, out["mask"][b].bool()].max() for b in range(ids.shape[0])])
    return out


def hand_logits(model, sh: dict, ids=None, mask=None, pos=None) -> torch.Tensor:
    """The LLM called directly: embeddings of ``ids`` (default the shrunk prompt's), the kept rows written into the
    prompt's image slots (generated ids equal to the image token are not slots), positions as given."""
    ids = sh["ids"] if ids is None else ids
    mask, pos = (sh["mask"] if mask is None else mask), (sh["pos"] if pos is None else pos)
    emb = model.get_input_embeddings()(ids)
    vis = (ids == tq.IMAGE_TOKEN) & (torch.arange(ids.shape[1]) < sh["ids"].shape[1])
    emb = emb.masked_scatter(vis[..., None], torch.cat(sh["pooled"]))
    kw = dict(inputs_embeds=emb, position_ids=pos, attention_mask=mask)
    if sh["deepstack"] is not None:
        kw.update(visual_pos_masks=vis, deepstack_visual_embeds=[torch.cat(level) for level in sh["deepstack"]])
    with torch.no_grad():
        return model.lm_head(model.model.language_model(**kw).last_hidden_state)


def hand_greedy(model, sh: dict, steps: int, ids=None, mask=None, pos=None) -> torch.Tensor:
    """Greedy tokens without a cache: each new token at the previous column's position + 1 on every axis (the
    stock decode rule: the last prompt token is text, so last + 1 = max + 1)."""
    ids, mask, pos = (sh["ids"], sh["mask"], sh["pos"]) if ids is None else (ids, mask, pos)
    new = []
    for _ in range(steps):
        t = hand_logits(model, sh, ids, mask, pos)[:, -1].argmax(-1)
        new.append(t)
        ids = torch.cat([ids, t[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(t)[:, None]], 1)
        pos = torch.cat([pos, pos[:, :, -1:] + 1], 2)
    return torch.stack(new, 1)
