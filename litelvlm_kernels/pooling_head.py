"""The [CLS]-contribution analog for SigLIP towers: the attention-pooling head plays [CLS].

SigLIP has no [CLS] token. Its pooled image embedding comes from a multi-head
attention pooling head (transformers' ``SiglipMultiheadAttentionPoolingHead``): a
learned probe p [1, 1, D] attends, through ``nn.MultiheadAttention(D, H,
batch_first=True)``, over y_j = post_layernorm(last layer output)_j. Its output is

    out = sum_j W_o [a_1j v_1j ; ... ; a_Hj v_Hj] + b_o

(q = W_q p + b_q, k_j = W_k y_j + b_k, v_j = W_v y_j + b_v, a_hj = softmax_j(q_h . k_hj /
sqrt(D/H)) per head h), so patch j contributes the vector W_o [a_hj v_hj]_h, and its
contribution is that vector's norm (docs/design.md section 10):

- :func:`head_qkv`: q [1, D], keys and values [B, M, D] from the head module and y, as
  ``nn.MultiheadAttention`` computes them;
- :func:`map_contribution`: c [B, M] fp32, ``mode="exact"`` (the norm above) or
  ``mode="heads"`` (skips W_o);
- :func:`map_patch_terms`: the per-patch vectors themselves, [B, M, D] fp32 (their sum
  plus b_o is the head's attention output: the tests check it against the module).

Plain batched torch (no custom op: the cost is one GEMM, section 10), no host
synchronisation, shapes depend on B, M, D only; works under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import FLOAT_DTYPES

_DTYPES = (*FLOAT_DTYPES, torch.float64)  # fp64: computed in fp64, for checks of the derivation

__all__ = ["head_qkv", "map_contribution", "map_patch_terms"]

MODES = ("exact", "heads")


# -- the head module -> q, keys, values ------------------------------------------------

def head_qkv(head, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The pooling attention's query, keys and values, computed as ``nn.MultiheadAttention`` does.

    Parameters
    ----------
    head : nn.Module
        A SigLIP attention-pooling head (transformers' ``SiglipMultiheadAttentionPoolingHead``,
        or anything shaped like it): ``head.probe`` with D elements and ``head.attention`` an
        ``nn.MultiheadAttention`` with a packed ``in_proj_weight`` [3D, D] (q, k, v stacked),
        ``in_proj_bias`` [3D] or None, ``out_proj`` and ``num_heads``.
    y : Tensor
        [B, M, D]: the tower's output after its post-layernorm (``last_hidden_state`` of a
        transformers SigLIP vision model), in the head's dtype and on its device.

    Returns
    -------
    q : Tensor
        [1, D] = W_q p + b_q, the same for every image.
    keys, values : Tensor
        [B, M, D] = W_k y_j + b_k and W_v y_j + b_v: strided views of one [B, M, 2D] GEMM
        output, as ``nn.MultiheadAttention`` projects k and v when key is value.

    Raises
    ------
    ValueError
        Naming ``head`` when it is not that shape (no probe, separate q/k/v projection weights
        from ``kdim``/``vdim``, ``bias_k``/``bias_v`` or ``add_zero_attn``), or ``y`` for a wrong
        rank, width, dtype or device.
    TypeError
        When ``y`` is not a tensor.
    """
    attn = getattr(head, "attention", None)
    probe = getattr(head, "probe", None)
    w = getattr(attn, "in_proj_weight", None)
    if probe is None or attn is None or getattr(attn, "out_proj", None) is None or not hasattr(attn, "num_heads"):
        raise ValueError(f"head must be a SigLIP attention-pooling head (.probe and an nn.MultiheadAttention "
                         f".attention), got {type(head).__name__}")
    if w is None:
        raise ValueError("head.attention must have a packed in_proj_weight [3D, D] (q, k, v of width D); "
                         "this one has separate q/k/v projection weights (kdim/vdim != embed_dim)")
    if getattr(attn, "bias_k", None) is not None or getattr(attn, "bias_v", None) is not None \
            or getattr(attn, "add_zero_attn", False):
        raise ValueError("head.attention must have no bias_k / bias_v / add_zero_attn: they add a key that is "
                         "not a patch")
    D = w.shape[1]
    if w.dim() != 2 or w.shape[0] != 3 * D or probe.numel() != D:
        raise ValueError(f"head: in_proj_weight must be [3D, D] and probe hold D elements, got "
                         f"{tuple(w.shape)} and {tuple(probe.shape)}")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a Tensor, got {type(y).__name__}")
    if y.dim() != 3 or y.shape[-1] != D:
        raise ValueError(f"y must be [B, M, D] with D={D} (the head's width), got shape {tuple(y.shape)}")
    if y.dtype != w.dtype or y.device != w.device:
        raise ValueError(f"y must have the head's dtype and device ({w.dtype}, {w.device}), "
                         f"got {y.dtype}, {y.device}")
    b = attn.in_proj_bias
    # F._in_projection_packed when query is not key but key is value: q with w[:D], then one GEMM for
    # k and v with w[D:] (so the check against head.attention holds to fp32 rounding).
    q = F.linear(probe.reshape(1, D), w[:D], None if b is None else b[:D])
    kv = F.linear(y, w[D:], None if b is None else b[D:])
    return q, kv[..., :D], kv[..., D:]


# -- the contribution --------------------------------------------------------------------

def _check(q, keys, values, out_weight, num_heads, mode: str, need_out: bool) -> None:
    for name, t in (("q", q), ("keys", keys), ("values", values)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    for name, t in (("q", q), ("keys", keys), ("values", values)):
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
        if t.device != keys.device:
            raise ValueError(f"{name} must be on the device of keys ({keys.device}), got {t.device}")
    if keys.dim() != 3:
        raise ValueError(f"keys must be [B, M, D], got shape {tuple(keys.shape)}")
    B, M, D = keys.shape
    if tuple(values.shape) != tuple(keys.shape):
        raise ValueError(f"values must have the shape of keys {tuple(keys.shape)}, got {tuple(values.shape)}")
    if q.dim() != 2 or q.shape[1] != D or (q.shape[0] != 1 and q.shape[0] != B):
        raise ValueError(f"q must be [1, D] or [B, D] with B={B}, D={D}, got shape {tuple(q.shape)}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, torch.SymInt)) or num_heads <= 0:
        raise ValueError(f"num_heads must be an int > 0, got {num_heads!r}")
    if D == 0 or D % num_heads != 0:
        raise ValueError(f"num_heads={num_heads} must divide the width D={D} (D > 0)")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if out_weight is None:
        if need_out:
            raise ValueError(f"out_weight (the head's out_proj.weight [D, D]) is required for mode={mode!r}")
        return
    if not isinstance(out_weight, Tensor):
        raise TypeError(f"out_weight must be a Tensor, got {type(out_weight).__name__}")
    if out_weight.dtype not in _DTYPES or out_weight.device != keys.device:
        raise ValueError(f"out_weight must be a float tensor on {keys.device}, got {out_weight.dtype} "
                         f"on {out_weight.device}")
    if tuple(out_weight.shape) != (D, D):
        raise ValueError(f"out_weight must be [D, D] with D={D}, got shape {tuple(out_weight.shape)}")


def _acc(*tensors) -> torch.dtype:
    """fp32 arithmetic for fp32/fp16/bf16 inputs; fp64 if any input is fp64."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _weights_and_values(q: Tensor, keys: Tensor, values: Tensor, num_heads: int,
                        acc: torch.dtype) -> Tuple[Tensor, Tensor]:
    """a [B, M, H, 1] (per-head softmax over the M patches) and the upcast values [B, M, H, D/H]."""
    B, M, D = keys.shape
    dh = D // num_heads
    # q scaled before the dot product, as F.multi_head_attention_forward does.
    qh = (q.to(acc) * (1.0 / math.sqrt(dh))).reshape(q.shape[0], 1, num_heads, dh)
    kh = keys.to(acc).reshape(B, M, num_heads, dh)
    logits = (kh * qh).sum(-1)  # [B, M, H]; q broadcasts over B when it is [1, D]
    a = torch.softmax(logits, dim=1)  # over the patches, per head
    return a.unsqueeze(-1), values.to(acc).reshape(B, M, num_heads, dh)


def map_patch_terms(q: Tensor, keys: Tensor, values: Tensor, out_weight: Tensor, num_heads: int) -> Tensor:
    """Each patch's term of the pooling attention's output: t_j = W_o [a_1j v_1j ; ... ; a_Hj v_Hj].

    ``sum_j t_j + b_o`` is ``head.attention(probe, y, y)[0]``. Arguments as :func:`map_contribution`.

    Returns
    -------
    Tensor
        [B, M, D] fp32 (fp64 if an input is fp64).
    """
    _check(q, keys, values, out_weight, num_heads, "exact", True)
    return _patch_terms(q, keys, values, out_weight, num_heads)


def _patch_terms(q: Tensor, keys: Tensor, values: Tensor, out_weight: Tensor, num_heads: int) -> Tensor:
    B, M, D = keys.shape
    acc = _acc(q, keys, values, out_weight)
    a, v = _weights_and_values(q, keys, values, num_heads, acc)
    z = (a * v).reshape(B * M, D)  # [a_hj v_hj]_h, heads concatenated as MHA concatenates them
    return (z @ out_weight.to(acc).t()).reshape(B, M, D)  # one [B*M, D] x [D, D] GEMM


def map_contribution(q: Tensor, keys: Tensor, values: Tensor, out_weight: Optional[Tensor], num_heads: int, *,
                     mode: str = "exact") -> Tensor:
    """Each patch's contribution to a SigLIP tower's pooled embedding (the [CLS]-contribution analog).

    ``mode="exact"``: c_j = || W_o [a_1j v_1j ; ... ; a_Hj v_Hj] ||_2, the norm of patch j's term
    of the pooling attention's output (b_o is no patch's term: it is added once, whatever the image).
    ``mode="heads"``: c_j = sqrt(sum_h ||a_hj v_hj||^2) = sqrt(sum_h a_hj^2 ||v_hj||^2), which skips
    W_o (the [B*M, D] x [D, D] GEMM); it equals "exact" times s when W_o = s Q with Q orthogonal,
    and otherwise only approximates it. a_hj = softmax_j(q_h . k_hj / sqrt(D/H)).
    docs/design.md section 10.

    Parameters
    ----------
    q : Tensor
        [1, D] (the probe's query, shared by every row) or [B, D]. fp32, fp16, bf16 (or fp64).
    keys, values : Tensor
        [B, M, D], any strides (e.g. the views :func:`head_qkv` returns); dtypes as ``q``.
    out_weight : Tensor or None
        [D, D], the head's ``attention.out_proj.weight`` (W_o). Required for ``mode="exact"``;
        may be None for ``mode="heads"`` (checked when given).
    num_heads : int
        H, the pooling attention's heads (``head.attention.num_heads``); must divide D.
    mode : {"exact", "heads"}

    Returns
    -------
    Tensor
        c [B, M] fp32: inputs are upcast and all arithmetic is fp32. (fp64 inputs are computed
        and returned in fp64, for checks of the derivation against a float64 run.)

    Raises
    ------
    TypeError, ValueError
        Naming the argument, for a wrong type, rank, shape, dtype, device, ``num_heads`` or ``mode``;
        from shapes only, before any computation.
    """
    _check(q, keys, values, out_weight, num_heads, mode, mode == "exact")
    if mode == "exact":
        return torch.linalg.vector_norm(_patch_terms(q, keys, values, out_weight, num_heads), dim=-1)
    a, v = _weights_and_values(q, keys, values, num_heads, _acc(q, keys, values))
    # a_hj >= 0: ||a_hj v_hj|| = a_hj ||v_hj||, so a_hj v_hj is never formed.
    return torch.linalg.vector_norm(a.squeeze(-1) * torch.linalg.vector_norm(v, dim=-1), dim=-1)
