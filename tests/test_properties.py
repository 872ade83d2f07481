"""Property test of the invariant: every output row holds min(R, M) distinct indices in [0, M)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import litelvlm_kernels  # noqa: F401
from litelvlm_kernels.testing import assert_valid_indices

SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), 0.5])


@st.composite
def selection_case(draw):
    B = draw(st.integers(0, 3))
    M = draw(st.integers(0, 40))
    R = draw(st.integers(0, 50))
    r = min(R, M)
    T = draw(st.integers(0, min(r, 4)))
    min_votes = draw(st.integers(0, 3))
    k = draw(st.integers(0, 12))
    if k and (min(k, M) * T > r * max(1, min_votes) or (min_votes == 0 and min(k, M) > r)):
        k = 0
    mix = draw(st.booleans())  # random values or a handful of special ones (many ties)
    n = B * T * M + B * M
    vals = draw(st.lists(SPECIAL if mix else st.floats(-4, 4, width=32), min_size=n, max_size=n))
    t = torch.tensor(vals, dtype=torch.float32)
    s, c = t[: B * T * M].view(B, T, M), t[B * T * M:].view(B, M)
    num_texts = draw(st.none() | st.lists(st.integers(-2, 6), min_size=B, max_size=B)
                     .map(lambda v: torch.tensor(v, dtype=torch.int64)))
    order = draw(st.sampled_from(["official", "spatial"]))
    return s, c, R, min_votes, k, order, num_texts


@settings(max_examples=300, deadline=None)
@given(selection_case())
def test_select_tokens_invariant(case):
    s, c, R, min_votes, k, order, num_texts = case
    idx, num_sim, from_sim = torch.ops.litelvlm.select_tokens(s, c, R, min_votes, k, order, num_texts)
    assert_valid_indices(idx, s.shape[2], R)
    assert bool((num_sim.long() == from_sim.sum(1)).all())
    assert bool((num_sim >= 0).all()) and bool((num_sim <= idx.shape[1]).all())
