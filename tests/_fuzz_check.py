"""Run one fuzz case and check it against litelvlm_kernels/reference.py.

Checks, for every legal case: the invariant (min(R, M) distinct indices in [0, M)),
num_similarity == from_similarity.sum(1), and equality with the reference:
- ``select_tokens`` on given scores: exactly equal (same scores in, same tokens out);
- ``fused_select`` and ``prune`` on raw CLIP-shaped tensors: equal, except swaps at
  near-ties that ``litelvlm_kernels.testing.assert_selection_close`` accepts, with the
  tolerances below; ``prune``'s tokens are exactly hidden at the kept indices.
Cases drawn with ``repeat`` call the op twice: the results must be bit-identical.
For an illegal draw: ValueError or TypeError whose message names the argument.
"""

from __future__ import annotations

import re

import torch
from _fuzz_cases import Case, as_inputs, build, lay_out
from _fuzz_illegal import apply_illegal

import litelvlm_kernels as lk
from litelvlm_kernels import reference
from litelvlm_kernels.testing import assert_selection_close, assert_valid_indices

# Near-tie tolerances, relative to the row set's largest finite score. Both sides compute
# in fp32 from the same (possibly fp16/bf16) input values, so they differ only by rounding
# order: the folded similarity ((x - mu) . w) / sigma + b against the reference's
# projection of every token (Dv + P terms), and softmax(q_hat . k_hat) ||v|| against
# ||a_j v_j||. 3e-5 is test_fused_select's similarity tolerance; for c an absolute
# tolerance cannot fit every shape (c ~ 1e-3 at M = 576, ~50 at M = 1), so it is relative.
# Inputs can also be ill-conditioned for ANY fp32 evaluation (a token offset 700x its spread over
# Dv = 4 channels: the reference itself is then 7e-5 of max|s| from the fp64 value; case seed
# 31313153145039006 under master seed 2). So each tolerance also gets twice the reference's own
# measured fp32 error against the same formulas in fp64 (about 3e-6 of max|s| on ordinary inputs).
S_REL = 3e-5
C_REL = 1e-5

SELECT_ARGS = ("s", "c", "num_retain", "min_votes", "k_per_text", "order", "num_texts")
FUSED_ARGS = ("hidden", "w", "b", "ln_eps", "q_cls", "keys", "values", "num_retain", "min_votes", "k_per_text",
              "order", "num_texts", "scale")


def _abs_max_finite(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)]
    return float(x.abs().max()) if x.numel() else 0.0


def _fp32_error(x32: torch.Tensor, x64: torch.Tensor) -> float:
    """Largest |fp32 - fp64| where both are finite: how far an exact fp32 evaluation may stray."""
    ok = torch.isfinite(x32) & torch.isfinite(x64)
    return float((x32.double() - x64)[ok].abs().max()) if bool(ok.any()) else 0.0


def _reference_fp64(case: Case, t: dict):
    """The direct formulas of reference.py evaluated in fp64 (same inputs)."""
    d = {k: v.double() for k, v in t.items() if v.is_floating_point()}
    Dv, D = d["hidden"].shape[-1], d["keys"].shape[-1]
    x = torch.nn.functional.layer_norm(d["hidden"], (Dv,), d["ln_weight"], d["ln_bias"], case.ln_eps)
    e = d["text_embeds"].expand(case.B, -1, -1) if case.Bt == 1 else d["text_embeds"]
    s = e @ (x @ d["proj_weight"].t()).transpose(1, 2)
    scale = case.scale if case.scale is not None else 1.0 / D ** 0.5
    q = torch.nn.functional.normalize(d["q_cls"], dim=-1)
    k = torch.nn.functional.normalize(d["keys"], dim=-1)
    a = torch.softmax(scale * torch.einsum("bmd,bd->bm", k, q), dim=-1)
    return s, torch.linalg.vector_norm(a.unsqueeze(-1) * d["values"], dim=-1)


def _call_kwargs(case: Case, t: dict) -> dict:
    if case.target == "select_tokens":
        return {"s": t["s"], "c": t["c"], "num_retain": case.R, "min_votes": case.min_votes,
                "k_per_text": case.k_per_text, "order": case.order, "num_texts": t.get("num_texts")}
    if case.target == "fused_select":
        w, b = torch.ops.litelvlm.fold_text(t["text_embeds"], t["proj_weight"], t["ln_weight"], t["ln_bias"])
        return {"hidden": t["hidden"], "w": lay_out(w, case.layouts["w"]), "b": b, "ln_eps": case.ln_eps,
                "q_cls": t["q_cls"], "keys": t["keys"], "values": t["values"], "num_retain": case.R,
                "min_votes": case.min_votes, "k_per_text": case.k_per_text, "order": case.order,
                "num_texts": t.get("num_texts"), "scale": case.scale}
    kw = {"hidden": t["hidden"], "q_cls": t["q_cls"], "keys": t["keys"], "values": t["values"],
          "num_retain": case.R, "ln_eps": case.ln_eps, "multi_text": case.multi_text,
          "k_per_text": case.k_per_text or None, "num_texts": t.get("num_texts"), "order": case.order,
          "scale": case.scale, "return_tokens": case.return_tokens}
    if case.folded:
        folded = lk.fold_text(t["text_embeds"], t["proj_weight"], t["ln_weight"], t["ln_bias"])
        kw["text"] = lk.FoldedText(lay_out(folded.w, case.layouts["w"]), folded.b)
    else:
        kw.update(text=t["text_embeds"], proj_weight=t["proj_weight"], ln_weight=t["ln_weight"],
                  ln_bias=t["ln_bias"])
    return kw


def _invoke(case: Case, kw: dict):
    if case.target == "prune":
        return lk.prune(kw.pop("hidden"), kw.pop("text"), kw.pop("q_cls"), kw.pop("keys"), kw.pop("values"), **kw)
    op = getattr(torch.ops.litelvlm, case.target)
    names = SELECT_ARGS if case.target == "select_tokens" else FUSED_ARGS
    return op(*[kw[n] for n in names])


def _check_illegal(case: Case, kw: dict) -> None:
    name = case.illegal[0]
    apply_illegal(case, kw)
    try:
        _invoke(case, kw)
    except (ValueError, TypeError) as e:
        assert re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z_])", str(e)), \
            f"{type(e).__name__} does not name the argument {name!r}: {e}"
        return
    raise AssertionError(f"illegal {case.illegal} was accepted (expected ValueError/TypeError naming {name!r})")


def _exact(got, want) -> bool:
    return all(g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w) for g, w in zip(got, want))


def _check_outputs(case: Case, got, M: int) -> None:
    idx, num_sim, from_sim = got
    assert_valid_indices(idx, M, case.R)
    assert num_sim.dtype == torch.int32 and tuple(num_sim.shape) == (case.B,), "num_similarity must be [B] int32"
    assert from_sim.dtype == torch.bool and tuple(from_sim.shape) == tuple(idx.shape), "from_similarity [B, R'] bool"
    assert torch.equal(num_sim.long(), from_sim.sum(1)), "num_similarity != from_similarity.sum(1)"


def run_case(case: Case) -> list:
    """Check one case with ``case.threads`` threads; returns notes on accepted near-tie differences."""
    before = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    try:
        return _run_case(case)
    finally:
        torch.set_num_threads(before)


def _run_case(case: Case) -> list:
    t = as_inputs(case, build(case))
    kw = _call_kwargs(case, t)
    if case.illegal is not None:
        _check_illegal(case, kw)
        return []
    out = _invoke(case, dict(kw))
    got = (out.indices, out.num_similarity, out.from_similarity) if case.target == "prune" else tuple(out)
    if case.repeat:
        again = _invoke(case, dict(kw))
        for x, y in zip(out, again):
            assert (x is None and y is None) or torch.equal(x.view(torch.uint8) if x.is_floating_point() else x,
                                                            y.view(torch.uint8) if y.is_floating_point() else y), \
                "two calls on the same inputs gave different results (docs/design.md section 2: bit-identical)"
    nt = t.get("num_texts")
    if case.target == "select_tokens":
        _check_outputs(case, got, case.M)
        want = reference.select(t["s"], t["c"], case.R, case.min_votes, case.k_per_text, case.order, nt)
        for g, w, what in zip(got, want, ("indices", "num_similarity", "from_similarity")):
            assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w), \
                f"select_tokens {what} differs from reference.select:\n got {g.tolist()}\nwant {w.tolist()}"
        return []
    s_ref = reference.similarity_direct(t["hidden"], t["text_embeds"], t["proj_weight"], t["ln_weight"],
                                        t["ln_bias"], case.ln_eps)
    c_ref = reference.contribution_direct(t["q_cls"], t["keys"], t["values"], case.scale)
    _check_outputs(case, got, case.M)
    if case.target == "prune":
        _check_tokens(case, out, t["hidden"])
    want = reference.select(s_ref, c_ref, case.R, case.min_votes, case.k_per_text, case.order, nt)
    if _exact(got, want):
        return []
    s64, c64 = _reference_fp64(case, t)
    s_tol = S_REL * _abs_max_finite(s_ref) + 2 * _fp32_error(s_ref, s64)
    c_tol = C_REL * _abs_max_finite(c_ref) + 2 * _fp32_error(c_ref, c64)
    return assert_selection_close(got, s_ref, c_ref, case.R, min_votes=case.min_votes, k_per_text=case.k_per_text,
                                  order=case.order, num_texts=nt, s_tol=s_tol, c_tol=c_tol)


def _check_tokens(case: Case, out, hidden: torch.Tensor) -> None:
    if not case.return_tokens:
        assert out.tokens is None, "return_tokens=False must give tokens=None"
        return
    want = torch.gather(hidden, 1, out.indices.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    assert out.tokens.dtype == hidden.dtype and out.tokens.shape == want.shape, "tokens: wrong dtype or shape"
    torch.testing.assert_close(out.tokens, want, rtol=0, atol=0, equal_nan=True, msg="tokens != hidden[indices]")
