"""The Python API: ``fold_text`` and ``prune`` (docs/design.md section 4)."""

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
              ln_bias: torch.Tensor, proj_bias: Optional[torch.Tensor] = None) -> FoldedText:
    """Fold [EOS] embeddings once; the result is independent of the image (docs/design.md section 3).

    Parameters
    ----------
    text_embeds : Tensor [Bt, T, P]
        CLIP text [EOS] embeddings after the text projection.
    proj_weight : Tensor [P, Dv]
        The vision tower's ``visual_projection.weight`` (nn.Linear layout).
    ln_weight, ln_bias : Tensor [Dv]
        The vision tower's post-layernorm affine parameters.
    proj_bias : Tensor [P], optional
        The constant of an affine image-side head, for towers whose pooled output is not a plain
        linear map of LN(x). SigLIP (no [CLS]; an attention-pooling head with value projection
        W_v, b_v and output projection W_o, b_o): pass ``proj_weight`` = W_o W_v and
        ``proj_bias`` = W_o b_v + b_o; the score is then e_t . (W_o (W_v LN(x_j) + b_v) + b_o).
        It adds e_t . proj_bias to b (docs/design.md section 3.5); None (CLIP) adds nothing.

    Returns
    -------
    FoldedText
        w [Bt, T, Dv] and b [Bt, T], fp32: reuse across images, tiles and frames.

    Examples
    --------
    >>> import litelvlm_kernels as lk
    >>> from litelvlm_kernels.synthetic import clip_inputs
    >>> x = clip_inputs(1, 2, 16, 32, 16, 8, seed=0)
    >>> text = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    >>> tuple(text.w.shape), tuple(text.b.shape)
    ((1, 2, 32), (1, 2))
    """
    w, b = ops.fold_text(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias)
    return FoldedText(w, b)


def _as_folded(text, proj_weight, ln_weight, ln_bias, proj_bias=None) -> FoldedText:
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
    return fold_text(text, proj_weight, ln_weight, ln_bias, proj_bias)


def prune(hidden: torch.Tensor, text: Union[torch.Tensor, FoldedText], q_cls: Optional[torch.Tensor] = None,
          keys: Optional[torch.Tensor] = None, values: Optional[torch.Tensor] = None, *, num_retain: int,
          contribution: Optional[torch.Tensor] = None, proj_weight: Optional[torch.Tensor] = None,
          ln_weight: Optional[torch.Tensor] = None, ln_bias: Optional[torch.Tensor] = None,
          proj_bias: Optional[torch.Tensor] = None, ln_eps: float = 1e-5,
          multi_text: Union[str, int] = "union", k_per_text: Optional[int] = None,
          num_texts: Optional[torch.Tensor] = None, order: str = "official", scale: Optional[float] = None,
          return_tokens: bool = True) -> PruneResult:
    """Keep ``num_retain`` of the M patch tokens of each row (image, tile or frame).

    Parameters
    ----------
    hidden : Tensor [B, M, Dv]
        Select-layer hidden states without [CLS] (fp32, fp16 or bf16; any strides).
    text : Tensor [B or 1, T, P] or FoldedText
        [EOS] text embeddings (then ``proj_weight`` [P, Dv], ``ln_weight`` and ``ln_bias`` [Dv]
        are required; ``proj_bias`` [P] is optional, see :func:`fold_text`) or the result of
        :func:`fold_text` (reused, no per-call folding; the weights are then ignored).
    q_cls : Tensor [B, D]
        [CLS]'s last-layer query.
    keys, values : Tensor [B, M, D]
        Last-layer patch keys and values.
    num_retain : int > 0
        R; each row keeps R' = min(R, M) tokens.
    contribution : Tensor [B, M], optional
        Each patch's contribution, computed elsewhere, instead of ``q_cls`` / ``keys`` /
        ``values`` (which must then be None): for towers without [CLS], e.g. SigLIP's
        :func:`map_contribution`. The selection then runs as two ops (``text_similarity``,
        ``select_tokens``) instead of the fused one; the rules are the same.
    multi_text : "union", "intersection" or int
        How the texts' bottom-k sets combine (an int is ``min_votes``).
    k_per_text : int > 0, optional
        Tokens per text (default R' // num_texts).
    num_texts : Tensor [B] int32/int64, optional
        Texts in use per row (clamped to [0, T]).
    order : "official" or "spatial"
    scale : float, optional
        [CLS] softmax scale (default 1/sqrt(D)).
    return_tokens : bool
        Gather the kept hidden states (else ``tokens`` is None).

    Returns
    -------
    PruneResult
        indices [B, R'] int64, tokens [B, R', Dv] or None, num_similarity [B] int32,
        from_similarity [B, R'] bool.

    Every argument is checked (shapes, dtypes, devices) before any kernel runs, once: ``prune``
    checks only its own rules (R > 0, k_per_text, multi_text, the kind of ``text``) and the op
    checks the tensors (ValueError / TypeError naming the argument).

    Examples
    --------
    >>> import litelvlm_kernels as lk
    >>> from litelvlm_kernels.synthetic import clip_inputs
    >>> x = clip_inputs(2, 2, 64, 32, 16, 16, seed=0)
    >>> out = lk.prune(x.hidden, x.text_embeds, x.q_cls, x.keys, x.values, num_retain=16,
    ...                proj_weight=x.proj_weight, ln_weight=x.ln_weight, ln_bias=x.ln_bias)
    >>> tuple(out.indices.shape), tuple(out.tokens.shape)
    ((2, 16), (2, 16, 32))
    """
    V.check_prune_args(num_retain, k_per_text, order, ln_eps, scale)
    min_votes = V.min_votes_of(multi_text)
    if contribution is not None:
        _check_contribution_arg(hidden, contribution, q_cls, keys, values, scale)
        V.check_prune_tensors(hidden=hidden, num_texts=num_texts)
    else:
        V.check_prune_tensors(hidden=hidden, q_cls=q_cls, keys=keys, values=values, num_texts=num_texts)
    folded = _as_folded(text, proj_weight, ln_weight, ln_bias, proj_bias)
    if contribution is not None:  # scores in two ops: the fused kernel computes CLIP's [CLS] contribution itself
        s = _TEXT_SIMILARITY(hidden, folded.w, folded.b, float(ln_eps))
        indices, num_sim, from_sim = _SELECT_TOKENS(s, contribution, num_retain, min_votes, k_per_text or 0,
                                                    order, num_texts)
    else:
        indices, num_sim, from_sim = _FUSED_SELECT(
            hidden, folded.w, folded.b, float(ln_eps), q_cls, keys, values, num_retain, min_votes,
            k_per_text or 0, order, num_texts, None if scale is None else float(scale))
    tokens = _GATHER(hidden, indices) if return_tokens else None
    return PruneResult(indices, tokens, num_sim, from_sim)


def select_scores(similarity: torch.Tensor, contribution: torch.Tensor, *, num_retain: int,
                  multi_text: Union[str, int] = "union", k_per_text: Optional[int] = None,
                  num_texts: Optional[torch.Tensor] = None, order: str = "official") -> PruneResult:
    """Keep ``num_retain`` of the M tokens of each row from precomputed scores (the rules of ``prune``).

    For signals that were not computed on the kept rows themselves: a paired scorer's similarity and
    contribution, resampled from its patch grid onto an LVLM's token grid (docs/design.md section 12). The
    selection is the same op ``prune`` runs when it is given a ``contribution`` (``select_tokens``).

    Parameters
    ----------
    similarity : Tensor [B, T, M]
        s_tj per text and token (fp32, fp16 or bf16); the lowest are kept per text (bottom-k, section 1.2).
    contribution : Tensor [B, M]
        c_j per token; the highest fill the remaining slots (section 1.5).
    num_retain, multi_text, k_per_text, num_texts, order
        As :func:`prune`.

    Returns
    -------
    PruneResult
        indices [B, R'] int64, ``tokens`` None, num_similarity [B] int32, from_similarity [B, R'] bool.

    Examples
    --------
    >>> import torch, litelvlm_kernels as lk
    >>> s, c = torch.tensor([[[3., 1., 2., 0.]]]), torch.tensor([[0., 5., 1., 2.]])
    >>> lk.select_scores(s, c, num_retain=2, order="spatial").indices.tolist()
    [[1, 3]]
    """
    V.check_prune_args(num_retain, k_per_text, order, 0.0, None)
    min_votes = V.min_votes_of(multi_text)
    indices, num_sim, from_sim = _SELECT_TOKENS(similarity, contribution, num_retain, min_votes, k_per_text or 0,
                                                order, num_texts)
    return PruneResult(indices, None, num_sim, from_sim)


def _check_contribution_arg(hidden, contribution, q_cls, keys, values, scale) -> None:
    """``contribution`` replaces q_cls / keys / values (and their softmax ``scale``) and must be [B, M] like hidden."""
    given = [n for n, v in (("q_cls", q_cls), ("keys", keys), ("values", values), ("scale", scale)) if v is not None]
    if given:
        raise ValueError(f"contribution: given together with {', '.join(given)}; pass either the [CLS] query, keys "
                         "and values (CLIP) or a precomputed contribution (e.g. map_contribution for SigLIP)")
    V.check_prune_tensors(contribution=contribution)
    if contribution.dim() != 2 or not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or \
            tuple(contribution.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"contribution: expected [B, M] = {tuple(hidden.shape[:2]) if hidden.dim() == 3 else '?'} "
                         f"(hidden's first two dims), got {tuple(contribution.shape)}")


# The ops' default overloads: indices come from the op, so the gather needs no Python-side checks.
_TEXT_SIMILARITY = ops.text_similarity
_SELECT_TOKENS = ops.select_tokens
_FUSED_SELECT = ops.fused_select
_GATHER = torch.ops.litelvlm.gather_tokens.default
