"""One referring expression (T = 1): what the release's rule k = R' // T does, and what ``k_per_text`` changes.

With T = 1 the default k is R' // 1 = R': the one text's bottom-R' set is the whole budget, so the
[CLS] contribution selects nothing (num_similarity == R', the contribution inputs do not matter) and
``order="official"`` (recovered tokens, then S ascending) is raster order. ``k_per_text = k < R'``
gives S the k lowest-similarity tokens and the contribution the other R' - k (docs/design.md
sections 1.5, 1.6 and 2.3; README "Use"; docs/serving.md "Settings").

Checked on ``litelvlm_kernels.prune`` (the fused op) against an independent restatement built from
the reference's score functions, so a kernel or a reference that let the contribution in at T = 1,
or ignored ``k_per_text``, fails here.
"""

from __future__ import annotations

import pytest
import torch

import litelvlm_kernels as lk
from litelvlm_kernels import reference
from litelvlm_kernels.synthetic import clip_inputs

SHAPES = [(3, 40, 12), (2, 40, 40), (2, 40, 64), (1, 577, 192)]  # (B, M, R): R < M, R = M, R > M, odd M


def _prune(x, values=None, **kw):
    values = x.values if values is None else values
    return lk.prune(x.hidden, x.text_embeds, x.q_cls, x.keys, values, proj_weight=x.proj_weight,
                    ln_weight=x.ln_weight, ln_bias=x.ln_bias, **kw)


def _scores(x):
    s = reference.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)[:, 0]
    c = reference.contribution_direct(x.q_cls, x.keys, x.values)
    return s, c  # [B, M], [B, M]


@pytest.mark.parametrize("B,M,R", SHAPES)
def test_default_k_fills_the_budget_with_the_similarity_set(B, M, R):
    x = clip_inputs(B, 1, M, 48, 32, 24, seed=M + R)
    r = min(R, M)
    official = _prune(x, num_retain=R)
    spatial = _prune(x, num_retain=R, order="spatial")
    assert official.num_similarity.tolist() == [r] * B
    assert bool(official.from_similarity.all())
    # the release's official order (recovered, then S ascending) has no recovered part: raster order
    assert torch.equal(official.indices, spatial.indices)
    assert torch.equal(official.indices, official.indices.sort(dim=1).values)
    # the kept set is the bottom-R' of the one text's similarity (random floats: no ties)
    s, _ = _scores(x)
    want = s.topk(r, dim=1, largest=False).indices.sort(dim=1).values
    assert torch.equal(official.indices, want)


def test_default_k_ignores_the_cls_contribution():
    """Other values (hence other contributions) change nothing at T = 1 with the default k."""
    x = clip_inputs(2, 1, 64, 48, 32, 24, seed=7)
    other = torch.randn(x.values.shape, generator=torch.Generator().manual_seed(8)) * 10
    assert not torch.equal(reference.contribution_direct(x.q_cls, x.keys, other), _scores(x)[1])
    assert torch.equal(_prune(x, num_retain=16).indices, _prune(x, values=other, num_retain=16).indices)


@pytest.mark.parametrize("multi_text", ["union", "intersection", 1])
@pytest.mark.parametrize("k", [1, 5, 15])
def test_k_per_text_below_the_budget_lets_the_contribution_fill_the_rest(k, multi_text):
    B, M, R = 3, 40, 16
    x = clip_inputs(B, 1, M, 48, 32, 24, seed=k)
    out = _prune(x, num_retain=R, k_per_text=k, multi_text=multi_text)
    assert out.num_similarity.tolist() == [k] * B
    s, c = _scores(x)
    for b in range(B):
        sim = s[b].topk(k, largest=False).indices.sort().values
        rest = torch.ones(M, dtype=torch.bool)
        rest[sim] = False
        candidates = rest.nonzero().squeeze(1)
        recovered = candidates[c[b, candidates].topk(R - k).indices]  # falling contribution
        # official order: the recovered tokens by falling contribution, then S ascending
        assert out.indices[b].tolist() == recovered.tolist() + sim.tolist()
        assert out.from_similarity[b].tolist() == [False] * (R - k) + [True] * k
    spatial = _prune(x, num_retain=R, k_per_text=k, order="spatial")
    assert torch.equal(spatial.indices, out.indices.sort(dim=1).values)
    assert not torch.equal(spatial.indices, out.indices)  # now the two orders differ
