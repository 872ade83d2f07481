"""fused_select (one launch) vs the reference, and vs the separate kernels.

Two checks per case:
1. against reference.select on the reference's direct scores: equal sets and orders,
   except swaps at near-ties, which _tri.assert_matches_reference accepts ONLY when the
   swapped tokens' reference scores are within the stated tolerance of the cut-off;
2. against text_similarity + cls_contribution + select_tokens with the same block sizes:
   bitwise-equal scores, so the selection must be IDENTICAL (no tolerance).
"""

import itertools

import _tri
import pytest
import torch
from _inputs import noncontig
from _tri import FS

from litelvlm_kernels import reference as ref

MODES = [1, 0, 2]
ORDERS = ["official", "spatial"]
SPLIT = dict(BLOCK_M=16, BLOCK_D=32, BLOCK_F=64)  # M = 50: 4 programs per row


def _check(x, w, b, R, *, exact=True, scale=None, **kw):
    out = _tri.fused(x, w, b, R, scale=scale, **kw)
    s_ref, c_ref = _tri.ref_scores(x, scale=scale)
    _tri.assert_matches_reference(out, s_ref, c_ref, R, **kw)
    if exact:
        again, _, _ = _tri.pieces(x, w, b, R, scale=scale, **kw)
        _tri.assert_same(out, again, "fused vs separate kernels")
    return out


@pytest.mark.parametrize("min_votes,order", list(itertools.product(MODES, ORDERS)))
def test_modes_orders_split(min_votes, order, device):
    _tri.force_blocks(SPLIT)
    x, w, b = _tri.inputs(2, 3, 50, 40, 24, device=device, seed=min_votes)
    _check(x, w, b, 20, min_votes=min_votes, order=order)


@pytest.mark.parametrize("order", ORDERS)
def test_odd_shapes_noncontiguous(order, device):
    """B = 3, M = 577, Dv = 1000, D = 72, default (interpreter) blocks, strided inputs."""
    x, w, b = _tri.inputs(3, 2, 577, 1000, 72, 40, device=device, seed=5)
    x = x._replace(hidden=noncontig(x.hidden), keys=noncontig(x.keys), values=noncontig(x.values),
                   q_cls=noncontig(x.q_cls))
    _check(x, noncontig(w), noncontig(b), 64, order=order, exact=False)


def test_gpu_block_sizes(device):
    """The block sizes the launcher picks on a GPU (BLOCK_M = 16, BLOCK_D = 128,
    BLOCK_F = next_pow2(M)), run here too."""
    _tri.force_blocks(dict(BLOCK_M=16, BLOCK_D=128, BLOCK_F=256))
    x, w, b = _tri.inputs(1, 2, 196, 256, 128, device=device, seed=3)
    _check(x, w, b, 81)


@pytest.mark.parametrize("order", ORDERS)
def test_chunked_finaliser(order, device):
    """Rows longer than BLOCK_F: every counting step streams the row in chunks."""
    _tri.force_blocks(dict(BLOCK_M=16, BLOCK_D=32, BLOCK_F=16))
    x, w, b = _tri.inputs(2, 2, 50, 40, 24, device=device, seed=11)
    _check(x, w, b, 17, order=order, min_votes=1 if order == "official" else 0)


def test_text_broadcast_num_texts_k_per_text(device):
    _tri.force_blocks(SPLIT)
    x, w, b = _tri.inputs(4, 3, 50, 40, 24, device=device, seed=2, text_batch=1)
    assert w.shape[0] == 1  # one text batch shared by the 4 rows
    nt = torch.tensor([3, 0, 1, 2], device=device)
    for kw in (dict(), dict(k_per_text=5), dict(min_votes=0, k_per_text=6), dict(min_votes=2, k_per_text=10)):
        _check(x, w, b, 24, num_texts=nt, **kw)
    _check(x, w, b, 24, num_texts=nt.to(torch.int32), order="spatial")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype, device):
    """fp16 / bf16 inputs, fp32 arithmetic: the reference on the same values (upcast)."""
    _tri.force_blocks(SPLIT)
    x, w, b = _tri.inputs(2, 2, 50, 40, 24, dtype=dtype, device=device, seed=4)
    _check(x, w.to(dtype), b.to(dtype), 16)
    _check(x, w, b, 16, order="spatial", scale=0.3)


def test_duplicated_tokens_ties(device):
    """Exact duplicates (hidden, key, value rows) give exactly tied scores: ties go to the
    lower index in bottom-k and in recovery (exact check against select_tokens + the
    reference rules on the kernels' own scores)."""
    _tri.force_blocks(SPLIT)
    x, w, b = _tri.inputs(2, 2, 50, 40, 24, device=device, seed=8)
    src = torch.arange(50, device=device) % 10  # every token equals one of the first 10
    x = x._replace(hidden=x.hidden[:, src].contiguous(), keys=x.keys[:, src].contiguous(),
                   values=x.values[:, src].contiguous())
    for order in ORDERS:
        out = _check(x, w, b, 20, order=order)
        (ref_idx, _, _), s, c = _tri.pieces(x, w, b, 20, order=order)
        assert torch.equal(s[:, :, 10:20], s[:, :, :10]) and torch.equal(c[:, 10:20], c[:, :10])
        _tri.assert_same(out, ref.select(s.cpu(), c.cpu(), 20, 1, 0, order), "ties vs reference rules")


def test_nan_inf_inputs(device):
    """NaN in a hidden row (its similarities are NaN: last in bottom-k), NaN key (the whole
    row's contributions are NaN: recovery by index), inf value (c = inf: recovered first)."""
    _tri.force_blocks(SPLIT)
    x, w, b = _tri.inputs(3, 2, 50, 40, 24, device=device, seed=9)
    h, k, v = x.hidden.clone(), x.keys.clone(), x.values.clone()
    h[0, 3, 5] = float("nan")
    h[2, 7, :] = float("inf")
    k[1, 4, 0] = float("nan")
    v[2, 11, 1] = float("inf")
    v[2, 12, 1] = float("nan")
    x = x._replace(hidden=h, keys=k, values=v)
    for order in ORDERS:
        _check(x, w, b, 20, order=order)


def test_inf_text_weight_all_ties(device):
    """An inf channel in w: every similarity is +inf, -inf or NaN: huge tie groups."""
    _tri.force_blocks(SPLIT)
    x, w, b = _tri.inputs(1, 2, 50, 40, 24, device=device, seed=10)
    w = w.clone()
    w[0, 0, 3] = float("inf")  # (the reference works from text_embeds: compare on the kernels' scores)
    for order in ORDERS:
        out = _tri.fused(x, w, b, 20, order=order)
        again, s, c = _tri.pieces(x, w, b, 20, order=order)
        assert bool(torch.isinf(s[0, 0]).sum() > 40)
        _tri.assert_same(out, again, "fused vs separate kernels")
        _tri.assert_same(out, ref.select(s.cpu(), c.cpu(), 20, 1, 0, order), "vs reference rules")


def test_every_token_kept_and_tiny(device):
    _tri.force_blocks(SPLIT)
    x, w, b = _tri.inputs(2, 2, 37, 16, 8, device=device, seed=12)
    _check(x, w, b, 37, order="official")  # R' = M: everything, recovered part ranked
    _check(x, w, b, 100, order="spatial")  # R clamped to M
    x, w, b = _tri.inputs(3, 1, 1, 16, 8, device=device, seed=13)
    _check(x, w, b, 1)
    x, w, b = _tri.inputs(2, 0, 20, 16, 8, device=device, seed=14)  # T = 0: context only
    _check(x, w, b, 7)


def test_deterministic(device):
    _tri.force_blocks(SPLIT)
    x, w, b = _tri.inputs(2, 2, 50, 40, 24, device=device, seed=15)
    a = _tri.fused(x, w, b, 20)
    _tri.assert_same(a, _tri.fused(x, w, b, 20), "second run")


def test_empty_no_launch(device, monkeypatch):
    calls = []
    monkeypatch.setattr(FS, "_fused_select_kernel", _Counting(FS._fused_select_kernel, calls))
    x, w, b = _tri.inputs(0, 2, 9, 16, 8, device=device)
    idx, ns, fs = _tri.fused(x, w, b, 4)
    assert idx.shape == (0, 4) and ns.shape == (0,) and fs.shape == (0, 4) and fs.dtype == torch.bool
    x, w, b = _tri.inputs(2, 0, 0, 16, 8, device=device)
    idx, ns, fs = _tri.fused(x, w, b, 4)
    assert idx.shape == (2, 0) and ns.tolist() == [0, 0]
    assert calls == []


class _Counting:
    """Stands in for the @triton.jit kernel and records each launch's grid."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.calls.append(grid)
            return launch(*args, **kwargs)

        return run


def test_one_launch_split_rows(device, monkeypatch):
    """One kernel launch per call; at B = 1 the row is split over several programs."""
    calls = []
    monkeypatch.setattr(FS, "_fused_select_kernel", _Counting(FS._fused_select_kernel, calls))
    x, w, b = _tri.inputs(1, 2, 200, 32, 16, device=device, seed=16)
    out = _tri.fused(x, w, b, 30)
    assert len(calls) == 1, calls
    (n_programs,) = calls[0]
    assert n_programs >= 4, f"B=1, M=200 ran on {n_programs} program(s): the row must be split"
    _tri.assert_matches_reference(out, *_tri.ref_scores(x), 30)


def test_long_rows(device):
    """M = 16384 (the stress shape's row length) at small widths: 256 programs, chunked finaliser."""
    x, w, b = _tri.inputs(1, 2, 16384, 8, 8, 8, device=device, seed=17, outliers=0)
    _check(x, w, b, 192, exact=False)


@pytest.mark.parametrize("order", ORDERS)
def test_register_and_chunked_finalisers_agree(order, device):
    """The register-resident finaliser (row <= BLOCK_F) and the chunked one give the same
    selection: same similarity keys; the softmax denominator is summed in other chunks,
    which rescales a whole row of c by one factor (the ranking could only move within an
    ulp, and this seed has no such tie)."""
    x, w, b = _tri.inputs(2, 3, 50, 40, 24, device=device, seed=21)
    _tri.force_blocks(dict(BLOCK_M=16, BLOCK_D=32, BLOCK_F=64))
    single = _tri.fused(x, w, b, 20, order=order, min_votes=2)
    _tri.force_blocks(dict(BLOCK_M=16, BLOCK_D=32, BLOCK_F=16, G=1))
    _tri.assert_same(_tri.fused(x, w, b, 20, order=order, min_votes=2), single, "chunked vs registers")


@pytest.mark.parametrize("T,TB", [(16, 16), (6, 4)])
def test_many_texts(T, TB, device):
    """T = 16 (the maximum of docs/design.md section 6) in one text group, and T = 6 in two groups of 4."""
    _tri.force_blocks(dict(BLOCK_M=32, BLOCK_D=32, TB=TB, BLOCK_F=64))
    x, w, b = _tri.inputs(2, T, 48, 40, 24, device=device, seed=T)
    nt = torch.tensor([T, T // 2], device=device)
    _check(x, w, b, 32, num_texts=nt)
    _check(x, w, b, 32, min_votes=2, order="spatial")


def test_random_sweep(device):
    """10 random small configurations (B, T, M, R, mode, order, num_texts, text broadcast,
    dtype, block sizes): vs the reference (near-ties only) and vs the separate kernels."""
    g = torch.Generator().manual_seed(99)

    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    for case in range(10):
        B, T = rint(1, 3), rint(1, 4)
        M = rint(T + 1, 90)
        R = rint(T, M)
        mv = [1, 0, 2][rint(0, 2)]
        order = ORDERS[rint(0, 1)]
        dtype = [torch.float32, torch.float16, torch.bfloat16][rint(0, 2)]
        nt = torch.randint(0, T + 1, (B,), generator=g).to(device) if rint(0, 1) else None
        _tri.force_blocks(dict(BLOCK_M=[16, 32, 64][rint(0, 2)], BLOCK_D=[16, 32][rint(0, 1)],
                               BLOCK_F=[16, 32, 128][rint(0, 2)]))
        x, w, b = _tri.inputs(B, T, M, rint(8, 40), rint(4, 24), 16, dtype=dtype, device=device, seed=case,
                              text_batch=1 if rint(0, 1) else None)
        _check(x, w, b, R, min_votes=mv, order=order, num_texts=nt)
