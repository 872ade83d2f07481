"""The finaliser for rows longer than BLOCK_F (M > 4096) and the official-order ranking
of the recovered tokens (used by both finalisers).

Every pass streams the row in BLOCK_F chunks; keys and votes live in scratch, with
barriers between writers and readers. Same keys, search and membership test as the
single-chunk path (_keys.py), hence bitwise-equal results.
"""

from __future__ import annotations

from ._common import _HAS_TRITON

if _HAS_TRITON:
    import triton
    import triton.language as tl

    from ._keys import SENTINEL, _ascending_key, _descending_key, _kth_key, _member, _tie_index
    from ._tiles import _row_softmax_stats

    @triton.jit
    def _rank_recovered(list_row, nR, o_row, f_row, R, RB: tl.constexpr):
        """Official order of the nR recovered tokens, given as packed (key << 32 | index)
        int64 in list_row[0:nR]: each one's output position is the number of smaller packed
        keys (falling contribution, ties by index), counted over RB x RB compare tiles
        (|recovered| <= R' - |S|: at most 9 tiles of 64 x 64 at R' = 192)."""
        rar = tl.arange(0, RB)
        big = 0x7FFFFFFFFFFFFFFF
        for i0 in range(0, nR, RB):
            im = (i0 + rar) < nR
            ki = tl.load(list_row + i0 + rar, mask=im, other=big)
            rank = tl.zeros([RB], dtype=tl.int32)
            for j0 in range(0, nR, RB):
                kj = tl.load(list_row + j0 + rar, mask=(j0 + rar) < nR, other=big)
                rank += tl.sum((kj[None, :] < ki[:, None]).to(tl.int32), axis=1)
            om = im & (rank < R)
            tl.store(o_row + rank, ki & 0xFFFFFFFF, mask=om)
            tl.store(f_row + rank, tl.zeros([RB], dtype=tl.int8), mask=om)

    @triton.jit
    def _finalise_chunked(
        sim_row, l_row, vn_row, votes_row, keys_row, list_row, o_row, f_row,
        M, R, nb, kb, thr, has_s,
        OFFICIAL: tl.constexpr, BLOCK_F: tl.constexpr, RB: tl.constexpr, G: tl.constexpr,
        C_GIVEN: tl.constexpr,
    ):
        """_finalise_row for rows longer than BLOCK_F. keys_row holds G rows of M int32
        keys. Returns |S|."""
        ar = tl.arange(0, BLOCK_F)
        gi = tl.arange(0, G)
        unused = tl.zeros([G, BLOCK_F], dtype=tl.int32)  # the register-keys argument of the search
        # ---- phase A: bottom-k of G texts at a time -> votes per token.
        for t0 in range(0, nb, G):
            tm = (t0 + gi) < nb
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                m2 = tm[:, None] & valid[None, :]
                s = tl.load(sim_row + (t0 + gi)[:, None] * M + offs[None, :], mask=m2, other=0.0,
                            cache_modifier=".cg")
                tl.store(keys_row + gi[:, None] * M + offs[None, :], tl.where(m2, _ascending_key(s), SENTINEL),
                         mask=(gi < G)[:, None] & valid[None, :])
            tl.debug_barrier()
            k = tl.where(tm, kb, 0)
            V, need, at = _kth_key(unused, keys_row, M, k, G, BLOCK_F, False)
            I = _tie_index(unused, keys_row, M, V, need, at, G, BLOCK_F, False)
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                key = tl.load(keys_row + gi[:, None] * M + offs[None, :], mask=valid[None, :], other=SENTINEL)
                mem = tl.sum(_member(key, offs[None, :], V[:, None], I[:, None]).to(tl.int32), axis=0)
                prev = tl.load(votes_row + offs, mask=valid & ((ar * 0 + t0) > 0), other=0)
                tl.store(votes_row + offs, prev + mem, mask=valid)
            # keys_row is rewritten by the next group: every thread must be done reading it.
            tl.debug_barrier()

        # ---- phase B: contributions c_j = softmax(logits)_j * ||v_j|| of the tokens not in
        # S, as recovery keys (tokens in S get the sentinel: never recovered).
        if not C_GIVEN:
            mx, se = _row_softmax_stats(l_row, M, BLOCK_F)
        nS_acc = tl.zeros([BLOCK_F], dtype=tl.int32)
        for c0 in range(0, M, BLOCK_F):
            offs = c0 + ar
            valid = offs < M
            votes = tl.load(votes_row + offs, mask=valid & has_s, other=0)
            in_s = valid & has_s & (votes >= thr)
            nS_acc += in_s.to(tl.int32)
            vn = tl.load(vn_row + offs, mask=valid, other=0.0, cache_modifier=".cg")
            if C_GIVEN:
                c = vn
            else:
                lg = tl.load(l_row + offs, mask=valid, other=0.0, cache_modifier=".cg")
                c = tl.exp(lg - mx) / se * vn
            tl.store(keys_row + offs, tl.where(valid & (in_s == 0), _descending_key(c), SENTINEL), mask=valid)
        nS = tl.sum(nS_acc, axis=0)
        tl.debug_barrier()
        # |S| <= R' is guaranteed by the op layer's shape checks; the clamp keeps memory safe regardless.
        kR = tl.zeros([1], dtype=tl.int32) + tl.maximum(R - nS, 0)
        one = tl.zeros([1, BLOCK_F], dtype=tl.int32)
        V, need, at = _kth_key(one, keys_row, M, kR, 1, BLOCK_F, False)
        I = _tie_index(one, keys_row, M, V, need, at, 1, BLOCK_F, False)
        V = tl.max(V, axis=0)
        I = tl.max(I, axis=0)

        # ---- phase C: output. Official: the recovered tokens by falling contribution (ties:
        # lower index) first, compacted as packed (key << 32 | index) int64 into scratch and
        # ranked by counting the smaller packed keys; then S by ascending index.
        # Spatial: every kept token by ascending index.
        nR = tl.zeros([], dtype=tl.int32)
        if OFFICIAL:
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                key = tl.load(keys_row + offs, mask=valid, other=SENTINEL)
                mem = valid & _member(key, offs, V, I)
                pos = nR + tl.cumsum(mem.to(tl.int32), axis=0) - 1
                tl.store(list_row + pos, (key.to(tl.int64) << 32) | offs.to(tl.int64), mask=mem)
                nR += tl.sum(mem.to(tl.int32), axis=0)
            tl.debug_barrier()
            _rank_recovered(list_row, nR, o_row, f_row, R, RB)
        run = nR
        for c0 in range(0, M, BLOCK_F):
            offs = c0 + ar
            valid = offs < M
            votes = tl.load(votes_row + offs, mask=valid & has_s, other=0)
            in_s = valid & has_s & (votes >= thr)
            sel = in_s
            if not OFFICIAL:
                key = tl.load(keys_row + offs, mask=valid, other=SENTINEL)
                sel = in_s | (valid & _member(key, offs, V, I))
            pos = run + tl.cumsum(sel.to(tl.int32), axis=0) - 1
            om = sel & (pos < R)
            tl.store(o_row + pos, offs.to(tl.int64), mask=om)
            tl.store(f_row + pos, in_s.to(tl.int8), mask=om)
            run += tl.sum(sel.to(tl.int32), axis=0)
        return nS
