"""The row finaliser shared by fused_select and select_tokens: the selection of one row
(docs/design.md section 2) from its scores in scratch.

``_finalise_row`` reads n_b, k_b and the vote threshold, then runs ``_finalise_single``
(row of M <= BLOCK_F tokens: everything on registers) or ``_finalise_chunked``
(_finalise_chunked.py: longer rows streamed in BLOCK_F chunks). Both use the same keys,
search and membership test (_keys.py), so they give bitwise-equal results.

Critical path of the single-chunk finaliser (docs/triton.md states the arithmetic):
the bottom-k searches of G = 2 texts at a time (4 histogram passes per group), then the
recovery search (4 passes); the softmax statistics do not depend on the votes and are
computed before the searches.
"""

from __future__ import annotations

from ._common import _HAS_TRITON

if _HAS_TRITON:
    import triton
    import triton.language as tl

    from ._finalise_chunked import _finalise_chunked, _rank_recovered
    from ._keys import SENTINEL, _ascending_key, _descending_key, _kth_key, _member, _tie_index
    from ._tiles import _nan_to_inf

    @triton.jit
    def _finalise_single(
        sim_row, l_row, vn_row, list_row, o_row, f_row,
        M, R, nb, kb, thr, has_s,
        OFFICIAL: tl.constexpr, BLOCK_F: tl.constexpr, RB: tl.constexpr, G: tl.constexpr,
        C_GIVEN: tl.constexpr,
    ):
        """Rows that fit one BLOCK_F chunk: keys, votes and contributions stay on registers
        from the first load to the output; the only scratch round trip is the compaction
        list of the official order (one barrier). Returns |S|."""
        offs = tl.arange(0, BLOCK_F)
        valid = offs < M
        gi = tl.arange(0, G)
        # Contributions first: they do not depend on the votes, so the softmax reductions
        # are off the searches' critical path.
        vn = tl.load(vn_row + offs, mask=valid, other=0.0, cache_modifier=".cg")
        if C_GIVEN:
            c = vn
        else:
            lg = tl.load(l_row + offs, mask=valid, other=float("-inf"), cache_modifier=".cg")
            mx = tl.max(_nan_to_inf(lg), axis=0)
            se = tl.sum(tl.where(valid, tl.exp(lg - mx), 0.0), axis=0)
            c = tl.exp(lg - mx) / se * vn
        # Bottom-k of G texts at a time: one [G, BLOCK_F] key tile, one histogram per pass.
        votes = tl.zeros([BLOCK_F], dtype=tl.int32)
        for t0 in range(0, nb, G):
            tm = (t0 + gi) < nb
            m2 = tm[:, None] & valid[None, :]
            s = tl.load(sim_row + (t0 + gi)[:, None] * M + offs[None, :], mask=m2, other=0.0,
                        cache_modifier=".cg")
            key = tl.where(m2, _ascending_key(s), SENTINEL)
            k = tl.where(tm, kb, 0)
            V, need, at = _kth_key(key, sim_row, M, k, G, BLOCK_F, True)
            I = _tie_index(key, sim_row, M, V, need, at, G, BLOCK_F, True)
            votes += tl.sum(_member(key, offs[None, :], V[:, None], I[:, None]).to(tl.int32), axis=0)
        in_s = valid & has_s & (votes >= thr)
        nS = tl.sum(in_s.to(tl.int32), axis=0)
        # Recovery: the R' - |S| best contributions among the tokens not in S.
        rkey = tl.where(valid & (in_s == 0), _descending_key(c), SENTINEL)[None, :]
        kR = tl.zeros([1], dtype=tl.int32) + tl.maximum(R - nS, 0)
        V, need, at = _kth_key(rkey, sim_row, M, kR, 1, BLOCK_F, True)
        I = _tie_index(rkey, sim_row, M, V, need, at, 1, BLOCK_F, True)
        in_r = tl.reshape(_member(rkey, offs[None, :], V[:, None], I[:, None]), [BLOCK_F]) & valid
        if OFFICIAL:
            # One scan gives both output positions: recovered tokens count in the low 16 bits,
            # S in the high bits (BLOCK_F <= 4096 < 2**16). nR = kR exactly (k never exceeds
            # the eligible tokens), so no reduction is needed for it.
            cum = tl.cumsum(in_r.to(tl.int32) | (in_s.to(tl.int32) << 16), axis=0)
            nR = tl.max(kR, axis=0)
            key = tl.reshape(rkey, [BLOCK_F])
            tl.store(list_row + (cum & 0xFFFF) - 1, (key.to(tl.int64) << 32) | offs.to(tl.int64), mask=in_r)
            tl.debug_barrier()
            _rank_recovered(list_row, nR, o_row, f_row, R, RB)
            pos = nR + (cum >> 16) - 1
            om = in_s & (pos < R)
            tl.store(o_row + pos, offs.to(tl.int64), mask=om)
            tl.store(f_row + pos, tl.full([BLOCK_F], 1, tl.int8), mask=om)
        else:
            sel = in_r | in_s
            pos = tl.cumsum(sel.to(tl.int32), axis=0) - 1
            om = sel & (pos < R)
            tl.store(o_row + pos, offs.to(tl.int64), mask=om)
            tl.store(f_row + pos, in_s.to(tl.int8), mask=om)
        return nS

    @triton.jit
    def _finalise_row(
        row, sim_ws, l_ws, vn_ws, votes_ws, keys_ws, list_ws,
        nt_ptr, idx_ptr, fs_ptr, ns_ptr,
        M, T, R, k_per_text, min_votes, s_nt,
        HAS_NT: tl.constexpr, OFFICIAL: tl.constexpr,
        BLOCK_F: tl.constexpr, SINGLE: tl.constexpr, RB: tl.constexpr, G: tl.constexpr,
        C_GIVEN: tl.constexpr,
    ):
        """Selection of one row from its partials (run by the row's last-arriving program).

        Reads the row's similarities [T, M] / logits [M] / ||v|| [M] (fp32, contiguous) from
        scratch in a fixed order (the result does not depend on which program finalises),
        and writes indices, from_similarity and num_similarity. C_GIVEN (select_tokens):
        vn_ws holds the contributions c themselves and l_ws is unused. Scratch of the
        chunked path: votes [M] int32, keys [G, M] int32, list [M] int64 per row.
        """
        ar = tl.arange(0, BLOCK_F)
        r64 = row.to(tl.int64)
        # ---- per-row counts: n_b texts (clamped to [0, T], never checked), k_b per text,
        # vote threshold (min_votes = 0: intersection = all n_b texts).
        if HAS_NT:
            nb = tl.load(nt_ptr + r64 * s_nt).to(tl.int32)
            nb = tl.minimum(tl.maximum(nb, 0), T)
        else:
            nb = tl.zeros([], dtype=tl.int32) + T
        k_def = tl.where(nb > 0, R // tl.maximum(nb, 1), 0)
        kb = tl.where(k_per_text > 0, k_per_text, k_def)
        kb = tl.minimum(kb, M)
        thr = tl.where(min_votes <= 0, nb, min_votes)
        # Scalar conditions are broadcast to blocks before '&' with block masks (the
        # interpreter turns scalar-bool & block-bool into int32, which tl.load rejects).
        has_s = (ar * 0 + nb) > 0
        sim_row = sim_ws + r64 * T * M
        o_row = idx_ptr + r64 * R
        f_row = fs_ptr + r64 * R
        if SINGLE:
            nS = _finalise_single(sim_row, l_ws + r64 * M, vn_ws + r64 * M, list_ws + r64 * M, o_row, f_row,
                                  M, R, nb, kb, thr, has_s, OFFICIAL, BLOCK_F, RB, G, C_GIVEN)
        else:
            nS = _finalise_chunked(sim_row, l_ws + r64 * M, vn_ws + r64 * M, votes_ws + r64 * M,
                                   keys_ws + r64 * G * M, list_ws + r64 * M, o_row, f_row,
                                   M, R, nb, kb, thr, has_s, OFFICIAL, BLOCK_F, RB, G, C_GIVEN)
        tl.store(ns_ptr + row, nS)
