"""Plain-PyTorch restatement of docs/design.md sections 1-2: the oracle of every test.

Written as the method reads, not for speed: every token is projected through
the post-layernorm and W_p, every ranking is an explicit sort, sets are built
with cat / unique / isin, and rows are handled one at a time. It never calls the
library's ops. It is also the "eager" baseline of the benchmarks.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._validate import check_select_args

__all__ = [
    "fold_text",
    "similarity_direct",
    "contribution_direct",
    "map_contribution_direct",
    "bottom_k_order",
    "top_contribution_order",
    "select",
    "prune",
]


def _broadcast_text(text_embeds: torch.Tensor, B: int) -> torch.Tensor:
    """[Bt, T, P] with Bt in {1, B} -> [B, T, P] (video frames share one text)."""
    if text_embeds.shape[0] == B:
        return text_embeds
    if text_embeds.shape[0] == 1:
        return text_embeds.expand(B, *text_embeds.shape[1:])
    raise ValueError(f"text batch {text_embeds.shape[0]} must be 1 or B={B}")


def fold_text(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """w_t = gamma * (W_p^T e_t), b_t = beta . (W_p^T e_t) [+ e_t . proj_bias], in fp32 (docs/design.md
    sections 3.1 and 3.5). ``proj_bias`` [P]: the head's constant (SigLIP: W_o b_v + b_o)."""
    e = text_embeds.float()
    u = e @ proj_weight.float()  # [Bt, T, P] @ [P, Dv]
    b = u @ ln_bias.float()
    if proj_bias is not None:
        b = b + e @ proj_bias.float()
    return u * ln_weight.float(), b


def similarity_direct(hidden, text_embeds, proj_weight, ln_weight, ln_bias, ln_eps=1e-5,
                      proj_bias=None) -> torch.Tensor:
    """s[b, t, j] = e_t . (W_p LN(x_j) + proj_bias): project every token, no folding. fp32 [B, T, M]."""
    B, M, Dv = hidden.shape
    x = F.layer_norm(hidden.float(), (Dv,), ln_weight.float(), ln_bias.float(), ln_eps)
    z = x @ proj_weight.float().t()  # [B, M, P]: the full projection of every token
    if proj_bias is not None:
        z = z + proj_bias.float()  # the head's output W_p LN(x_j) + c, as the tower computes it
    e = _broadcast_text(text_embeds.float(), B)  # [B, T, P]
    return e @ z.transpose(1, 2)


def contribution_direct(q_cls, keys, values, scale: Optional[float] = None) -> torch.Tensor:
    """c[b, j] = || a_j * v_j ||, a = softmax_j(scale * q_hat . k_hat_j). fp32 [B, M].

    q and k are L2-normalised the way F.normalize does (x / max(||x||, 1e-12)).
    """
    D = keys.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    q = F.normalize(q_cls.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    a = torch.softmax(scale * torch.einsum("bmd,bd->bm", k, q), dim=-1)
    return torch.linalg.vector_norm(a.unsqueeze(-1) * values.float(), dim=-1)


def map_contribution_direct(q, keys, values, out_weight, num_heads: int) -> torch.Tensor:
    """SigLIP's attention-pooling analog of the contribution (docs/design.md section 10). fp32 [B, M].

    Per row b and head h: a_hj = softmax_j(q_h . k_hj / sqrt(d_h)) written out (exp of the
    shifted logits over their sum); then per patch j the heads' a_hj v_hj are concatenated,
    W_o is applied and c_j = || W_o [a_1j v_1j ; ... ; a_Hj v_Hj] ||. q is [1, D] or [B, D].
    """
    B, M, D = keys.shape
    dh = D // num_heads
    w_o = out_weight.float()
    c = torch.empty(B, M, dtype=torch.float32, device=keys.device)
    for b in range(B):
        qb = q[b if q.shape[0] > 1 else 0].float()
        kb, vb = keys[b].float(), values[b].float()
        z = torch.empty(M, D, dtype=torch.float32, device=keys.device)  # row j: [a_1j v_1j ; ... ; a_Hj v_Hj]
        for h in range(num_heads):
            cols = slice(h * dh, (h + 1) * dh)
            logits = kb[:, cols] @ qb[cols] / math.sqrt(dh)  # [M]
            e = torch.exp(logits - logits.max()) if M > 0 else logits
            a = e / e.sum()
            z[:, cols] = a[:, None] * vb[:, cols]
        for j in range(M):
            c[b, j] = torch.linalg.vector_norm(w_o @ z[j])
    return c


def bottom_k_order(x: torch.Tensor) -> torch.Tensor:
    """Token indices of a 1-D score row, lowest first: -inf < finite < +inf < NaN, ties by index.

    Two stable sorts: by value (NaN parked at 0), then NaN-ness; -0.0 == +0.0 ties.
    """
    nan = torch.isnan(x)
    by_value = torch.sort(torch.where(nan, torch.zeros_like(x), x), stable=True).indices
    return by_value[torch.sort(nan[by_value].to(torch.uint8), stable=True).indices]


def top_contribution_order(x: torch.Tensor) -> torch.Tensor:
    """Token indices, largest first: +inf > finite > -inf > NaN, ties by index."""
    nan = torch.isnan(x)
    by_value = torch.sort(torch.where(nan, torch.zeros_like(x), x), descending=True, stable=True).indices
    return by_value[torch.sort(nan[by_value].to(torch.uint8), stable=True).indices]


def _select_row(s_row, c_row, n: int, r: int, min_votes: int, k_per_text: int, order: str):
    """One row: s_row [T, M], c_row [M], n texts in use, budget r = R'."""
    M = c_row.shape[0]
    device = c_row.device
    if n > 0:
        k = min(k_per_text if k_per_text > 0 else r // n, M)
        per_text = [bottom_k_order(s_row[t])[:k] for t in range(n)]  # bottom-k: the referent scores low
        chosen, votes = torch.unique(torch.cat(per_text), return_counts=True)
        need = n if min_votes == 0 else min_votes  # 0 = intersection: all of the row's texts
        sim = chosen[votes >= need]  # unique() sorts: ascending token index
    else:
        sim = torch.empty(0, dtype=torch.int64, device=device)
    ranked = top_contribution_order(c_row)
    context = ranked[~torch.isin(ranked, sim)][: r - sim.numel()]
    kept = torch.cat([context, sim])
    if order == "spatial":
        kept = torch.sort(kept).values
    return kept, sim.numel(), torch.isin(kept, sim)


def select(s, c, num_retain: int, min_votes: int = 1, k_per_text: int = 0, order: str = "official",
           num_texts: Optional[torch.Tensor] = None):
    """Selection of docs/design.md section 2 from scores s [B, T, M] and contributions c [B, M].

    Returns (indices [B, R'] int64, num_similarity [B] int32, from_similarity [B, R'] bool).
    """
    B, T, M = s.shape
    check_select_args(T, M, num_retain, min_votes, k_per_text, order)
    r = min(num_retain, M)
    n_rows = [T] * B if num_texts is None else [min(max(int(n), 0), T) for n in num_texts.tolist()]
    s, c = s.float(), c.float()
    indices = torch.empty(B, r, dtype=torch.int64, device=s.device)
    from_sim = torch.empty(B, r, dtype=torch.bool, device=s.device)
    num_sim = torch.empty(B, dtype=torch.int32, device=s.device)
    for b in range(B):
        kept, n_sim, is_sim = _select_row(s[b], c[b], n_rows[b], r, min_votes, k_per_text, order)
        assert kept.numel() == r, "reference broke the R' invariant"
        indices[b], num_sim[b], from_sim[b] = kept, n_sim, is_sim
    return indices, num_sim, from_sim


def prune(hidden, text_embeds, proj_weight, ln_weight, ln_bias, q_cls, keys, values, num_retain: int, *,
          ln_eps: float = 1e-5, min_votes: int = 1, k_per_text: int = 0, order: str = "official",
          num_texts: Optional[torch.Tensor] = None, scale: Optional[float] = None):
    """The whole method on raw CLIP tensors: direct similarity, direct contribution, selection."""
    s = similarity_direct(hidden, text_embeds, proj_weight, ln_weight, ln_bias, ln_eps)
    c = contribution_direct(q_cls, keys, values, scale)
    return select(s, c, num_retain, min_votes, k_per_text, order, num_texts)
