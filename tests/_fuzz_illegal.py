"""Illegal argument draws for the fuzz test: one argument of a legal case made wrong.

Each draw is (argument, spec): the argument whose name the error must contain and
a spec that ``apply_illegal`` turns into the bad value. Only errors that our checks
own are drawn: a float where an op's schema says int is rejected by torch's
dispatcher (RuntimeError) before any of our code runs, so those go through
``prune`` only, whose Python signature we check ourselves.
"""

from __future__ import annotations

import random

import torch
from _fuzz_cases import Case, legal_k


def _choices(case: Case):
    M, T, R = case.M, case.T, case.R
    r = min(R, M)
    mv = case.min_votes
    c = [("num_retain", -1), ("order", "raster")]
    if T >= 2:
        c.append(("num_retain", "T-1"))  # T > R'
    if T >= 1 and not legal_k(M, T, M, r, mv):
        c.append(("k_per_text", "too_big"))
    if case.num_texts is not None:
        c += [("num_texts", "float"), ("num_texts", "B+1")]
    if case.target == "select_tokens":
        return c + [("min_votes", -1), ("k_per_text", -1), ("s", "int32"), ("s", "2d"), ("c", "M+1")]
    c += [("ln_eps", -1e-3), ("hidden", "int32"), ("hidden", "float64"), ("hidden", "2d"), ("keys", "M+1"),
          ("values", "D+1"), ("q_cls", "D+1"), ("q_cls", "B+1")]
    if case.target == "fused_select":
        return c + [("min_votes", -1), ("k_per_text", -1), ("w", "Dv+1"), ("b", "T+1"), ("w", "Bt")]
    c += [("num_retain", 0), ("num_retain", 2.5), ("num_retain", True), ("multi_text", "both"),
          ("multi_text", -1), ("multi_text", True), ("k_per_text", 0), ("k_per_text", -2), ("scale", "big"),
          ("text", "list"), ("text", "Bt")]
    if not case.folded:
        c += [("proj_weight", None), ("ln_bias", None), ("ln_weight", "Dv+1"), ("text_embeds", "P+1")]
    return c


def make_illegal(rng: random.Random, case: Case):
    """Pick one illegal (argument, spec) for the case."""
    return rng.choice(_choices(case))


def _resize(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = n
    return torch.zeros(shape, dtype=x.dtype)


def apply_illegal(case: Case, kw: dict) -> None:
    """Put the bad value of ``case.illegal`` into the call's keyword arguments, in place."""
    name, spec = case.illegal
    if name == "num_retain" and spec == "T-1":
        kw["num_retain"] = case.T - 1
    elif name == "k_per_text" and spec == "too_big":
        kw["k_per_text"] = case.M  # M x T > R' x max(1, min_votes) (checked by legal_k when drawn)
    elif name == "num_texts":
        nt = kw["num_texts"]
        kw["num_texts"] = nt.float() if spec == "float" else torch.zeros(case.B + 1, dtype=nt.dtype)
    elif name in ("s", "hidden") and spec in ("int32", "float64", "2d"):
        x = kw[name]
        kw[name] = x.to(getattr(torch, spec)) if spec != "2d" else x.flatten(1)
    elif spec == "M+1":
        kw[name] = _resize(kw[name], 1, case.M + 1)
    elif spec == "D+1":
        kw[name] = _resize(kw[name], -1, case.D + 1)
    elif spec == "B+1":
        kw[name] = _resize(kw[name], 0, case.B + 1)
    elif spec == "Dv+1":
        kw[name] = _resize(kw[name], -1, case.Dv + 1)
    elif spec == "T+1":
        kw[name] = _resize(kw[name], 1, case.T + 1)
    elif spec == "P+1":  # prune's argument is ``text``; the message names text_embeds
        kw["text"] = _resize(kw["text"], -1, case.P + 1)
    elif spec == "Bt":  # a text batch that is neither 1 nor B
        key = "w" if name == "w" else "text"
        x = kw[key] if key == "w" else (kw["text"].w if hasattr(kw["text"], "w") else kw["text"])
        bad = _resize(x, 0, case.B + 2)
        if key == "text" and hasattr(kw["text"], "w"):
            bad = type(kw["text"])(bad, _resize(kw["text"].b, 0, case.B + 2))
        if key == "w":
            kw["b"] = _resize(kw["b"], 0, case.B + 2)
        kw[key] = bad
    elif spec == "list":
        kw[name] = [1.0, 2.0]
    else:
        kw[name] = spec
