"""Helpers of the Triton tests: inputs, block-size overrides, comparisons with the reference."""

import importlib

import torch

import litelvlm_kernels.triton_ops as _tops  # noqa: E402
from litelvlm_kernels import reference as ref
from litelvlm_kernels.synthetic import clip_inputs
from litelvlm_kernels.testing import assert_selection_close

# The submodules (the package namespace holds the launchers of the same names).
FS = importlib.import_module("litelvlm_kernels.triton_ops.fused_select")
TS = importlib.import_module("litelvlm_kernels.triton_ops.text_similarity")
CC = importlib.import_module("litelvlm_kernels.triton_ops.cls_contribution")
ST = importlib.import_module("litelvlm_kernels.triton_ops.select_tokens")

# Block sizes forced by the current test (force_blocks), handed to every launcher through
# its `_blocks` argument; conftest.py clears them after each test.
_FORCED: dict = {}
_KEYS = {"fused_select": None, "text_similarity": ("BLOCK_M", "BLOCK_D", "TB"),
         "cls_contribution": ("BLOCK_M", "BLOCK_D", "BLOCK_F"), "select_tokens": ("BLOCK_F", "RB", "G")}


def _with_blocks(name):
    fn = getattr(_tops, name)

    def launch(*args, **kwargs):
        keys = _KEYS[name]
        blocks = {k: v for k, v in _FORCED.items() if keys is None or k in keys}
        return fn(*args, _blocks=blocks or None, **kwargs)

    launch.__name__ = name
    return launch


class _Launchers:
    """The launchers, with the forced block sizes applied (tests call `tops.<launcher>`)."""

    has_triton = staticmethod(_tops.has_triton)
    interpret_mode = staticmethod(_tops.interpret_mode)


tops = _Launchers()
for _name in _KEYS:
    setattr(tops, _name, _with_blocks(_name))


# Near-tie tolerances, stated once. Both sides compute in fp32 from the same input values
# (low-precision inputs are upcast before any arithmetic, so fp16 / bf16 need no looser
# bound): the kernels sum in another order than the reference (folded similarity vs
# projection of every token; softmax over chunks), which moves a score by a few ulps of
# the largest term. A selection may differ from the reference's only by swapping tokens
# whose reference scores lie within these tolerances of the cut-off.
S_TOL_REL = 2e-5  # x max |s| of the row batch (s ~ 10 with outlier channels)
C_TOL_REL = 2e-5  # x max c


def force_blocks(blocks):
    """Same block overrides for every launcher (None: back to the launchers' choices).

    Giving all kernels the same BLOCK_M / BLOCK_D / BLOCK_F makes their per-token scores
    bitwise identical to fused_select's, so selections can be compared exactly."""
    _FORCED.clear()
    _FORCED.update(blocks or {})


def inputs(B, T, M, Dv, D, P=32, *, dtype=torch.float32, device="cpu", seed=0, text_batch=None, **kw):
    """CLIP-shaped inputs (outlier channels in hidden) and the folded text (w, b)."""
    x = clip_inputs(B, T, M, Dv, D, P, dtype=dtype, device=device, seed=seed, text_batch=text_batch, **kw)
    w, b = ref.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    return x, w, b


def ref_scores(x, ln_eps=1e-5, scale=None):
    """The reference's direct formulas (project every token; normalise, softmax, norm)."""
    s = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, ln_eps)
    c = ref.contribution_direct(x.q_cls, x.keys, x.values, scale)
    return s, c


def _finite_max(t):
    t = t[torch.isfinite(t)]
    return float(t.abs().max()) if t.numel() else 1.0


def assert_matches_reference(out, s_ref, c_ref, num_retain, *, min_votes=1, k_per_text=0, order="official",
                             num_texts=None, what=""):
    """Selection vs reference.select on the reference scores. Sets and orders must be equal;
    a difference is accepted ONLY for tokens whose reference scores are within
    S_TOL_REL * max|s| (similarity) or C_TOL_REL * max c (recovery) of the cut-off
    (litelvlm_kernels.testing.assert_selection_close checks exactly that). Accepted
    differences are printed (pytest -s shows them) and returned."""
    s_tol = S_TOL_REL * max(1.0, _finite_max(s_ref))
    c_tol = C_TOL_REL * _finite_max(c_ref)
    notes = assert_selection_close(out, s_ref, c_ref, num_retain, min_votes=min_votes, k_per_text=k_per_text,
                                   order=order, num_texts=num_texts, s_tol=s_tol, c_tol=c_tol)
    for n in notes:
        print(f"[near-tie accepted{': ' + what if what else ''}; s_tol={s_tol:.3g}, c_tol={c_tol:.3g}] {n}")
    return notes


def assert_same(out, expected, what=""):
    """Exact equality of (indices, num_similarity, from_similarity)."""
    names = ("indices", "num_similarity", "from_similarity")
    for name, a, e in zip(names, out, expected):
        a, e = a.cpu(), e.cpu()
        assert a.dtype == e.dtype and a.shape == e.shape, \
            f"{what} {name}: {a.dtype}{tuple(a.shape)} vs {e.dtype}{tuple(e.shape)}"
        assert torch.equal(a, e), f"{what} {name} differs:\n{a}\nvs\n{e}"


def fused(x, w, b, R, **kw):
    return tops.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, R, **kw)


def pieces(x, w, b, R, *, min_votes=1, k_per_text=0, order="official", num_texts=None, scale=None):
    """The same selection from the separate kernels: text_similarity, cls_contribution,
    select_tokens. With the same block sizes as fused_select the scores are bitwise equal,
    so the selections must be identical (no tolerance)."""
    s = tops.text_similarity(x.hidden, w, b, 1e-5)
    c = tops.cls_contribution(x.q_cls, x.keys, x.values, scale)
    return tops.select_tokens(s, c, R, min_votes, k_per_text, order, num_texts), s, c
