"""fused_select and prune vs reference.prune: the whole method on raw CLIP-shaped tensors."""

import itertools

import pytest
import torch

import litelvlm_kernels as lk
from litelvlm_kernels import reference as ref
from litelvlm_kernels.synthetic import clip_inputs
from litelvlm_kernels.testing import assert_selection_close

from _inputs import noncontig

CASES = [  # B, T, M, Dv, D, P, R
    (1, 2, 576, 256, 64, 96, 192),
    (3, 3, 577, 1000, 72, 40, 64),
    (2, 1, 196, 64, 32, 32, 196),
    (3, 2, 5, 16, 8, 8, 3),
    (0, 2, 9, 16, 8, 8, 4),
    (2, 0, 50, 16, 8, 8, 10),
]


def _ref_scores(x, scale=None):
    s = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5)
    return s, ref.contribution_direct(x.q_cls, x.keys, x.values, scale)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("multi_text,order", itertools.product(["union", "intersection", 2], ["official", "spatial"]))
def test_prune_vs_reference(case, dtype, multi_text, order, device):
    B, T, M, Dv, D, P, R = case
    x = clip_inputs(B, T, M, Dv, D, P, dtype=dtype, device=device, seed=B + T + M)
    min_votes = {"union": 1, "intersection": 0}.get(multi_text, multi_text)
    out = lk.prune(noncontig(x.hidden), x.text_embeds, x.q_cls, noncontig(x.keys), x.values, num_retain=R,
                   proj_weight=x.proj_weight, ln_weight=x.ln_weight, ln_bias=x.ln_bias, multi_text=multi_text,
                   order=order)
    s, c = _ref_scores(x)
    notes = assert_selection_close((out.indices, out.num_similarity, out.from_similarity), s, c, R, min_votes=min_votes, order=order,
                                   s_tol=3e-5 * (s.abs().max().item() if s.numel() else 1), c_tol=1e-6)
    if notes:
        print("accepted near-tie differences:", notes)
    # The gathered tokens are exactly hidden at the kept indices.
    assert out.tokens.dtype == dtype
    want = torch.gather(x.hidden, 1, out.indices.unsqueeze(-1).expand(-1, -1, Dv))
    assert torch.equal(out.tokens, want)


def test_folded_text_is_reused_and_broadcast(device):
    """One text for 4 video frames (Bt = 1), folded once, num_texts and k_per_text per call."""
    x = clip_inputs(4, 3, 196, 128, 64, 32, text_batch=1, device=device, seed=11)
    text = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    num_texts = torch.tensor([3, 2, 1, 0], device=device)
    for k in (None, 10):
        out = lk.prune(x.hidden, text, x.q_cls, x.keys, x.values, num_retain=64, num_texts=num_texts,
                       k_per_text=k, return_tokens=False)
        assert out.tokens is None
        s, c = _ref_scores(x)
        assert_selection_close((out.indices, out.num_similarity, out.from_similarity), s, c, 64,
                               k_per_text=k or 0, num_texts=num_texts, s_tol=1e-4 * s.abs().max().item())
    assert out.num_similarity[3] == 0  # a row without texts is pure context selection


def test_duplicated_tokens(device):
    """Duplicated hidden/key/value rows tie in real arithmetic. A batched GEMM may round twin columns
    differently, so the fused path is held to the near-tie rule; select_tokens' exact tie rule is
    tested on given scores in test_select_tokens.py."""
    x = clip_inputs(2, 2, 64, 32, 16, 16, device=device, seed=5)
    for t in (x.hidden, x.keys, x.values):
        t[:, 32:] = t[:, :32]
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    for order in ("official", "spatial"):
        out = torch.ops.litelvlm.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 20, 1, 0, order,
                                              None, None)
        s, c = _ref_scores(x)
        assert_selection_close(out, s, c, 20, order=order, s_tol=1e-5 * s.abs().max().item(), c_tol=1e-7)


def test_nan_inputs_follow_the_rules(device):
    x = clip_inputs(2, 2, 40, 32, 16, 16, device=device, seed=6)
    x.hidden[0, 3, 0] = float("nan")  # token 3's similarity is NaN: never in a bottom-k while numbers remain
    x.keys[1, 7, 2] = float("nan")  # row 1: every a_j is NaN: recovery by index
    text = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    out = lk.prune(x.hidden, text, x.q_cls, x.keys, x.values, num_retain=12, order="spatial")
    s, c = _ref_scores(x)
    assert_selection_close((out.indices, out.num_similarity, out.from_similarity), s, c, 12, order="spatial",
                           s_tol=1e-4 * s.nan_to_num().abs().max().item())
    assert 3 not in out.indices[0, out.from_similarity[0]].tolist()
