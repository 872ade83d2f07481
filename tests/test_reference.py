"""The reference against formulas computed by hand on tiny cases (it is the oracle, so it is tested first)."""

import math

import pytest
import torch
import torch.nn.functional as F

from litelvlm_kernels import reference as ref

NAN, INF = float("nan"), float("inf")


def test_similarity_matches_hand_formula():
    torch.manual_seed(0)
    M, Dv, P, T = 4, 5, 3, 2
    x = torch.randn(1, M, Dv, dtype=torch.float64)
    W = torch.randn(P, Dv, dtype=torch.float64)
    g, be = torch.randn(Dv, dtype=torch.float64), torch.randn(Dv, dtype=torch.float64)
    e = torch.randn(1, T, P, dtype=torch.float64)
    s = ref.similarity_direct(x, e, W, g, be, 1e-5)
    for t in range(T):
        for j in range(M):
            xj = x[0, j]
            mu = sum(xj.tolist()) / Dv
            var = sum((v - mu) ** 2 for v in xj.tolist()) / Dv
            ln = [(xj[i].item() - mu) / math.sqrt(var + 1e-5) * g[i].item() + be[i].item() for i in range(Dv)]
            z = [sum(W[p, i].item() * ln[i] for i in range(Dv)) for p in range(P)]
            want = sum(e[0, t, p].item() * z[p] for p in range(P))
            assert s[0, t, j].item() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_fold_text_algebra_is_exact_in_float64():
    torch.manual_seed(1)
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    W, e = torch.randn(4, 6, dtype=torch.float64), torch.randn(1, 3, 4, dtype=torch.float64)
    g, be = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    w, b = ref.fold_text(e.double(), W, g, be)
    mu = x.mean(-1, keepdim=True)
    sigma = ((x - mu).square().mean(-1) + 1e-5).sqrt()
    folded = torch.einsum("bmd,td->btm", x.double() - mu, w[0].double()) / sigma[:, None] + b[0, :, None]
    torch.testing.assert_close(folded.float(), ref.similarity_direct(x, e, W, g, be, 1e-5), rtol=1e-5, atol=1e-5)


def test_contribution_matches_hand_formula():
    torch.manual_seed(2)
    B, M, D = 1, 3, 4
    q, k, v = torch.randn(B, D), torch.randn(B, M, D), torch.randn(B, M, D)
    c = ref.contribution_direct(q, k, v)
    qh = q[0] / q[0].norm()
    logits = [(qh @ (k[0, j] / k[0, j].norm())).item() / math.sqrt(D) for j in range(M)]
    z = sum(math.exp(logit) for logit in logits)
    for j in range(M):
        a = math.exp(logits[j]) / z
        assert c[0, j].item() == pytest.approx(a * v[0, j].norm().item(), rel=1e-5)
    c2 = ref.contribution_direct(q, k, v, scale=3.0)
    a2 = torch.softmax(3.0 * F.normalize(k, dim=-1) @ F.normalize(q, dim=-1)[0], -1)
    torch.testing.assert_close(c2, a2 * v.norm(dim=-1))


def test_orders_of_special_values_and_ties():
    x = torch.tensor([1.0, NAN, -0.0, 0.0, -INF, INF, 1.0, NAN, -1.0])
    assert ref.bottom_k_order(x).tolist() == [4, 8, 2, 3, 0, 6, 5, 1, 7]
    assert ref.top_contribution_order(x).tolist() == [5, 0, 6, 2, 3, 8, 4, 1, 7]


def _sel(s, c, R, **kw):
    idx, ns, fs = ref.select(torch.tensor(s).float(), torch.tensor(c).float(), R, **kw)
    return idx.tolist(), ns.tolist(), fs.tolist()


def test_union_then_recovery_official_and_spatial():
    # text 0 bottom-2: {1, 3}; text 1 bottom-2: {3, 4}; union S = {1, 3, 4}; R = 5 (k = 5 // 2 = 2)
    s = [[[5.0, 0.0, 4.0, -1.0, 3.0, 9.0], [5.0, 8.0, 4.0, -2.0, 0.0, 9.0]]]
    c = [[0.1, 0.9, 0.5, 0.3, 0.2, 0.7]]  # context ranking without S: 5 (0.7), 2 (0.5), 0 (0.1)
    assert _sel(s, c, 5) == ([[5, 2, 1, 3, 4]], [3], [[False, False, True, True, True]])
    assert _sel(s, c, 5, order="spatial") == ([[1, 2, 3, 4, 5]], [3], [[True, False, True, True, False]])
    # intersection: S = {3}; 4 context tokens: 1, 5, 2, 4
    assert _sel(s, c, 5, min_votes=0) == ([[1, 5, 2, 4, 3]], [1], [[False, False, False, False, True]])
    # min_votes=2 with k_per_text=3: text 0 {1,3,4}, text 1 {3,4,2}: S = {3, 4}
    assert _sel(s, c, 5, min_votes=2, k_per_text=3)[0] == [[1, 5, 2, 3, 4]]


def test_num_texts_per_row_and_zero_texts():
    s = [[[5.0, 0.0, 4.0, -1.0], [0.0, 8.0, 4.0, 9.0]]] * 3
    c = [[0.1, 0.9, 0.5, 0.3]] * 3
    idx, ns, fs = _sel(s, c, 2, num_texts=torch.tensor([0, 1, 7]))
    assert idx == [[1, 2], [1, 3], [0, 3]]  # n=0: pure context; n=1: k=2 {1,3}; n=2 (7 clamped): k=1 {3},{0}
    assert ns == [0, 2, 2]
    idx, ns, _ = ref.select(torch.zeros(2, 0, 4), torch.tensor([[1.0, 3.0, 2.0, 0.0]] * 2), 3)
    assert idx.tolist() == [[1, 2, 0]] * 2 and ns.tolist() == [0, 0]


def test_ties_and_nan_in_selection():
    s = [[[1.0, 1.0, NAN, 1.0, -INF]]]  # bottom-2: 4 (-inf), then 0 (tie with 1, 3 broken by index)
    c = [[NAN, 2.0, 2.0, INF, NAN]]  # context: 3 (inf), then 1 (tie with 2), NaNs last
    assert _sel(s, c, 4, k_per_text=2) == ([[3, 1, 0, 4]], [2], [[False, False, True, True]])
    assert _sel(s, c, 5)[0] == [[0, 1, 2, 3, 4]]  # k = R = M: every token is in S, no context
    idx, _, _ = ref.select(torch.tensor([[[0.0, -0.0, 0.0]]]), torch.zeros(1, 3), 1)
    assert idx.tolist() == [[0]]  # -0.0 == +0.0: tie broken by index


def test_clamping_and_argument_rules():
    s, c = torch.zeros(1, 2, 5), torch.zeros(1, 5)
    assert ref.select(s, c, 100)[0].shape == (1, 5)  # R' = min(R, M)
    with pytest.raises(ValueError, match="T=2"):
        ref.select(torch.zeros(1, 2, 1), torch.zeros(1, 1), 5)
    with pytest.raises(ValueError, match="k_per_text"):
        ref.select(s, c, 4, k_per_text=3)
    with pytest.raises(ValueError, match="k_per_text=5"):  # intersection: k > R'
        ref.select(torch.zeros(1, 1, 9), torch.zeros(1, 9), 4, min_votes=0, k_per_text=5)
    with pytest.raises(ValueError, match="order"):
        ref.select(s, c, 4, order="raster")


def test_nan_key_makes_every_weight_nan():
    q, k, v = torch.randn(1, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    k[0, 1, 2] = NAN
    assert torch.isnan(ref.contribution_direct(q, k, v)).all()
