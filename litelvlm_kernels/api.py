"""The Python API: ``fold_text`` and ``prune`` (DESIGN.md section 4)."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from . import _validate as V
from . import ops


class FoldedText(NamedTuple):
    """Texts folded through W_p and the post-layernorm: reuse across images, tiles and frames.

    w: [Bt, T, Dv] fp32 (gamma * W_p^T e_t); b: [Bt, T] fp32 (beta . W_p^T e_t).
    """

    w: torch.Tensor
    b: torch.Tensor


class PruneResult(NamedTuple):
    """indices [B, R'] int64; tokens [B, R', Dv] (hidden's dtype) or None;
    num_similarity [B] int32 (|S|); from_similarity [B, R'] bool."""

    indices: torch.Tensor
    tokens: Optional[torch.Tensor]
    num_similarity: torch.Tensor
    from_similarity: torch.Tensor


def fold_text(text_embeds: torch.Tensor, proj_weight: torch.Tensor, ln_weight: torch.Tensor,
              ln_bias: torch.Tensor) -> FoldedText:
    """Fold [EOS] embeddings [Bt, T, P] once; the result is independent of the image."""
    w, b = ops.fold_text(text_embeds, proj_weight, ln_weight, ln_bias)
    return FoldedText(w, b)


def _min_votes(multi_text) -> int:
    if isinstance(multi_text, bool):
        raise TypeError("multi_text must be 'union', 'intersection' or an int min_votes, got a bool")
    if multi_text == "union":
        return 1
    if multi_text == "intersection":
        return 0
    if isinstance(multi_text, int):
        if multi_text < 0:
            raise ValueError(f"multi_text as min_votes must be >= 0 (0 = intersection), got {multi_text}")
        return multi_text
    raise ValueError(f"multi_text must be 'union', 'intersection' or an int min_votes, got {multi_text!r}")


def _as_folded(text, proj_weight, ln_weight, ln_bias) -> FoldedText:
    if isinstance(text, FoldedText):
        return text
    if not isinstance(text, torch.Tensor):
        raise TypeError(f"text must be a tensor of text embeddings [B or 1, T, P] or a FoldedText, "
                        f"got {type(text).__name__}")
    missing = [n for n, v in (("proj_weight", proj_weight), ("ln_weight", ln_weight), ("ln_bias", ln_bias))
               if v is None]
    if missing:
        raise ValueError(f"text is raw embeddings, so {', '.join(missing)} must be given "
                         "(or pass a FoldedText from fold_text)")
    return fold_text(text, proj_weight, ln_weight, ln_bias)


def prune(hidden: torch.Tensor, text: Union[torch.Tensor, FoldedText], q_cls: torch.Tensor, keys: torch.Tensor,
          values: torch.Tensor, *, num_retain: int, proj_weight: Optional[torch.Tensor] = None,
          ln_weight: Optional[torch.Tensor] = None, ln_bias: Optional[torch.Tensor] = None, ln_eps: float = 1e-5,
          multi_text: Union[str, int] = "union", k_per_text: Optional[int] = None,
          num_texts: Optional[torch.Tensor] = None, order: str = "official", scale: Optional[float] = None,
          return_tokens: bool = True) -> PruneResult:
    """Keep ``num_retain`` of the M patch tokens of each row (image, tile or frame).

    hidden [B, M, Dv]: select-layer hidden states without [CLS]; text: [EOS]
    embeddings [B or 1, T, P] (then proj_weight [P, Dv], ln_weight/ln_bias [Dv]
    are required) or a FoldedText; q_cls [B, D]: [CLS]'s last-layer query;
    keys/values [B, M, D]: last-layer patch keys and values.
    Every argument is checked (shapes, dtypes, devices) before any kernel runs.
    """
    if not isinstance(num_retain, int) or isinstance(num_retain, bool):
        raise TypeError(f"num_retain must be an int, got {type(num_retain).__name__}")
    if num_retain <= 0:
        raise ValueError(f"num_retain must be > 0, got {num_retain}")
    if k_per_text is not None and (not isinstance(k_per_text, int) or isinstance(k_per_text, bool)
                                   or k_per_text <= 0):
        raise ValueError(f"k_per_text must be None or an int > 0, got {k_per_text!r}")
    if order not in V.ORDERS:
        raise ValueError(f"order must be one of {V.ORDERS}, got {order!r}")
    if not isinstance(ln_eps, (int, float)) or isinstance(ln_eps, bool) or not ln_eps >= 0:
        raise ValueError(f"ln_eps must be a float >= 0, got {ln_eps!r}")
    min_votes = _min_votes(multi_text)
    V.check_tensor("hidden", hidden, 3)
    V.check_tensor("q_cls", q_cls, 2)
    V.check_tensor("keys", keys, 3)
    V.check_tensor("values", values, 3)
    B, M, Dv = hidden.shape
    if tuple(keys.shape[:2]) != (B, M):
        raise ValueError(f"keys must have shape [B, M, D] with [B, M]=[{B}, {M}] (hidden's), got {tuple(keys.shape)}")
    folded = _as_folded(text, proj_weight, ln_weight, ln_bias)
    if folded.w.shape[0] not in (1, B):
        raise ValueError(f"text batch {folded.w.shape[0]} must be 1 (shared text) or B={B} (hidden's batch)")
    if folded.w.shape[2] != Dv:
        raise ValueError(f"text folds to Dv={folded.w.shape[2]} but hidden has Dv={Dv}")
    V.check_fused_inputs(hidden, folded.w, folded.b, ln_eps, q_cls, keys, values, scale, num_texts)
    V.check_select_args(folded.w.shape[1], M, num_retain, min_votes, k_per_text or 0, order)

    indices, num_sim, from_sim = ops.fused_select(
        hidden, folded.w, folded.b, float(ln_eps), q_cls, keys, values, num_retain, min_votes,
        k_per_text or 0, order, num_texts, None if scale is None else float(scale))
    tokens = ops.gather_tokens(hidden, indices) if return_tokens else None
    return PruneResult(indices, tokens, num_sim, from_sim)
