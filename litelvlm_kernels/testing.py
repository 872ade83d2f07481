"""Checks for selections computed from slightly different scores (kernels vs the reference).

Two implementations that compute scores in a different order agree except at
near-ties: tokens whose scores sit within floating-point tolerance of a
cut-off (docs/design.md section 2). ``assert_selection_close`` accepts exactly those
differences and nothing else, and says which ones it accepted.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from . import reference


def assert_valid_indices(indices: torch.Tensor, M: int, num_retain: int) -> None:
    """The invariant: every row holds min(R, M) distinct indices in [0, M)."""
    r = min(num_retain, M)
    assert indices.dim() == 2 and indices.shape[1] == r, f"expected [B, {r}] indices, got {tuple(indices.shape)}"
    assert indices.dtype == torch.int64, f"indices must be int64, got {indices.dtype}"
    if indices.numel() == 0:
        return
    assert int(indices.min()) >= 0 and int(indices.max()) < M, "index out of [0, M)"
    srt = torch.sort(indices, dim=1).values
    assert bool((srt[:, 1:] != srt[:, :-1]).all()), "duplicate index in a row"


def _near(x: float, y: float, tol: float) -> bool:
    if x != x or y != y:  # NaN: only a NaN is 'near' a NaN
        return x != x and y != y
    if x == y:  # covers equal infinities
        return True
    return abs(x - y) <= tol


def assert_selection_close(out, s_ref: torch.Tensor, c_ref: torch.Tensor, num_retain: int, *, min_votes: int = 1,
                           k_per_text: int = 0, order: str = "official", num_texts: Optional[torch.Tensor] = None,
                           s_tol: float = 1e-4, c_tol: float = 1e-6) -> List[str]:
    """Assert ``out`` = (indices, num_similarity, from_similarity) equals the reference selection on
    the reference scores, except for swaps of tokens within ``s_tol`` / ``c_tol`` of a cut-off.

    Returns one note per accepted difference (empty when identical), for the test log.
    """
    indices, num_sim, from_sim = (t.cpu() for t in out)
    s_ref, c_ref = s_ref.float().cpu(), c_ref.float().cpu()
    B, T, M = s_ref.shape
    r = min(num_retain, M)
    nt = None if num_texts is None else num_texts.cpu()
    ref_idx, ref_nsim, ref_fsim = reference.select(s_ref, c_ref, num_retain, min_votes, k_per_text, order, nt)
    assert_valid_indices(indices, M, num_retain)
    assert tuple(num_sim.shape) == (B,) and num_sim.dtype == torch.int32
    assert tuple(from_sim.shape) == (B, r) and from_sim.dtype == torch.bool
    notes = []
    for b in range(B):
        if (torch.equal(indices[b], ref_idx[b]) and torch.equal(from_sim[b], ref_fsim[b])
                and int(num_sim[b]) == int(ref_nsim[b])):
            continue
        row_start = len(notes)  # notes of earlier rows must not hide this row's
        kept = indices[b].tolist()
        sim_out = {j for j, f in zip(kept, from_sim[b].tolist()) if f}
        sim_ref = {j for j, f in zip(ref_idx[b].tolist(), ref_fsim[b].tolist()) if f}
        assert int(num_sim[b]) == len(sim_out), f"row {b}: num_similarity {int(num_sim[b])} != {len(sim_out)}"
        n_sim = len(sim_out)
        if order == "official":
            assert from_sim[b].tolist() == [False] * (r - n_sim) + [True] * n_sim, \
                f"row {b}: official order is context tokens then similarity tokens"
            sim_part = kept[r - n_sim:]
            assert sim_part == sorted(sim_part), f"row {b}: similarity tokens must be ascending"
            ctx_c = [float(c_ref[b, j]) for j in kept[: r - n_sim]]
            for i in range(len(ctx_c) - 1):
                a, z = ctx_c[i], ctx_c[i + 1]
                ok = (a != a and z != z) or (a == a and (z != z or a >= z or _near(a, z, c_tol)))
                assert ok, f"row {b}: context tokens out of falling-contribution order ({a} then {z})"
        else:
            assert kept == sorted(kept), f"row {b}: spatial order must be ascending"

        n = T if nt is None else min(max(int(nt[b]), 0), T)
        k = min(k_per_text if k_per_text > 0 else (r // n if n else 0), M)
        cuts = [float(s_ref[b, t, reference.bottom_k_order(s_ref[b, t])[k - 1]]) for t in range(n)] if k else []
        for j in sorted(sim_out ^ sim_ref):
            near = [t for t in range(n) if _near(float(s_ref[b, t, j]), cuts[t], s_tol)]
            assert near, (f"row {b}: token {j} {'added to' if j in sim_out else 'missing from'} the similarity set, "
                          f"but its scores {s_ref[b, :n, j].tolist()} are not within {s_tol} of the cut-offs {cuts}")
            notes.append(f"row {b}: token {j} swapped in S at a near-tie with text(s) {near}")

        ctx_out = set(kept) - sim_out
        ctx_ref = set(ref_idx[b].tolist()) - sim_ref
        either_sim = sim_out | sim_ref
        ranked = [j for j in reference.top_contribution_order(c_ref[b]).tolist() if j not in sim_ref]
        d = len(sim_out ^ sim_ref)
        n_ctx = r - len(sim_ref)
        lo, hi = max(n_ctx - d - 1, 0), min(n_ctx + d, len(ranked) - 1)
        band = [float(c_ref[b, j]) for j in ranked[lo:hi + 1]]
        for j in sorted((ctx_out ^ ctx_ref) - either_sim):
            cj = float(c_ref[b, j])
            assert any(_near(cj, x, c_tol) for x in band), (
                f"row {b}: context token {j} (c={cj}) differs from the reference but is not within {c_tol} "
                f"of the recovery cut-off band {band}")
            notes.append(f"row {b}: context token {j} swapped at a near-tie (c={cj})")
        if order == "official" and len(notes) == row_start:
            notes.append(f"row {b}: same sets, context order differs only within {c_tol}")
    return notes
