"""The selection rules (docs/design.md section 2) of the kernels' row finaliser, on exact scores.

select_tokens runs fused_select's finaliser on given s and c, so these scores can hold
exact ties, -0.0, NaN and +-inf where we want them, and the result must equal
reference.select EXACTLY (same scores, no tolerance).
"""

import itertools

import _tri
import pytest
import torch
from _inputs import scores
from _tri import tops

from litelvlm_kernels import reference as ref

MODES = [1, 0, 2]  # union, intersection, at least 2 votes
ORDERS = ["official", "spatial"]


# The chunked finaliser (rows longer than BLOCK_F) costs ~10 s per case in the interpreter:
# every mode once, each order at least once.
CASES = [(mv, o, "registers") for mv, o in itertools.product(MODES, ORDERS)] + [
    (1, "official", "chunked"), (0, "spatial", "chunked"), (2, "official", "chunked")]


@pytest.mark.parametrize("min_votes,order,path", CASES)
def test_modes_orders_hazards(min_votes, order, path, device):
    # B=3 rows, T=3 texts, M=45 (odd); ties every 7th / 5th token, -0.0, NaN and +-inf.
    _tri.force_blocks(dict(BLOCK_F=16) if path == "chunked" else None)  # chunked: 3 chunks of 16
    s, c = scores(3, 3, 45, device=device, seed=min_votes + 3)
    for R in (12, 45):
        out = tops.select_tokens(s, c, R, min_votes, 0, order)
        _tri.assert_same(out, ref.select(s.cpu(), c.cpu(), R, min_votes, 0, order), f"R={R}")


@pytest.mark.parametrize("G", [1, 2])
def test_text_groups(G, device):
    """Bottom-k searches run G texts at a time (one G x 256-bin histogram per radix pass):
    one and two texts per group, with T = 3 (a partial last group), on both finalisers."""
    s, c = scores(2, 3, 45, device=device, seed=G)
    for blocks in (dict(G=G), dict(G=G, BLOCK_F=16)):
        _tri.force_blocks(blocks)
        for R, order, mv in ((10, "official", 1), (30, "spatial", 2), (21, "official", 0)):
            _tri.assert_same(tops.select_tokens(s, c, R, mv, 0, order), ref.select(s.cpu(), c.cpu(), R, mv, 0, order),
                             f"{blocks} R={R}")


def test_keys_differ_in_low_digits(device):
    """Scores one ulp apart (keys equal in their top 3 radix digits) and exact ties across
    the sign: every digit pass and the index tie-break are exercised."""
    g = torch.Generator().manual_seed(5)
    base = torch.tensor([1.0, -1.0, 3e-38, -3e-38]).repeat_interleave(16)  # 4 clusters of 16 tokens
    steps = torch.randint(0, 6, (64,), generator=g)  # 0..5 ulps away: many exact ties
    x = base.clone()
    for i in range(64):
        for _ in range(int(steps[i])):
            x[i] = torch.nextafter(x[i], torch.tensor(float("inf")))
    s = torch.stack([x, x.flip(0)]).unsqueeze(0).to(device)  # [1, 2, 64]
    c = (x.abs() * 1e37).clamp(max=1e30).unsqueeze(0).to(device)
    for R, k in ((20, 5), (40, 10), (64, 0)):
        for order in ORDERS:
            for blocks in (None, dict(BLOCK_F=16)):
                _tri.force_blocks(blocks)
                _tri.assert_same(tops.select_tokens(s, c, R, 1, k, order),
                                 ref.select(s.cpu(), c.cpu(), R, 1, k, order), f"R={R} k={k} {order} {blocks}")


@pytest.mark.parametrize("order", ORDERS)
def test_num_texts_and_k_per_text(order, device):
    s, c = scores(4, 3, 40, device=device, seed=7)
    nt = torch.tensor([3, 0, 1, 7], dtype=torch.int64, device=device)  # 7 is clamped to T = 3
    for mv, k in [(1, 0), (1, 4), (0, 4), (2, 8)]:
        out = tops.select_tokens(s, c, 12, mv, k, order, nt)
        _tri.assert_same(out, ref.select(s.cpu(), c.cpu(), 12, mv, k, order, nt.cpu()), f"mv={mv} k={k}")
    nt32 = nt.to(torch.int32)
    _tri.assert_same(tops.select_tokens(s, c, 12, 1, 0, order, nt32),
                     ref.select(s.cpu(), c.cpu(), 12, 1, 0, order, nt.cpu()))


def test_all_equal_scores_ties_by_index(device):
    """Every score equal: bottom-k and recovery both take the lowest indices."""
    s = torch.zeros(2, 2, 30, device=device)
    s[1] = -0.0  # -0.0 and +0.0 are equal
    s[1, 0, ::2] = 0.0
    c = torch.full((2, 30), 0.5, device=device)
    for order in ORDERS:
        out = tops.select_tokens(s, c, 10, 1, 3, order)
        _tri.assert_same(out, ref.select(s.cpu(), c.cpu(), 10, 1, 3, order))
        assert out[0][0].sort().values.tolist() == list(range(10))


def test_special_value_order(device):
    """bottom-k: -inf < finite < +inf < NaN; recovery: +inf > finite > -inf > NaN."""
    nan, inf = float("nan"), float("inf")
    s = torch.tensor([[[nan, inf, 1.0, -inf, nan, 0.0, -0.0, inf]]], device=device)
    c = torch.tensor([[nan, -inf, 2.0, inf, nan, -inf, 2.0, 1.0]], device=device)
    for R in range(1, 9):
        for order in ORDERS:
            out = tops.select_tokens(s, c, R, 1, 0, order)
            _tri.assert_same(out, ref.select(s.cpu(), c.cpu(), R, 1, 0, order), f"R={R} {order}")
    # the whole bottom-k order and the whole recovery order, explicitly
    assert tops.select_tokens(s, c, 8, 1, 8, "official")[0][0].tolist() == list(range(8))
    # k = 1 takes token 3 (-inf) into S; recovery order of the rest: +inf (3 is taken), the
    # 2.0 tie by index (2, 6), 1.0 (7), -inf by index (1, 5), NaN by index (0, 4).
    assert tops.select_tokens(s, c, 8, 1, 1, "official")[0][0].tolist() == [2, 6, 7, 1, 5, 0, 4, 3]


def test_no_texts_and_clamped_budget(device):
    s, c = scores(2, 0, 20, device=device)  # T = 0: pure context selection
    _tri.assert_same(tops.select_tokens(s, c, 7), ref.select(s.cpu(), c.cpu(), 7))
    s, c = scores(2, 2, 9, device=device)  # R > M: R' = M, every token kept
    out = tops.select_tokens(s, c, 50, 1, 0, "spatial")
    _tri.assert_same(out, ref.select(s.cpu(), c.cpu(), 50, 1, 0, "spatial"))
    assert out[0].shape == (2, 9)


def test_empty(device):
    """B = 0 or M = 0: empty outputs without a launch. (Argument errors are raised by the op
    layer before any launcher runs: tests/test_*.py check them.)"""
    s, c = scores(0, 2, 9, device=device)
    idx, ns, fs = tops.select_tokens(s, c, 4)
    assert idx.shape == (0, 4) and ns.shape == (0,) and fs.shape == (0, 4) and fs.dtype == torch.bool
    s, c = scores(2, 0, 0, device=device)  # M = 0
    idx, ns, fs = tops.select_tokens(s, c, 4)
    assert idx.shape == (2, 0) and ns.tolist() == [0, 0]


def test_random_sweep(device):
    """60 random configurations (shapes, modes, orders, num_texts, k_per_text, coarse
    scores with many ties, NaN/inf): every one EXACTLY equal to reference.select."""
    g = torch.Generator().manual_seed(1234)

    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    ran = 0
    for case in range(60):
        B, T, M = rint(1, 3), rint(0, 4), rint(1, 70)
        R = rint(max(T, 1), M + 5)
        s = torch.randint(-3, 4, (B, T, M), generator=g).float()  # coarse: many exact ties
        c = torch.randint(0, 5, (B, M), generator=g).float() / 4
        for t, v in ((s, float("nan")), (s, float("inf")), (s, float("-inf")), (c, float("nan")), (c, float("inf"))):
            if t.numel():
                t.view(-1)[torch.randint(0, t.numel(), (2,), generator=g)] = v
        mv = [1, 0, 2][rint(0, 2)]
        order = ORDERS[rint(0, 1)]
        nt = torch.randint(-1, T + 2, (B,), generator=g) if rint(0, 1) else None
        r = min(R, M)
        k = rint(1, max(1, r // max(T, 1))) if rint(0, 1) and T else 0
        if mv == 2 and k:
            k = min(M, rint(1, max(1, 2 * r // max(T, 1))))
        try:
            expected = ref.select(s, c, R, mv, k, order, nt)
        except ValueError:
            continue  # an argument combination the shape checks reject
        _tri.force_blocks(dict(BLOCK_F=16) if case % 4 == 3 else None)
        out = tops.select_tokens(s.to(device), c.to(device), R, mv, k, order,
                                 None if nt is None else nt.to(device))
        _tri.assert_same(out, expected, f"case {case}: B={B} T={T} M={M} R={R} mv={mv} k={k} {order} nt={nt}")
        ran += 1
    assert ran >= 30, ran
    print(f"{ran} random configurations checked")
