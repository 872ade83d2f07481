"""select_tokens (pure selection) must equal the reference exactly: same scores in, same tokens out."""

import itertools

import pytest
import torch
from _inputs import noncontig, scores

import litelvlm_kernels  # noqa: F401
from litelvlm_kernels import reference as ref
from litelvlm_kernels.testing import assert_valid_indices

op = torch.ops.litelvlm.select_tokens


def _legal(T, M, R, min_votes, k):
    r = min(R, M)
    if T > r:
        return False
    if k and (min(k, M) * T > r * max(1, min_votes) or (min_votes == 0 and min(k, M) > r)):
        return False
    return True


def _check(s, c, R, mv, k, order, num_texts):
    got = op(s, c, R, mv, k, order, num_texts)
    want = ref.select(s, c, R, mv, k, order, num_texts)
    assert_valid_indices(got[0], s.shape[2], R)
    for g, w, name in zip(got, want, ("indices", "num_similarity", "from_similarity")):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g.cpu(), w.cpu()), f"{name} differs:\n{g}\n{w}"


GRID = [(B, T, M, R) for B, T, M, R in itertools.product([0, 1, 3], [0, 1, 3], [0, 5, 196, 577], [1, 64, 192, None])]


@pytest.mark.parametrize("B,T,M,R", GRID)
@pytest.mark.parametrize("mode", [1, 0, 2])
def test_grid_vs_reference(B, T, M, R, mode, device):
    R = M if R is None else R
    s, c = scores(B, T, M, device=device, seed=B * 1000 + T * 100 + M)
    if not _legal(T, M, R, mode, 0) or R == 0:
        if T > min(R, M):
            with pytest.raises(ValueError, match="T="):
                op(s, c, R, mode, 0, "official", None)
            return
    for order in ("official", "spatial"):
        _check(s, c, R, mode, 0, order, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("order", ["official", "spatial"])
@pytest.mark.parametrize("mode", [1, 0, 2, 5])
def test_dtypes_strides_num_texts_k(dtype, order, mode, device):
    B, T, M = 4, 3, 577
    s, c = scores(B, T, M, dtype=dtype, device=device, seed=7)
    s, c = noncontig(s), noncontig(c)
    num_texts = torch.tensor([0, 1, 3, 9], device=device)  # 9 is clamped to T
    for R in (3, 64, 192, 577):
        _check(s, c, R, mode, 0, order, num_texts)
        _check(s, c, R, mode, 0, order, num_texts.int())
        for k in (1, 20, 64):
            if _legal(T, M, R, mode, k):
                _check(s, c, R, mode, k, order, None)


def test_all_equal_scores_break_ties_by_index(device):
    s = torch.zeros(2, 2, 50, device=device)
    c = torch.ones(2, 50, device=device)
    idx, ns, fs = op(s, c, 10, 1, 0, "official", None)
    # both texts pick 0..4 (union of 5); context fills 5..9 first in official order
    assert idx.tolist() == [list(range(5, 10)) + list(range(5))] * 2 and ns.tolist() == [5, 5]
    idx, _, _ = op(s, c, 10, 1, 0, "spatial", None)
    assert idx.tolist() == [list(range(10))] * 2


def test_all_nan(device):
    nan = float("nan")
    s = torch.full((1, 1, 9), nan, device=device)
    c = torch.full((1, 9), nan, device=device)
    _check(s, c, 4, 1, 0, "official", None)
    assert op(s, c, 4, 1, 0, "official", None)[0].tolist() == [[0, 1, 2, 3]]


def test_errors_name_the_argument():
    s, c = torch.zeros(1, 2, 5), torch.zeros(1, 5)
    with pytest.raises(ValueError, match="num_retain"):
        op(s, c, -1, 1, 0, "official", None)
    with pytest.raises(ValueError, match="min_votes"):
        op(s, c, 4, -1, 0, "official", None)
    with pytest.raises(ValueError, match="order"):
        op(s, c, 4, 1, 0, "zigzag", None)
    with pytest.raises(ValueError, match="c "):
        op(s, torch.zeros(1, 6), 4, 1, 0, "official", None)
    with pytest.raises(TypeError, match="num_texts"):
        op(s, c, 4, 1, 0, "official", torch.zeros(1))
    with pytest.raises(ValueError, match="num_texts"):
        op(s, c, 4, 1, 0, "official", torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="s must"):
        op(s.int(), c, 4, 1, 0, "official", None)
