"""The public LiteLVLM release's selection rule, written the way that code runs it: the baseline of
issue 13's ">= 10x" target (``python -m benchmarks.bench_select --vs-release``).

One image at a time, in a Python loop over the batch (docs/design.md section 1, union mode):

1. layer-norm and project EVERY token: z = W_p LN(x) [M, P] (M x Dv x P multiply-adds a row);
2. similarity to each text: e_t . z_j [T, M];
3. per text, sort the scores and keep the bottom k = R' // T (the referent scores low);
4. union of the per-text sets with ``torch.unique`` (sorted ascending);
5. contribution to [CLS]: a = softmax(scale * q_hat . k_hat_j) with q, k L2-normalised,
   c_j = || a_j v_j || (the full [M, D] product, not the ||v_j|| shortcut);
6. sort c descending, drop the similarity tokens with ``torch.isin``, fill the R' - |S|
   free slots; kept = context tokens, then similarity tokens;
7. gather the kept hidden states.

Host synchronisations, where such code has them: the boolean-mask index of step 6 (a
data-dependent shape) and ``.tolist()`` of each image's kept indices, which index that
image's hidden states as a Python list and are stacked into the [B, R'] index at the end.
On the CPU these cost Python work, not device waits.

This is a restatement written from the method's description, not the release's code.
Unlike ``litelvlm_kernels.reference`` it does not implement the tie and NaN rules of
docs/design.md section 2 (its sorts are not stable, and a NaN sorts as the largest value):
on inputs without exact ties or NaN both select the same tokens, up to near-ties.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["release_prune"]


def release_prune(hidden: torch.Tensor, text_embeds: torch.Tensor, proj_weight: torch.Tensor,
                  ln_weight: torch.Tensor, ln_bias: torch.Tensor, q_cls: torch.Tensor, keys: torch.Tensor,
                  values: torch.Tensor, num_retain: int, ln_eps: float = 1e-5,
                  scale: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Select and gather ``num_retain`` tokens per image the way the public release does (union of texts).

    Parameters
    ----------
    hidden : Tensor [B, M, Dv]
        Select-layer hidden states without [CLS].
    text_embeds : Tensor [B or 1, T, P]
        Projected [EOS] text embeddings (T >= 1).
    proj_weight : Tensor [P, Dv]
        The vision tower's visual projection (nn.Linear layout).
    ln_weight, ln_bias : Tensor [Dv]
        The vision tower's post-layernorm.
    q_cls : Tensor [B, D]
        [CLS]'s last-layer query.
    keys, values : Tensor [B, M, D]
        Last-layer patch keys and values.
    num_retain : int
        Tokens to keep per image; clamped to M.
    ln_eps : float
        The post-layernorm's eps.
    scale : float, optional
        Softmax scale of the [CLS] attention; 1 / sqrt(D) by default.

    Returns
    -------
    indices : Tensor [B, R'] int64
        Context tokens by falling contribution, then similarity tokens ascending.
    tokens : Tensor [B, R', Dv]
        ``hidden`` at ``indices``.

    Examples
    --------
    >>> from litelvlm_kernels.synthetic import clip_inputs
    >>> x = clip_inputs(2, 2, 50, 32, 16, 24, seed=0)
    >>> idx, tok = release_prune(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias,
    ...                          x.q_cls, x.keys, x.values, 12)
    >>> tuple(idx.shape), tuple(tok.shape)
    ((2, 12), (2, 12, 32))
    """
    B, M, Dv = hidden.shape
    D = keys.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    r = min(num_retain, M)
    kept_rows, token_rows = [], []
    for b in range(B):  # one image at a time
        x = F.layer_norm(hidden[b].float(), (Dv,), ln_weight.float(), ln_bias.float(), ln_eps)
        z = x @ proj_weight.float().t()  # [M, P]: every token projected
        e = text_embeds[b if text_embeds.shape[0] > 1 else 0].float()  # [T, P]
        sim = e @ z.t()  # [T, M]
        T = sim.shape[0]
        k = r // T
        per_text = [torch.sort(sim[t]).indices[:k] for t in range(T)]  # bottom-k per text
        sel = torch.unique(torch.cat(per_text))  # union, ascending token index
        q = F.normalize(q_cls[b].float(), dim=-1)
        kn = F.normalize(keys[b].float(), dim=-1)
        attn = torch.softmax(scale * (kn @ q), dim=-1)  # [M]
        contrib = torch.norm(attn.unsqueeze(-1) * values[b].float(), dim=-1)  # || a_j v_j ||
        order = torch.sort(contrib, descending=True).indices
        order = order[~torch.isin(order, sel)]  # data-dependent shape: a sync on a GPU
        kept = torch.cat([order[: r - sel.numel()], sel]).tolist()  # to the host, as a Python list
        kept_rows.append(kept)
        token_rows.append(hidden[b, kept])  # the list goes back to the device to index
    indices = torch.tensor(kept_rows, dtype=torch.int64, device=hidden.device).reshape(B, r)
    tokens = torch.stack(token_rows) if B else hidden[:, :r]
    return indices, tokens
