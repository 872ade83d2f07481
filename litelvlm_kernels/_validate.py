"""Argument checks shared by the reference, the ops and the Python API.

Every check reads shapes, dtypes and devices only: nothing here touches tensor
data, so the ops never synchronise with the device and stay traceable by
torch.compile (with symbolic sizes the comparisons become guards).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

ORDERS = ("official", "spatial")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def clamp_retain(num_retain, M):
    """R' = min(R, M); symbolic-size friendly."""
    return torch.sym_min(num_retain, M)


def check_select_args(T, M, num_retain: int, min_votes: int, k_per_text: int, order: str) -> None:
    """The shape-only rules of DESIGN.md section 2, raised before any kernel runs.

    T > R' could leave some row with k = 0 texts' worth of slots; an explicit
    k_per_text must not let |S| exceed R' (k x T votes spread over at least
    max(1, min_votes) votes per kept token; an intersection keeps at most k).
    """
    if not isinstance(num_retain, int) or isinstance(num_retain, bool):
        raise TypeError(f"num_retain must be an int, got {type(num_retain).__name__}")
    if num_retain < 0:
        raise ValueError(f"num_retain must be >= 0, got {num_retain}")
    if not isinstance(min_votes, int) or isinstance(min_votes, bool) or min_votes < 0:
        raise ValueError(f"min_votes must be an int >= 0 (0 = intersection), got {min_votes!r}")
    if not isinstance(k_per_text, int) or isinstance(k_per_text, bool) or k_per_text < 0:
        raise ValueError(f"k_per_text must be an int >= 0 (0 = R' // num_texts), got {k_per_text!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    r = clamp_retain(num_retain, M)
    if T > r:
        raise ValueError(
            f"number of texts T={T} exceeds the clamped budget R'=min(num_retain={num_retain}, M={M})={r}: "
            "some row could keep k = 0 tokens per text")
    if k_per_text > 0:
        k = torch.sym_min(k_per_text, M)
        if k * T > r * max(1, min_votes):
            raise ValueError(
                f"k_per_text={k_per_text} x T={T} exceeds R'={r} x max(1, min_votes={min_votes}): "
                "the similarity set could exceed the budget")
        if min_votes == 0 and k > r:
            raise ValueError(
                f"k_per_text={k_per_text} exceeds R'={r} for intersection (min_votes=0)")


def check_tensor(name: str, t, ndim: int, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")


def check_same_device(**tensors) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    if not items:
        return
    n0, t0 = items[0]
    for n, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{n} is on {t.device} but {n0} is on {t0.device}: all inputs must share a device")


def check_num_texts(num_texts: Optional[torch.Tensor], B) -> None:
    if num_texts is None:
        return
    check_tensor("num_texts", num_texts, 1, INDEX_DTYPES)
    if num_texts.shape[0] != B:
        raise ValueError(f"num_texts must have shape [B]=[{B}], got {tuple(num_texts.shape)}")


def check_folded(w, b, B, Dv=None) -> None:
    """w [Bt, T, Dv] fp32-able, b [Bt, T], Bt in {1, B}."""
    check_tensor("w", w, 3)
    check_tensor("b", b, 2)
    if tuple(b.shape) != tuple(w.shape[:2]):
        raise ValueError(f"b must have shape [Bt, T]={tuple(w.shape[:2])}, got {tuple(b.shape)}")
    if w.shape[0] != 1 and w.shape[0] != B:
        raise ValueError(f"w/b batch Bt={w.shape[0]} must be 1 (shared text) or B={B}")
    if Dv is not None and w.shape[2] != Dv:
        raise ValueError(f"w must have last dimension Dv={Dv} (hidden's), got {w.shape[2]}")


def check_similarity_inputs(hidden, w, b, ln_eps) -> None:
    check_tensor("hidden", hidden, 3)
    check_folded(w, b, hidden.shape[0], hidden.shape[2])
    if not isinstance(ln_eps, (int, float)) or not ln_eps >= 0:
        raise ValueError(f"ln_eps must be a float >= 0, got {ln_eps!r}")
    check_same_device(hidden=hidden, w=w, b=b)


def check_contribution_inputs(q_cls, keys, values, scale) -> None:
    check_tensor("q_cls", q_cls, 2)
    check_tensor("keys", keys, 3)
    check_tensor("values", values, 3)
    if tuple(keys.shape) != tuple(values.shape):
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must have the same shape")
    if q_cls.shape[0] != keys.shape[0] or q_cls.shape[1] != keys.shape[2]:
        raise ValueError(f"q_cls must have shape [B, D]=[{keys.shape[0]}, {keys.shape[2]}], got {tuple(q_cls.shape)}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    check_same_device(q_cls=q_cls, keys=keys, values=values)


def check_scores(s, c, num_texts) -> None:
    check_tensor("s", s, 3)
    check_tensor("c", c, 2)
    if s.shape[0] != c.shape[0] or s.shape[2] != c.shape[1]:
        raise ValueError(f"s [B, T, M]={tuple(s.shape)} and c [B, M]={tuple(c.shape)} disagree on B or M")
    check_num_texts(num_texts, s.shape[0])
    check_same_device(s=s, c=c, num_texts=num_texts)


def check_fused_inputs(hidden, w, b, ln_eps, q_cls, keys, values, scale, num_texts) -> None:
    check_similarity_inputs(hidden, w, b, ln_eps)
    check_contribution_inputs(q_cls, keys, values, scale)
    if hidden.shape[:2] != keys.shape[:2]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and keys {tuple(keys.shape)} must agree on [B, M]")
    check_num_texts(num_texts, hidden.shape[0])
    check_same_device(hidden=hidden, keys=keys, num_texts=num_texts)
