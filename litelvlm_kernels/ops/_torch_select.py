"""The selection ops as batched torch compositions: the default kernel of devices without their own.

The CPU kernels are C++ (``csrc/fused_select_cpu.cpp``) and the CUDA ones Triton
(``triton_cuda.py``); these compositions serve every other device (and CUDA's select_tokens,
where scores computed elsewhere are rare), and are the "direct" baseline of
``benchmarks/bench_dispatch.py``. They use the algebra of docs/design.md section 3 (folded
text, c_j = a_j ||v_j||) and rank with packed int64 keys instead of per-row loops, so a batch
costs a handful of vectorised passes and no host synchronisation: every shape below depends on
sizes, never on data. Inputs are assumed validated (``selection.py`` runs ``_validate`` first).
"""

from __future__ import annotations

from typing import Optional

import torch

from .._validate import default_scale

_NORM_EPS = 1e-12  # F.normalize's eps: the reference's convention for zero vectors
_LOW32 = (1 << 32) - 1


def fold_text(text_embeds: torch.Tensor, proj_weight: torch.Tensor, ln_weight: torch.Tensor,
              ln_bias: torch.Tensor, proj_bias: Optional[torch.Tensor] = None):
    """w_t = gamma * (W_p^T e_t) [Bt, T, Dv], b_t = beta . (W_p^T e_t) [+ e_t . proj_bias] [Bt, T], fp32.

    The bias term is added last, as in the C++ kernel and the reference (docs/design.md section 3.5).
    """
    e = text_embeds.float()
    u = torch.matmul(e, proj_weight.float())
    b = torch.matmul(u, ln_bias.float())
    if proj_bias is not None:
        b = b + torch.matmul(e, proj_bias.float())
    return u * ln_weight.float(), b


def text_similarity(hidden: torch.Tensor, w: torch.Tensor, b: torch.Tensor, ln_eps: float) -> torch.Tensor:
    """s = ((x - mu) . w_t) / sigma + b_t in fp32: [B, M, Dv] -> [B, T, M].

    The centred form keeps precision with CLIP's outlier channels (|x| ~ 1e2..1e3):
    x . w - mu * sum(w) cancels catastrophically there.
    """
    x = hidden.float()
    # (x - mu) / sigma is layer_norm without affine: one fused pass, centred before any dot product.
    xn = torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=ln_eps)
    return torch.matmul(w.float(), xn.transpose(1, 2)) + b.float().unsqueeze(-1)  # [Bt,T,Dv] @ [B,Dv,M]


def cls_contribution(q_cls: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     scale: Optional[float] = None) -> torch.Tensor:
    """c_j = softmax_j(scale * q_hat . k_hat_j) * ||v_j|| in fp32: [B, M]."""
    if scale is None:
        scale = default_scale(keys.shape[-1])
    q = q_cls.float()
    k = keys.float()
    q_hat = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    k_norm = torch.linalg.vector_norm(k, dim=-1).clamp_min(_NORM_EPS)
    logits = torch.matmul(k, q_hat.unsqueeze(-1)).squeeze(-1) / k_norm
    a = torch.softmax(logits * scale, dim=-1)
    return a * torch.linalg.vector_norm(values.float(), dim=-1)


def ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> int64 whose order is the float order; -0.0 == +0.0 and every NaN is one value above +inf."""
    x = x.float()
    x = torch.where(x == 0, torch.zeros_like(x), x)  # -0.0 and +0.0 tie
    x = torch.where(torch.isnan(x), torch.full_like(x, float("nan")), x)  # one NaN bit pattern (0x7FC00000)
    bits = x.view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def bottom_k_keys(s: torch.Tensor) -> torch.Tensor:
    """Unique ascending keys for bottom-k: (score order, then token index)."""
    idx = torch.arange(s.shape[-1], device=s.device, dtype=torch.int64)
    return ordered_bits(s) * (1 << 32) + idx


def contribution_keys(c: torch.Tensor) -> torch.Tensor:
    """Unique descending keys for recovery: larger c first, NaN last, then lower index."""
    bits = ordered_bits(c)
    bits = torch.where(torch.isnan(c), torch.full_like(bits, -(1 << 31)), bits)  # NaN below -inf
    idx = torch.arange(c.shape[-1], device=c.device, dtype=torch.int64)
    return bits * (1 << 32) + (_LOW32 - idx)


def select_tokens(s: torch.Tensor, c: torch.Tensor, num_retain: int, min_votes: int, k_per_text: int,
                  order: str, num_texts: Optional[torch.Tensor]):
    B, T, M = s.shape
    device = s.device
    r = min(num_retain, M)
    pos = torch.arange(r, device=device)
    tok = torch.arange(M, device=device, dtype=torch.int64)

    n = torch.full((B,), T, device=device, dtype=torch.int64) if num_texts is None \
        else num_texts.to(device=device, dtype=torch.int64).clamp(0, T)
    if k_per_text > 0:
        k_max = min(k_per_text, M)
        k = torch.full((B,), k_max, device=device, dtype=torch.int64)
    else:
        # A row with fewer texts gets a larger k: the static bound is R' // (fewest possible texts).
        k_max = r // (1 if num_texts is not None else max(T, 1))
        k = r // n.clamp_min(1)

    if T > 0 and k_max > 0:
        lowest = torch.topk(bottom_k_keys(s), k_max, dim=-1, largest=False, sorted=True).indices  # [B, T, k_max]
        valid = (torch.arange(k_max, device=device) < k.view(B, 1, 1)) & \
                (torch.arange(T, device=device).view(1, T, 1) < n.view(B, 1, 1))
        votes = torch.zeros(B, M, device=device, dtype=torch.int64)
        votes.scatter_add_(1, lowest.reshape(B, T * k_max), valid.reshape(B, T * k_max).to(torch.int64))
        need = n if min_votes == 0 else torch.full_like(n, min_votes)
        in_s = (votes >= need.unsqueeze(1)) & (n > 0).unsqueeze(1)
    else:
        in_s = torch.zeros(B, M, device=device, dtype=torch.bool)
    num_sim = in_s.sum(dim=1)  # [B] int64
    num_ctx = r - num_sim

    # Recovery: S tokens sink to the bottom, so the first R' - |S| are context tokens by falling c.
    ckeys = torch.where(in_s, torch.full_like(tok, torch.iinfo(torch.int64).min), contribution_keys(c))
    context = torch.topk(ckeys, r, dim=-1, largest=True, sorted=True).indices  # [B, r]
    is_ctx_pos = pos.unsqueeze(0) < num_ctx.unsqueeze(1)  # [B, r]

    if order == "official":
        # S ascending: S tokens keyed by their index, others pushed past M.
        sim_sorted = torch.topk(torch.where(in_s, tok, tok + M), r, dim=-1, largest=False, sorted=True).indices
        sim_pos = (pos.unsqueeze(0) - num_ctx.unsqueeze(1)).clamp_min(0)
        indices = torch.where(is_ctx_pos, context, torch.gather(sim_sorted, 1, sim_pos))
        from_sim = ~is_ctx_pos
    else:
        kept = in_s.clone()
        kept.scatter_(1, context, is_ctx_pos | kept.gather(1, context))
        indices = torch.topk(torch.where(kept, tok, tok + M), r, dim=-1, largest=False, sorted=True).indices
        from_sim = torch.gather(in_s, 1, indices)
    return indices, num_sim.to(torch.int32), from_sim
