"""fused_select: LiteLVLM's whole token selection in ONE Triton kernel launch.

For every row (image, tile or frame) b of a batch: the folded [EOS] similarity of every
text, each text's bottom-k, the vote / set combination (union, intersection, min_votes),
the softmax-weighted [CLS] contribution c_j = a_j * ||v_j||, the recovery fill and the
final order (DESIGN.md sections 1-4). See docs/triton.md for the walk-through.
"""

from __future__ import annotations

import torch

from ._common import (
    device_guard,
    num_warps,
    _HAS_TRITON,
    V,
    check_device,
    check_select_args,
    default_scale,
    interpret_mode,
    next_pow2,
    radix_bits,
    text_strides,
)

if _HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import (
        _SENTINEL,
        _ascending_key,
        _cls_partials,
        _descending_key,
        _kth_reg,
        _kth_smallest,
        _row_softmax_stats,
        _sim_tile,
    )

    @triton.jit
    def _rank_recovered(list_row, nR, o_row, f_row, R, RB: tl.constexpr):
        """Official order of the nR recovered tokens, given as packed (key << 32 | index)
        int64 in list_row[0:nR]: each one's output position is the number of smaller packed
        keys (falling contribution, ties by index), counted over RB x RB compare tiles
        (|recovered| <= R': 9 tiles of 64 x 64 at R' = 192)."""
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
    def _finalise_single(
        sim_row, l_row, vn_row, list_row, o_row, f_row,
        M, R, nb, kb, thr, has_s,
        OFFICIAL: tl.constexpr, BLOCK_F: tl.constexpr, RB: tl.constexpr, BITS: tl.constexpr,
        C_GIVEN: tl.constexpr,
    ):
        """_finalise_row for rows that fit one BLOCK_F chunk: the row's keys, votes and
        contributions stay on registers from the first load to the output (no scratch
        round trips, no barriers but the one before the rank tiles). Same arithmetic as
        the chunked path, so both give bitwise-equal results. Returns |S|."""
        offs = tl.arange(0, BLOCK_F)
        valid = offs < M
        votes = tl.zeros([BLOCK_F], dtype=tl.int32)
        for t in range(0, nb):
            s = tl.load(sim_row + t * M + offs, mask=valid, other=0.0, cache_modifier=".cg")
            key = tl.where(valid, _ascending_key(s), _SENTINEL)
            V, I = _kth_reg(key, offs, kb, BITS)
            votes += ((key < V) | ((key == V) & (offs <= I))).to(tl.int32)
        in_s = valid & has_s & (votes >= thr)
        nS = tl.sum(in_s.to(tl.int32), axis=0)
        vn = tl.load(vn_row + offs, mask=valid, other=0.0, cache_modifier=".cg")
        if C_GIVEN:
            c = vn
        else:
            lg = tl.load(l_row + offs, mask=valid, other=float("-inf"), cache_modifier=".cg")
            nan = tl.sum((lg != lg).to(tl.int32), axis=0)
            mx = tl.max(tl.where(lg == lg, lg, float("-inf")), axis=0)
            mx = tl.where(nan > 0, float("nan"), mx)
            se = tl.sum(tl.where(valid, tl.exp(lg - mx), 0.0), axis=0)
            c = tl.exp(lg - mx) / se * vn
        key = tl.where(valid & (in_s == 0), _descending_key(c), _SENTINEL)
        V, I = _kth_reg(key, offs, tl.maximum(R - nS, 0), BITS)
        in_r = valid & ((key < V) | ((key == V) & (offs <= I)))
        if OFFICIAL:
            pos = tl.cumsum(in_r.to(tl.int32), axis=0) - 1
            tl.store(list_row + pos, ((key - 0x80000000) << 32) | offs.to(tl.int64), mask=in_r)
            nR = tl.sum(in_r.to(tl.int32), axis=0)
            tl.debug_barrier()
            _rank_recovered(list_row, nR, o_row, f_row, R, RB)
            pos = nR + tl.cumsum(in_s.to(tl.int32), axis=0) - 1
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
    def _finalise_chunked(
        sim_row, l_row, vn_row, votes_row, keys_row, list_row, o_row, f_row,
        M, R, nb, kb, thr, has_s,
        OFFICIAL: tl.constexpr, BLOCK_F: tl.constexpr, RB: tl.constexpr, BITS: tl.constexpr,
        C_GIVEN: tl.constexpr,
    ):
        """_finalise_row for rows longer than BLOCK_F: every pass streams the row in
        BLOCK_F chunks, keys and votes live in scratch (barriers between writers and
        readers). Returns |S|."""
        ar = tl.arange(0, BLOCK_F)
        # ---- phase A: bottom-k of each text -> votes per token.
        for t in range(0, nb):
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                s = tl.load(sim_row + t * M + offs, mask=valid, other=0.0, cache_modifier=".cg")
                tl.store(keys_row + offs, tl.where(valid, _ascending_key(s), _SENTINEL), mask=valid)
            tl.debug_barrier()
            V, I = _kth_smallest(keys_row, M, kb, BLOCK_F, False, BITS)
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                key = tl.load(keys_row + offs, mask=valid, other=_SENTINEL)
                mem = (key < V) | ((key == V) & (offs <= I))
                prev = tl.load(votes_row + offs, mask=valid & ((ar * 0 + t) > 0), other=0)
                tl.store(votes_row + offs, prev + mem.to(tl.int32), mask=valid)
            # keys_row is rewritten by the next text: every thread must be done reading it.
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
            tl.store(keys_row + offs, tl.where(valid & (in_s == 0), _descending_key(c), _SENTINEL),
                     mask=valid)
        nS = tl.sum(nS_acc, axis=0)
        tl.debug_barrier()
        # |S| <= R' is guaranteed by the shape checks; the clamp keeps memory safe regardless.
        kR = tl.maximum(R - nS, 0)
        V, I = _kth_smallest(keys_row, M, kR, BLOCK_F, False, BITS)

        # ---- phase C: output.
        if OFFICIAL:
            # Recovered tokens by falling contribution (ties: lower index): compact them as
            # packed (key << 32 | index) int64 into scratch, then rank each by counting the
            # smaller packed keys (RB x RB tiles; |recovered| <= R', small in practice).
            run = tl.zeros([], dtype=tl.int32)
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                key = tl.load(keys_row + offs, mask=valid, other=_SENTINEL)
                mem = valid & ((key < V) | ((key == V) & (offs <= I)))
                pos = run + tl.cumsum(mem.to(tl.int32), axis=0) - 1
                packed = ((key - 0x80000000) << 32) | offs.to(tl.int64)
                tl.store(list_row + pos, packed, mask=mem)
                run += tl.sum(mem.to(tl.int32), axis=0)
            nR = run
            tl.debug_barrier()
            _rank_recovered(list_row, nR, o_row, f_row, R, RB)
            # Then S by ascending index.
            run = tl.zeros([], dtype=tl.int32)
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                votes = tl.load(votes_row + offs, mask=valid & has_s, other=0)
                in_s = valid & has_s & (votes >= thr)
                pos = nR + run + tl.cumsum(in_s.to(tl.int32), axis=0) - 1
                om = in_s & (pos < R)
                tl.store(o_row + pos, offs.to(tl.int64), mask=om)
                tl.store(f_row + pos, tl.full([BLOCK_F], 1, tl.int8), mask=om)
                run += tl.sum(in_s.to(tl.int32), axis=0)
        else:
            # Spatial: every kept token by ascending index.
            run = tl.zeros([], dtype=tl.int32)
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                key = tl.load(keys_row + offs, mask=valid, other=_SENTINEL)
                in_r = valid & ((key < V) | ((key == V) & (offs <= I)))
                votes = tl.load(votes_row + offs, mask=valid & has_s, other=0)
                in_s = valid & has_s & (votes >= thr)
                sel = in_r | in_s
                pos = run + tl.cumsum(sel.to(tl.int32), axis=0) - 1
                om = sel & (pos < R)
                tl.store(o_row + pos, offs.to(tl.int64), mask=om)
                tl.store(f_row + pos, in_s.to(tl.int8), mask=om)
                run += tl.sum(sel.to(tl.int32), axis=0)
        return nS

    @triton.jit
    def _finalise_row(
        row, sim_ws, l_ws, vn_ws, votes_ws, keys_ws, list_ws,
        nt_ptr, idx_ptr, fs_ptr, ns_ptr,
        M, T, R, k_per_text, min_votes, s_nt,
        HAS_NT: tl.constexpr, OFFICIAL: tl.constexpr,
        BLOCK_F: tl.constexpr, SINGLE: tl.constexpr, RB: tl.constexpr, BITS: tl.constexpr,
        C_GIVEN: tl.constexpr,
    ):
        """Selection of one row from its partials (run by the row's last-arriving program).

        Reads the row's similarities [T, M] / logits [M] / ||v|| [M] (fp32, contiguous) from
        scratch in a fixed chunk order (so the result does not depend on which program
        finalises), and writes indices, from_similarity and num_similarity.
        C_GIVEN (select_tokens): vn_ws holds the contributions c themselves, l_ws is unused.
        """
        ar = tl.arange(0, BLOCK_F)
        r64 = row.to(tl.int64)
        sim_row = sim_ws + r64 * T * M
        l_row = l_ws + r64 * M
        vn_row = vn_ws + r64 * M
        votes_row = votes_ws + r64 * M
        keys_row = keys_ws + r64 * M
        list_row = list_ws + r64 * M

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
        o_row = idx_ptr + r64 * R
        f_row = fs_ptr + r64 * R
        if SINGLE:
            nS = _finalise_single(sim_row, l_row, vn_row, list_row, o_row, f_row, M, R, nb, kb, thr, has_s,
                                  OFFICIAL, BLOCK_F, RB, BITS, C_GIVEN)
        else:
            nS = _finalise_chunked(sim_row, l_row, vn_row, votes_row, keys_row, list_row, o_row, f_row,
                                   M, R, nb, kb, thr, has_s, OFFICIAL, BLOCK_F, RB, BITS, C_GIVEN)
        tl.store(ns_ptr + row, nS)

    @triton.jit
    def _fused_select_kernel(
        # pointers: inputs, outputs, workspace
        h_ptr, w_ptr, b_ptr, q_ptr, k_ptr, v_ptr, nt_ptr,
        idx_ptr, fs_ptr, ns_ptr,
        sim_ws, l_ws, vn_ws, votes_ws, keys_ws, list_ws, cnt_ptr,
        # sizes and scalars
        M, Dv, D, T, R, k_per_text, min_votes, ln_eps, scale, NSPLIT,
        # strides
        s_hb, s_hm, s_hd, s_wb, s_wt, s_wd, s_bb, s_bt,
        s_qb, s_qd, s_kb, s_km, s_kd, s_vb, s_vm, s_vd, s_nt,
        # meta-parameters
        HAS_NT: tl.constexpr, OFFICIAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TB: tl.constexpr,
        BLOCK_F: tl.constexpr, SINGLE: tl.constexpr, RB: tl.constexpr, BITS: tl.constexpr,
    ):
        """Single-launch LiteLVLM selection.

        Grid: (B * NSPLIT,), NSPLIT = cdiv(M, BLOCK_M); program p handles tokens
        [s * BLOCK_M, (s + 1) * BLOCK_M) of row p // NSPLIT, s = p % NSPLIT.
        Shapes: hidden [B, M, Dv], w [Bt, T, Dv], b [Bt, T] (Bt = 1 broadcasts), q [B, D],
        keys / values [B, M, D], num_texts [B]; outputs indices [B, R'] int64,
        from_similarity [B, R'] uint8 (viewed as bool), num_similarity [B] int32.
        Workspace (per call): sim [B, T, M], logits [B, M], ||v|| [B, M] fp32; votes [B, M]
        int32; keys, list [B, M] int64; counters [B] int32, zero on entry and on exit.

        One program: phase 1 streams its tokens' hidden / keys / values once (fp32 math) and
        writes s_tj, logit_j, ||v_j|| to scratch; then bumps its row's counter (acq_rel). The
        program that sees NSPLIT - 1 is the last of the row: it runs _finalise_row (bottom-k
        per text, votes, softmax, recovery, order) and resets the counter to 0.

        Block sizes: BLOCK_M tokens x BLOCK_D features per tile (16 x 128 with 4 warps or
        32 x 128 with 8: 4-8 KB of fp16 per load; BLOCK_M = 16 at small B so that B = 1,
        M = 576 still spreads over 36 SMs). BLOCK_F (finaliser chunk) = next_pow2(M) up to
        4096, so that typical rows stay on registers through the whole finaliser (SINGLE);
        longer rows stream 4096-token chunks from L2. BITS = 4 (2 above BLOCK_F = 1024):
        bits per counting step of the k-th key search. TB = texts per pass
        (next_pow2(T), <= 16). RB = 64: rank tiles of 64 x 64 compares.
        The block sizes are reasoned, not yet tuned on a GPU (docs/triton.md).
        """
        pid = tl.program_id(0)
        row = pid // NSPLIT
        split = pid % NSPLIT
        r64 = row.to(tl.int64)
        offs_m = split * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M

        # ---- phase 1: partials of this program's tokens.
        for t0 in range(0, T, TB):
            s = _sim_tile(h_ptr + r64 * s_hb, s_hm, s_hd, Dv,
                          w_ptr + r64 * s_wb, s_wt, s_wd, b_ptr + r64 * s_bb, s_bt, T, t0,
                          offs_m, mask_m, ln_eps, BLOCK_M, BLOCK_D, TB)
            tcol = t0 + tl.arange(0, TB)
            dst = sim_ws + r64 * T * M + tcol[None, :] * M + offs_m[:, None]
            tl.store(dst, s, mask=mask_m[:, None] & (tcol < T)[None, :])
        _cls_partials(q_ptr + r64 * s_qb, s_qd, k_ptr + r64 * s_kb, s_km, s_kd, v_ptr + r64 * s_vb, s_vm, s_vd,
                      D, scale, l_ws + r64 * M, vn_ws + r64 * M, offs_m, mask_m, BLOCK_M, BLOCK_D)

        # ---- arrival: all threads' stores done (barrier), then one acq_rel atomic publishes
        # them at GPU scope and tells whether this program is the row's last.
        tl.debug_barrier()
        old = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel")
        if old == NSPLIT - 1:
            tl.debug_barrier()
            _finalise_row(row, sim_ws, l_ws, vn_ws, votes_ws, keys_ws, list_ws,
                          nt_ptr, idx_ptr, fs_ptr, ns_ptr,
                          M, T, R, k_per_text, min_votes, s_nt,
                          HAS_NT, OFFICIAL, BLOCK_F, SINGLE, RB, BITS, False)
            # Leave the counter as found (0) so a cached workspace could be reused.
            tl.atomic_xchg(cnt_ptr + row, 0)


# Test / tuning hook: override the launcher's block choices ({"BLOCK_M": 16, "BLOCK_F": 32}).
_FORCE_BLOCKS: dict = {}


def _pick_blocks(B: int, M: int, T: int, Dv: int, D: int) -> dict:
    if interpret_mode():
        # The interpreter costs ~0.1-0.3 ms per tl op whatever the block size: fewer, larger
        # tiles (tests force the GPU sizes where they check them).
        block_m, block_d = 64, min(1024, max(16, next_pow2(max(Dv, D))))
    else:
        # BLOCK_M: 16 when the grid would otherwise leave SMs idle (B * M / 32 < ~2 waves of
        # 132 SMs), else 32. BLOCK_D = 128: one 16 x 128 fp16 tile = 4 KB per load and the
        # reductions over it are in-warp.
        block_m = 16 if B * triton.cdiv(M, 32) < 264 else 32
        block_d = min(128, max(16, next_pow2(max(Dv, D))))
    tb = min(16, next_pow2(max(T, 1)))
    block_f = min(4096, max(16, next_pow2(M)))
    blocks = dict(BLOCK_M=block_m, BLOCK_D=block_d, TB=tb, BLOCK_F=block_f, RB=64)
    blocks.update(_FORCE_BLOCKS)
    blocks["SINGLE"] = M <= blocks["BLOCK_F"]
    blocks.setdefault("BITS", radix_bits(blocks["BLOCK_F"]))
    return blocks


def fused_select(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes=1,
                 k_per_text=0, order="official", num_texts=None, scale=None):
    """LiteLVLM selection in one Triton launch (DESIGN.md section 4, `fused_select`).

    hidden [B, M, Dv], w [Bt, T, Dv], b [Bt, T] (Bt in {1, B}), q_cls [B, D],
    keys / values [B, M, D], num_texts [B] int or None; any float dtype and strides.
    Returns (indices [B, R'] int64, num_similarity [B] int32, from_similarity [B, R'] bool)
    with R' = min(num_retain, M). CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.
    """
    V.check_fused_inputs(hidden, w, b, ln_eps, q_cls, keys, values, scale, num_texts)
    B, M, Dv = hidden.shape
    T = w.shape[1]
    D = q_cls.shape[-1]
    check_select_args(T, M, num_retain, min_votes, k_per_text, order)
    R = min(int(num_retain), M)
    dev = hidden.device
    indices = torch.empty((B, R), dtype=torch.int64, device=dev)
    if B == 0 or M == 0:  # empty outputs, no launch
        return (indices, torch.zeros((B,), dtype=torch.int32, device=dev),
                torch.zeros((B, R), dtype=torch.bool, device=dev))
    # Every output element is written by the kernel (|recovered| + |S| = R'): no memset.
    from_sim = torch.empty((B, R), dtype=torch.uint8, device=dev)
    num_sim = torch.empty((B,), dtype=torch.int32, device=dev)
    check_device(hidden, w, b, q_cls, keys, values)
    swb, swt, swd, sbb, sbt = text_strides(w, b, B)
    if scale is None:
        scale = default_scale(D)

    blk = _pick_blocks(B, M, T, Dv, D)
    nsplit = triton.cdiv(M, blk["BLOCK_M"])
    f32 = dict(dtype=torch.float32, device=dev)
    sim_ws = torch.empty((B, max(T, 1), M), **f32)  # never 0 elements: no null pointer
    l_ws = torch.empty((B, M), **f32)
    vn_ws = torch.empty((B, M), **f32)
    votes_ws = torch.empty((B, M), dtype=torch.int32, device=dev)
    keys_ws = torch.empty((B, M), dtype=torch.int64, device=dev)
    list_ws = torch.empty((B, M), dtype=torch.int64, device=dev)
    # The only memset: per-call counters, so concurrent streams never share one.
    counters = torch.zeros((B,), dtype=torch.int32, device=dev)
    if T == 0:  # no texts: w / b are never read; do not hand triton a null pointer
        w = b = sim_ws
    has_nt = num_texts is not None
    nt = num_texts if has_nt else counters
    s_nt = nt.stride(0) if has_nt else 0

    with device_guard(dev):
        _fused_select_kernel[(B * nsplit,)](
            hidden, w, b, q_cls, keys, values, nt,
            indices, from_sim, num_sim,
            sim_ws, l_ws, vn_ws, votes_ws, keys_ws, list_ws, counters,
            M, Dv, D, T, R, int(k_per_text), int(min_votes), float(ln_eps), float(scale), nsplit,
            hidden.stride(0), hidden.stride(1), hidden.stride(2), swb, swt, swd, sbb, sbt,
            q_cls.stride(0), q_cls.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
            values.stride(0), values.stride(1), values.stride(2), s_nt,
            HAS_NT=has_nt, OFFICIAL=(order == "official"),
            BLOCK_M=blk["BLOCK_M"], BLOCK_D=blk["BLOCK_D"], TB=blk["TB"],
            BLOCK_F=blk["BLOCK_F"], SINGLE=blk["SINGLE"], RB=blk["RB"], BITS=blk["BITS"],
            num_warps=num_warps(blk),
        )
    return indices, num_sim, from_sim.view(torch.bool)

