"""@triton.jit building blocks of the per-token phase, shared by text_similarity,
cls_contribution and fused_select (so that their per-token scores are bitwise equal),
and the row softmax statistics."""

from __future__ import annotations

from ._common import _HAS_TRITON

if _HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _sim_tile(h_ptr, s_hm, s_hd, Dv, w_ptr, s_wt, s_wd, b_ptr, s_bt, T, t0,
                  offs_m, mask_m, ln_eps,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TB: tl.constexpr, UNROLL: tl.constexpr):
        """Folded [EOS] similarity of BLOCK_M tokens against texts t0 .. t0+TB-1.

        h_ptr points at the row's first token; w_ptr/b_ptr at the row's text batch.
        s_tj = ((x_j - mu_j) . w_t) / sigma_j + b_t (docs/design.md section 3), in fp32 and
        in the centred form: two passes over Dv (mean, then centred dot + variance) so that
        outlier channels (|x| ~ 300 in CLIP) do not cancel as in x.w - mu*sum(w).
        Returns [BLOCK_M, TB] fp32 (columns of texts >= T are 0).
        """
        # UNROLL (_common.feature_unroll): 2 for 16-token tiles, whose programs are latency-bound
        # (two tiles' loads in flight per thread before the first FMA waits), else 1.
        offs_d = tl.arange(0, BLOCK_D)
        rows = offs_m.to(tl.int64) * s_hm
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for d0 in tl.range(0, Dv, BLOCK_D, loop_unroll_factor=UNROLL):
            d = d0 + offs_d
            m2 = mask_m[:, None] & (d < Dv)[None, :]
            x = tl.load(h_ptr + rows[:, None] + d[None, :] * s_hd, mask=m2, other=0.0).to(tl.float32)
            acc += x
        mu = tl.sum(acc, axis=1) / Dv
        var_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        dots = tl.zeros([BLOCK_M, TB], dtype=tl.float32)
        tcol = tl.arange(0, TB)
        for d0 in tl.range(0, Dv, BLOCK_D, loop_unroll_factor=UNROLL):
            d = d0 + offs_d
            dm = d < Dv
            m2 = mask_m[:, None] & dm[None, :]
            x = tl.load(h_ptr + rows[:, None] + d[None, :] * s_hd, mask=m2, other=0.0).to(tl.float32)
            xc = tl.where(m2, x - mu[:, None], 0.0)
            var_acc += xc * xc
            # One reduction per text and chunk instead of tl.dot: T is 1..16, tl.dot would pad
            # it to 16 (8x the FMAs at T = 2) and use TF32 for fp32 unless told otherwise.
            for tt in tl.static_range(TB):
                wv = tl.load(w_ptr + (t0 + tt) * s_wt + d * s_wd, mask=dm & ((d * 0 + t0 + tt) < T), other=0.0)
                part = tl.sum(xc * wv.to(tl.float32)[None, :], axis=1)
                dots += tl.where(tcol[None, :] == tt, part[:, None], 0.0)
        sigma = tl.sqrt(tl.sum(var_acc, axis=1) / Dv + ln_eps)
        tmask = (t0 + tcol) < T
        bias = tl.load(b_ptr + (t0 + tcol) * s_bt, mask=tmask, other=0.0).to(tl.float32)
        return dots / sigma[:, None] + bias[None, :]

    @triton.jit
    def _token_block(pid, NSPLIT, M, BLOCK_M: tl.constexpr):
        """Program pid of a (B * NSPLIT,) grid: its row (int32 and int64) and its BLOCK_M
        token offsets / mask, tokens [s * BLOCK_M, (s + 1) * BLOCK_M) with s = pid % NSPLIT."""
        row = pid // NSPLIT
        offs_m = (pid % NSPLIT) * BLOCK_M + tl.arange(0, BLOCK_M)
        return row, row.to(tl.int64), offs_m, offs_m < M

    @triton.jit
    def _last_to_arrive(cnt_ptr, row, NSPLIT):
        """Publish this program's scratch stores and tell whether it is its row's last.

        A barrier (every thread's stores issued), then one acq_rel atomic on the row's
        counter at GPU scope: the program that sees NSPLIT - 1 reads every other program's
        partials. It must reset the counter to 0 when done (the counters are a cached
        buffer, zero before every launch)."""
        tl.debug_barrier()
        return tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel") == NSPLIT - 1

    @triton.jit
    def _sim_partials(h_row, s_hm, s_hd, Dv, w_row, s_wt, s_wd, b_row, s_bt, T, t0, offs_m, mask_m, ln_eps,
                      out_row, M, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TB: tl.constexpr,
                      UNROLL: tl.constexpr):
        """_sim_tile of texts t0 .. t0+TB-1, stored into the row's [T, M] fp32 similarities."""
        s = _sim_tile(h_row, s_hm, s_hd, Dv, w_row, s_wt, s_wd, b_row, s_bt, T, t0,
                      offs_m, mask_m, ln_eps, BLOCK_M, BLOCK_D, TB, UNROLL)
        tcol = t0 + tl.arange(0, TB)
        tl.store(out_row + tcol[None, :] * M + offs_m[:, None], s, mask=mask_m[:, None] & (tcol < T)[None, :])

    @triton.jit
    def _cls_tile(q_ptr, s_qd, k_ptr, s_km, s_kd, v_ptr, s_vm, s_vd, D, scale,
                  offs_m, mask_m, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr):
        """Logits scale * q_hat . k_hat_j and ||v_j|| of BLOCK_M tokens (fp32).

        ||q||^2 is accumulated in the same loop as q . k_j (q is loaded there anyway), so a
        program makes one pass over D. Normalisation as F.normalize: x / max(||x||, 1e-12),
        applied to the dot product.
        """
        offs_d = tl.arange(0, BLOCK_D)
        krows = offs_m.to(tl.int64) * s_km
        vrows = offs_m.to(tl.int64) * s_vm
        qq = tl.zeros([BLOCK_D], dtype=tl.float32)
        qk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        kk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        vv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for d0 in tl.range(0, D, BLOCK_D, loop_unroll_factor=UNROLL):
            d = d0 + offs_d
            dm = d < D
            m2 = mask_m[:, None] & dm[None, :]
            q = tl.load(q_ptr + d * s_qd, mask=dm, other=0.0).to(tl.float32)
            k = tl.load(k_ptr + krows[:, None] + d[None, :] * s_kd, mask=m2, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + vrows[:, None] + d[None, :] * s_vd, mask=m2, other=0.0).to(tl.float32)
            qq += q * q
            qk += k * q[None, :]
            kk += k * k
            vv += v * v
        q_norm = tl.sqrt(tl.sum(qq, axis=0))
        k_norm = tl.sqrt(tl.sum(kk, axis=1))
        logit = scale * tl.sum(qk, axis=1) / (tl.maximum(q_norm, 1e-12) * tl.maximum(k_norm, 1e-12))
        return logit, tl.sqrt(tl.sum(vv, axis=1))

    @triton.jit
    def _cls_partials(q_row, s_qd, k_row, s_km, s_kd, v_row, s_vm, s_vd, D, scale, l_row, vn_row,
                      offs_m, mask_m, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr):
        """A program's share of a row's [CLS] partials: logits and ||v_j|| to fp32 scratch."""
        logit, vnorm = _cls_tile(q_row, s_qd, k_row, s_km, s_kd, v_row, s_vm, s_vd, D, scale,
                                 offs_m, mask_m, BLOCK_M, BLOCK_D, UNROLL)
        tl.store(l_row + offs_m, logit, mask=mask_m)
        tl.store(vn_row + offs_m, vnorm, mask=mask_m)

    @triton.jit
    def _nan_to_inf(x):
        """The softmax max with NaN mapped to +inf: a NaN logit then makes every
        exp(l - max) / sum NaN, as torch.softmax does (and as a +inf logit does), with one
        reduction instead of a max and a NaN count."""
        return tl.where(x != x, float("inf"), x)

    @triton.jit
    def _row_softmax_stats(l_ptr, M, BLOCK_F: tl.constexpr):
        """Max and sum of exp(l - max) over one row of M fp32 logits in scratch, chunk by chunk
        in a fixed order (deterministic). A NaN (or +inf) anywhere makes the whole row of
        the softmax NaN, as torch.softmax."""
        ar = tl.arange(0, BLOCK_F)
        mx = tl.full([BLOCK_F], float("-inf"), tl.float32)
        for c0 in range(0, M, BLOCK_F):
            offs = c0 + ar
            lg = tl.load(l_ptr + offs, mask=offs < M, other=float("-inf"), cache_modifier=".cg")
            mx = tl.maximum(mx, _nan_to_inf(lg))
        m = tl.max(mx, axis=0)
        se = tl.zeros([BLOCK_F], dtype=tl.float32)
        for c0 in range(0, M, BLOCK_F):
            offs = c0 + ar
            lg = tl.load(l_ptr + offs, mask=offs < M, other=0.0, cache_modifier=".cg")
            se += tl.where(offs < M, tl.exp(lg - m), 0.0)
        return m, tl.sum(se, axis=0)
