"""Shared pieces of the Triton kernels: the triton guard, argument helpers and the
@triton.jit building blocks used by more than one kernel.

Everything here is private; the public launchers live one per file
(text_similarity.py, cls_contribution.py, fused_select.py).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

# The library's argument checks (shapes, dtypes, devices; never tensor data).
from litelvlm_kernels import _validate as V  # noqa: E402

try:  # triton is optional: the package must import without it (CPU-only installs, macOS).
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    _HAS_TRITON = False


def has_triton() -> bool:
    """True when triton can be imported (it says nothing about a GPU)."""
    return _HAS_TRITON


def interpret_mode() -> bool:
    """True when triton runs its CPU interpreter (TRITON_INTERPRET=1, read at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(*tensors):
    """Launchers run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all tensors must be on one device, got {dev} and {t.device}")
    if dev.type == "cpu" and not interpret_mode():
        raise ValueError(
            "the Triton launchers need CUDA tensors (CPU tensors only under TRITON_INTERPRET=1); "
            "use the torch.ops.litelvlm ops for the CPU fast path"
        )
    if not _HAS_TRITON:
        raise RuntimeError("triton is not installed")


def default_scale(D: int) -> float:
    # The release's choice: 1/sqrt(D) with D the full q/k width (DESIGN.md section 1).
    return 1.0 / math.sqrt(D) if D > 0 else 1.0


def text_strides(w: torch.Tensor, b: torch.Tensor, B: int):
    """Strides of the folded text (w [Bt, T, Dv], b [Bt, T]); Bt == 1 broadcasts over B rows
    by giving the batch dimension stride 0."""
    Bt = w.shape[0]
    if Bt not in (1, B) or b.shape[0] != Bt:
        raise ValueError(f"w/b batch must be 1 or B={B}, got w {tuple(w.shape)}, b {tuple(b.shape)}")
    swb = 0 if Bt == 1 else w.stride(0)
    sbb = 0 if Bt == 1 else b.stride(0)
    return swb, w.stride(1), w.stride(2), sbb, b.stride(1)


def radix_bits(block_f: int) -> int:
    """Bits per counting step of the k-th key search: 4 (8 steps of [BLOCK_F, 16] compares)
    while that stays at 16 * BLOCK_F / threads <= 128 compares per thread, else 2."""
    return 4 if block_f <= 1024 else 2


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())



def device_guard(device: torch.device):
    """Launch on the tensors' GPU (not the current one); a no-op context on the CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def num_warps(blk) -> int:
    # Untuned (no GPU yet): 8 warps for the wider tiles keeps ptxas under 255 registers
    # per thread without spills (tests/triton/aot_compile.py prints the counts).
    return 8 if blk["BLOCK_M"] >= 32 else 4

def check_select_args(T, M, num_retain, min_votes, k_per_text, order):
    """Shape-only argument checks of DESIGN.md section 2 (no device data is read): the
    library's own validator, so that every entry point raises the same errors."""
    V.check_select_args(T, M, num_retain, min_votes, k_per_text, order)


if _HAS_TRITON:

    # Sentinel key of tokens that must not be selected: one above the largest real key
    # (real keys are 32-bit orderable patterns held in int64, so in [0, 2**32)).
    _SENTINEL = tl.constexpr(1 << 32)

    @triton.jit
    def _orderable(x):
        """Monotone map of fp32 to int64 in [0, 2**32): x < y  <=>  key(x) < key(y).

        -0.0 is first made +0.0 (they compare equal), NaNs are handled by the callers.
        Work in int64 so that no unsigned arithmetic (or logical shift) is needed.
        """
        x = tl.where(x == 0.0, 0.0, x)
        u = x.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        neg = u >= 0x80000000
        return tl.where(neg, 0xFFFFFFFF - u, u + 0x80000000)

    @triton.jit
    def _ascending_key(x):
        """Bottom-k key: -inf < finite < +inf < NaN (every NaN the same key: ties by index)."""
        return tl.where(x != x, 0xFFFFFFFF, _orderable(x))

    @triton.jit
    def _descending_key(x):
        """Recovery key (smallest = taken first): +inf > finite > -inf > NaN, NaNs last."""
        return tl.where(x != x, 0xFFFFFFFF, 0xFFFFFFFF - _orderable(x))

    @triton.jit
    def _sim_tile(h_ptr, s_hm, s_hd, Dv, w_ptr, s_wt, s_wd, b_ptr, s_bt, T, t0,
                  offs_m, mask_m, ln_eps,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TB: tl.constexpr):
        """Folded [EOS] similarity of BLOCK_M tokens against texts t0 .. t0+TB-1.

        h_ptr points at the row's first token; w_ptr/b_ptr at the row's text batch.
        s_tj = ((x_j - mu_j) . w_t) / sigma_j + b_t   (DESIGN.md section 3), all in fp32 and
        in the centred form: two passes over Dv (mean, then centred dot + variance) so that
        large outlier channels do not cancel catastrophically as in x.w - mu*sum(w).
        Returns [BLOCK_M, TB] fp32 (columns of texts >= T hold b-less garbage-free zeros + 0).
        """
        offs_d = tl.arange(0, BLOCK_D)
        rows = offs_m.to(tl.int64) * s_hm
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for d0 in range(0, Dv, BLOCK_D):
            d = d0 + offs_d
            m2 = mask_m[:, None] & (d < Dv)[None, :]
            x = tl.load(h_ptr + rows[:, None] + d[None, :] * s_hd, mask=m2, other=0.0).to(tl.float32)
            acc += x
        mu = tl.sum(acc, axis=1) / Dv
        var_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        dots = tl.zeros([BLOCK_M, TB], dtype=tl.float32)
        tcol = tl.arange(0, TB)
        for d0 in range(0, Dv, BLOCK_D):
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
    def _q_norm(q_ptr, s_qd, D, BLOCK_D: tl.constexpr):
        """||q|| of one [CLS] query row (fp32)."""
        offs_d = tl.arange(0, BLOCK_D)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + offs_d
            q = tl.load(q_ptr + d * s_qd, mask=d < D, other=0.0).to(tl.float32)
            acc += q * q
        return tl.sqrt(tl.sum(acc, axis=0))

    @triton.jit
    def _cls_tile(q_ptr, s_qd, k_ptr, s_km, s_kd, v_ptr, s_vm, s_vd, D, q_norm, scale,
                  offs_m, mask_m, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
        """Logits scale * q_hat . k_hat_j and ||v_j|| of BLOCK_M tokens (fp32).

        Normalisation as F.normalize: x / max(||x||, 1e-12), applied here to the dot product.
        """
        offs_d = tl.arange(0, BLOCK_D)
        krows = offs_m.to(tl.int64) * s_km
        vrows = offs_m.to(tl.int64) * s_vm
        qk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        kk = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        vv = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + offs_d
            dm = d < D
            m2 = mask_m[:, None] & dm[None, :]
            q = tl.load(q_ptr + d * s_qd, mask=dm, other=0.0).to(tl.float32)
            k = tl.load(k_ptr + krows[:, None] + d[None, :] * s_kd, mask=m2, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + vrows[:, None] + d[None, :] * s_vd, mask=m2, other=0.0).to(tl.float32)
            qk += k * q[None, :]
            kk += k * k
            vv += v * v
        k_norm = tl.sqrt(tl.sum(kk, axis=1))
        logit = scale * tl.sum(qk, axis=1) / (tl.maximum(q_norm, 1e-12) * tl.maximum(k_norm, 1e-12))
        return logit, tl.sqrt(tl.sum(vv, axis=1))

    @triton.jit
    def _cls_partials(q_row, s_qd, k_row, s_km, s_kd, v_row, s_vm, s_vd, D, scale, l_row, vn_row,
                      offs_m, mask_m, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
        """A program's share of a row's [CLS] partials: logits and ||v_j|| to fp32 scratch."""
        qn = _q_norm(q_row, s_qd, D, BLOCK_D)
        logit, vnorm = _cls_tile(q_row, s_qd, k_row, s_km, s_kd, v_row, s_vm, s_vd, D, qn, scale,
                                 offs_m, mask_m, BLOCK_M, BLOCK_D)
        tl.store(l_row + offs_m, logit, mask=mask_m)
        tl.store(vn_row + offs_m, vnorm, mask=mask_m)

    @triton.jit
    def _row_softmax_stats(l_ptr, M, BLOCK_F: tl.constexpr):
        """Max and sum of exp(l - max) over one row of M fp32 logits in scratch, chunk by chunk
        in a fixed order (deterministic). A NaN anywhere makes the max NaN (as torch.softmax:
        the whole row becomes NaN)."""
        ar = tl.arange(0, BLOCK_F)
        mx = tl.full([BLOCK_F], float("-inf"), tl.float32)
        nan = tl.zeros([BLOCK_F], dtype=tl.int32)
        for c0 in range(0, M, BLOCK_F):
            offs = c0 + ar
            lg = tl.load(l_ptr + offs, mask=offs < M, other=float("-inf"), cache_modifier=".cg")
            nan += (lg != lg).to(tl.int32)
            mx = tl.maximum(mx, tl.where(lg == lg, lg, float("-inf")))
        m = tl.max(mx, axis=0)
        m = tl.where(tl.sum(nan, axis=0) > 0, float("nan"), m)
        se = tl.zeros([BLOCK_F], dtype=tl.float32)
        for c0 in range(0, M, BLOCK_F):
            offs = c0 + ar
            lg = tl.load(l_ptr + offs, mask=offs < M, other=0.0, cache_modifier=".cg")
            se += tl.where(offs < M, tl.exp(lg - m), 0.0)
        return m, tl.sum(se, axis=0)

    @triton.jit
    def _kth_reg(keys, idx, k, BITS: tl.constexpr):
        """_kth_smallest of keys held on registers (one block = the whole row; idx = the
        tokens' indices, ascending)."""
        cols = tl.arange(0, 1 << BITS).to(tl.int64)
        V = tl.zeros([], dtype=tl.int64)
        one = tl.full([], 1, tl.int64)
        for i in range(32 // BITS):
            step = one << (32 - BITS * (i + 1))
            cand = V + cols * step
            cnt = tl.sum((keys[:, None] < cand[None, :]).to(tl.int32), axis=0)
            V = V + tl.sum(((cnt < k) & (cols > 0)).to(tl.int64), axis=0) * step
        need = k - tl.sum((keys < V).to(tl.int32), axis=0)
        eq = keys == V
        cum = tl.cumsum(eq.to(tl.int32), axis=0)
        I = tl.max(tl.where(eq & (cum <= need), idx, -1), axis=0)
        return V, I

    @triton.jit
    def _kth_smallest(k_ptr, M, k, BLOCK_F: tl.constexpr, SINGLE: tl.constexpr, BITS: tl.constexpr):
        """Threshold (V, I) of the k smallest (key, index) pairs of one row of int64 keys in
        scratch (keys in [0, 2**32], 2**32 = not eligible): token j is among them iff
        key_j < V or (key_j == V and j <= I). k = 0 selects nothing (V = 0, I = -1).

        V = the k-th smallest key = the largest V with count(key < V) < k, built from the
        top bits down, BITS bits per step: each step counts the keys below the 2**BITS
        candidates V + c * 2**shift at once ([BLOCK_F, 2**BITS] compares, one reduction)
        and keeps the largest c whose count is still < k (counts grow with c). 32 / BITS
        sequential reductions (8 at BITS = 4) instead of 32 for a one-bit search. Ties at V
        go to the lowest indices (cumsum in index order).
        SINGLE (M <= BLOCK_F): the row is loaded once and every count runs on registers;
        otherwise every count streams the row in chunks of BLOCK_F.
        """
        ar = tl.arange(0, BLOCK_F)
        cols = tl.arange(0, 1 << BITS).to(tl.int64)
        V = tl.zeros([], dtype=tl.int64)
        one = tl.full([], 1, tl.int64)
        if SINGLE:
            keys = tl.load(k_ptr + ar, mask=ar < M, other=_SENTINEL)
            V, I = _kth_reg(keys, ar, k, BITS)
        else:
            for i in range(32 // BITS):
                step = one << (32 - BITS * (i + 1))
                cand = V + cols * step
                cnt = tl.zeros([1 << BITS], dtype=tl.int32)
                for c0 in range(0, M, BLOCK_F):
                    offs = c0 + ar
                    keys = tl.load(k_ptr + offs, mask=offs < M, other=_SENTINEL)
                    cnt += tl.sum((keys[:, None] < cand[None, :]).to(tl.int32), axis=0)
                V = V + tl.sum(((cnt < k) & (cols > 0)).to(tl.int64), axis=0) * step
            lt = tl.zeros([BLOCK_F], dtype=tl.int32)
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                keys = tl.load(k_ptr + offs, mask=offs < M, other=_SENTINEL)
                lt += (keys < V).to(tl.int32)
            need = k - tl.sum(lt, axis=0)
            run = tl.zeros([], dtype=tl.int32)
            I = tl.full([], -1, tl.int32)
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                keys = tl.load(k_ptr + offs, mask=offs < M, other=_SENTINEL)
                eq = keys == V
                cum = run + tl.cumsum(eq.to(tl.int32), axis=0)
                I = tl.maximum(I, tl.max(tl.where(eq & (cum <= need), offs, -1), axis=0))
                run += tl.sum(eq.to(tl.int32), axis=0)
        return V, I
