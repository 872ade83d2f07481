"""Argument rules of the selection ops and of ``prune``, Python side: each written once, here.

Where the checks run (one place per language, once per call):

- C++: ``csrc/select_checks.{h,cpp}`` holds the same rules for the CPU kernels, which run them
  before any work. A CPU call runs no Python check at all.
- Python (this module): the fake impls (``ops/selection.py``: torch.compile / FakeTensor
  tracing, symbolic shapes), the kernels registered from Python (``ops/triton_cuda.py`` on CUDA,
  whose Triton launchers assume validated inputs, and the torch-composed default kernel of any
  other device, ``ops/_torch_select.py``), the reference's ``check_select_args``, and the rules
  that belong to ``prune`` alone (``min_votes_of``, ``check_prune_args``).

A call dispatches to exactly one kernel, so each rule runs once per call; ``prune`` adds only its
own rules and leaves every tensor check to the op. Checks read shapes, dtypes and devices, never
tensor data (no host synchronisation). They are written with ``torch._check_value`` /
``torch._check_type``: ValueError / TypeError naming the argument in eager, and with symbolic
shapes under torch.compile a condition becomes a guard or a runtime assertion. The messages read
the same as the C++ ones. Rules: docs/design.md sections 2 and 4.
"""

from __future__ import annotations

import math

import torch

ORDERS = ("official", "spatial")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
_INTS = (int, torch.SymInt)


def default_scale(D) -> float:
    """The release's [CLS] softmax scale, 1/sqrt(D) with D the full q/k width (docs/design.md section 1)."""
    return 1.0 / math.sqrt(D) if D > 0 else 1.0


def clamp_retain(num_retain, M):
    """R' = min(R, M); symbolic-size friendly."""
    return torch.sym_min(num_retain, M)


def min_votes_of(multi_text) -> int:
    """``multi_text`` -> ``min_votes``: "union" 1, "intersection" 0 (all of the row's texts), an int >= 0 itself."""
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


def _is_int(x) -> bool:
    return isinstance(x, _INTS) and not isinstance(x, bool)


def check_prune_args(num_retain, k_per_text, order, ln_eps, scale) -> None:
    """The rules of ``prune`` that are stricter than the op's: R > 0, k_per_text None or > 0, and
    the Python types that the op's schema would reject with a less helpful error."""
    if not _is_int(num_retain):
        raise TypeError(f"num_retain must be an int, got {type(num_retain).__name__}")
    if num_retain <= 0:
        raise ValueError(f"num_retain must be > 0, got {num_retain}")
    if k_per_text is not None and (not _is_int(k_per_text) or k_per_text <= 0):
        raise ValueError(f"k_per_text must be None or an int > 0, got {k_per_text!r}")
    if not isinstance(order, str):
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not isinstance(ln_eps, (int, float)) or isinstance(ln_eps, bool):
        raise ValueError(f"ln_eps must be a float >= 0, got {ln_eps!r}")
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")


def check_prune_tensors(**tensors) -> None:
    """``prune``'s tensor arguments are tensors (``num_texts`` may be None); the op checks the rest."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) and not (t is None and name == "num_texts"):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_select_args(T, M, num_retain, min_votes, k_per_text, order) -> None:
    """The shape-only rules of docs/design.md section 2, raised before any kernel runs.

    T > R' could leave some row with k = 0 tokens per text; an explicit k_per_text must not let
    |S| exceed R' (k x T votes spread over at least max(1, min_votes) votes per kept token; an
    intersection keeps at most k).
    """
    torch._check_type(_is_int(num_retain), lambda: f"num_retain must be an int, got {type(num_retain).__name__}")
    torch._check_value(num_retain >= 0, lambda: f"num_retain must be >= 0, got {num_retain}")
    torch._check_value(_is_int(min_votes) and min_votes >= 0,
                       lambda: f"min_votes must be an int >= 0 (0 = intersection), got {min_votes!r}")
    torch._check_value(_is_int(k_per_text) and k_per_text >= 0,
                       lambda: f"k_per_text must be an int >= 0 (0 = R' // num_texts), got {k_per_text!r}")
    torch._check_value(order in ORDERS, lambda: f"order must be one of {ORDERS}, got {order!r}")
    r = clamp_retain(num_retain, M)
    torch._check_value(T <= r, lambda: (
        f"number of texts T={T} exceeds the clamped budget R'=min(num_retain={num_retain}, M={M})={r}: "
        "some row could keep k = 0 tokens per text"))
    if k_per_text > 0:
        k = torch.sym_min(k_per_text, M)
        torch._check_value(k * T <= r * max(1, min_votes), lambda: (
            f"k_per_text={k_per_text} x T={T} exceeds R'={r} x max(1, min_votes={min_votes}): "
            "the similarity set could exceed the budget"))
        torch._check_value(not (min_votes == 0 and k > r),
                           lambda: f"k_per_text={k_per_text} exceeds R'={r} for intersection (min_votes=0)")


def check_tensor(name: str, t, ndim: int, dtypes=FLOAT_DTYPES) -> None:
    torch._check_value(t.dim() == ndim, lambda: f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    torch._check_type(t.dtype in dtypes,
                      lambda: f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")


def check_same_device(**tensors) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    n0, t0 = items[0]
    for n, t in items[1:]:
        torch._check_value(t.device == t0.device, lambda n=n, t=t: (
            f"{n} is on {t.device} but {n0} is on {t0.device}: all inputs must share a device"))


def _check_num_texts(num_texts, B) -> None:
    if num_texts is None:
        return
    check_tensor("num_texts", num_texts, 1, INDEX_DTYPES)
    torch._check_value(num_texts.shape[0] == B,
                       lambda: f"num_texts must have shape [B]=[{B}], got {tuple(num_texts.shape)}")


def _check_folded(w, b, B, Dv) -> None:
    """w [Bt, T, Dv], b [Bt, T], Bt in {1, B}."""
    check_tensor("w", w, 3)
    check_tensor("b", b, 2)
    torch._check_value(b.shape[0] == w.shape[0] and b.shape[1] == w.shape[1],
                       lambda: f"b must have shape [Bt, T]={tuple(w.shape[:2])}, got {tuple(b.shape)}")
    torch._check_value(w.shape[0] == 1 or w.shape[0] == B,
                       lambda: f"w/b batch Bt={w.shape[0]} must be 1 (shared text) or B={B} (hidden's batch)")
    torch._check_value(w.shape[2] == Dv, lambda: f"w must have last dimension Dv={Dv} (hidden's), got {w.shape[2]}")


def check_fold_inputs(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias=None) -> None:
    check_tensor("text_embeds", text_embeds, 3)
    check_tensor("proj_weight", proj_weight, 2)
    check_tensor("ln_weight", ln_weight, 1)
    check_tensor("ln_bias", ln_bias, 1)
    P, Dv = proj_weight.shape
    torch._check_value(text_embeds.shape[2] == P, lambda: (
        f"text_embeds last dimension {text_embeds.shape[2]} must equal proj_weight's P={P} "
        "(proj_weight is [P, Dv], nn.Linear layout)"))
    torch._check_value(ln_weight.shape[0] == Dv and ln_bias.shape[0] == Dv, lambda: (
        f"ln_weight {tuple(ln_weight.shape)} and ln_bias {tuple(ln_bias.shape)} must be [Dv] "
        f"with Dv={Dv} from proj_weight {tuple(proj_weight.shape)} ([P, Dv])"))
    check_same_device(text_embeds=text_embeds, proj_weight=proj_weight, ln_weight=ln_weight, ln_bias=ln_bias)
    if proj_bias is None:
        return
    check_tensor("proj_bias", proj_bias, 1)
    torch._check_value(proj_bias.shape[0] == P, lambda: (
        f"proj_bias must have shape [P]=[{P}] from proj_weight {tuple(proj_weight.shape)} ([P, Dv]), "
        f"got {tuple(proj_bias.shape)}"))
    check_same_device(text_embeds=text_embeds, proj_bias=proj_bias)


def check_similarity_inputs(hidden, w, b, ln_eps) -> None:
    check_tensor("hidden", hidden, 3)
    _check_folded(w, b, hidden.shape[0], hidden.shape[2])
    torch._check_value(ln_eps >= 0, lambda: f"ln_eps must be a float >= 0, got {ln_eps!r}")  # NaN fails too
    check_same_device(hidden=hidden, w=w, b=b)


def check_contribution_inputs(q_cls, keys, values) -> None:
    check_tensor("q_cls", q_cls, 2)
    check_tensor("keys", keys, 3)
    check_tensor("values", values, 3)
    torch._check_value(keys.shape == values.shape, lambda: (
        f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must have the same shape"))
    torch._check_value(q_cls.shape[0] == keys.shape[0] and q_cls.shape[1] == keys.shape[2], lambda: (
        f"q_cls must have shape [B, D]=[{keys.shape[0]}, {keys.shape[2]}], got {tuple(q_cls.shape)}"))
    check_same_device(q_cls=q_cls, keys=keys, values=values)


def check_scores(s, c, num_texts) -> None:
    check_tensor("s", s, 3)
    check_tensor("c", c, 2)
    torch._check_value(s.shape[0] == c.shape[0] and s.shape[2] == c.shape[1], lambda: (
        f"s [B, T, M]={tuple(s.shape)} and c [B, M]={tuple(c.shape)} disagree on B or M"))
    _check_num_texts(num_texts, s.shape[0])
    check_same_device(s=s, c=c, num_texts=num_texts)


def check_fused_inputs(hidden, w, b, ln_eps, q_cls, keys, values, num_texts) -> None:
    check_similarity_inputs(hidden, w, b, ln_eps)
    check_contribution_inputs(q_cls, keys, values)
    torch._check_value(hidden.shape[0] == keys.shape[0] and hidden.shape[1] == keys.shape[1], lambda: (
        f"hidden {tuple(hidden.shape)} and keys {tuple(keys.shape)} must agree on [B, M]"))
    _check_num_texts(num_texts, hidden.shape[0])
    check_same_device(hidden=hidden, keys=keys, num_texts=num_texts)
