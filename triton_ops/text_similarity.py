"""text_similarity: folded [EOS] similarity s [B, T, M] of every visual token to every text.

s_tj = ((x_j - mu_j) . w_t) / sigma_j + b_t with (w, b) = fold_text(...) (DESIGN.md section 3):
one pass over each token's Dv values per group of texts instead of projecting every token.
"""

from __future__ import annotations

import torch

from ._common import _HAS_TRITON, V, check_device, interpret_mode, next_pow2, text_strides, device_guard, num_warps

if _HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import _sim_tile

    @triton.jit
    def _text_similarity_kernel(
        # pointers
        h_ptr, w_ptr, b_ptr, out_ptr,
        # sizes
        M, Dv, T, ln_eps, NSPLIT, NTG,
        # strides
        s_hb, s_hm, s_hd, s_wb, s_wt, s_wd, s_bb, s_bt,
        # meta-parameters
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TB: tl.constexpr,
    ):
        """Grid: (B * NSPLIT * NTG,), NSPLIT = cdiv(M, BLOCK_M), NTG = cdiv(T, TB).
        Shapes: hidden [B, M, Dv] (any float dtype, any strides), w [Bt, T, Dv], b [Bt, T]
        (Bt = 1 broadcast through stride 0), out [B, T, M] fp32 contiguous.
        One program: BLOCK_M tokens x TB texts; it reads its tokens twice over Dv (mean,
        then centred dot + variance; the second read mostly hits L1/L2) and writes a
        [TB, BLOCK_M] tile. BLOCK_M = 32, BLOCK_D = 128 (4 warps): 8 KB fp16 per load;
        TB = next_pow2(T) <= 16 texts per program so x is streamed once for T <= 16.
        """
        pid = tl.program_id(0)
        tg = pid % NTG
        rest = pid // NTG
        split = rest % NSPLIT
        row = (rest // NSPLIT).to(tl.int64)
        t0 = tg * TB
        offs_m = split * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        s = _sim_tile(h_ptr + row * s_hb, s_hm, s_hd, Dv,
                      w_ptr + row * s_wb, s_wt, s_wd, b_ptr + row * s_bb, s_bt, T, t0,
                      offs_m, mask_m, ln_eps, BLOCK_M, BLOCK_D, TB)
        tcol = t0 + tl.arange(0, TB)
        dst = out_ptr + row * T * M + tcol[None, :] * M + offs_m[:, None]
        tl.store(dst, s, mask=mask_m[:, None] & (tcol < T)[None, :])


# Test / tuning hook: override block choices, e.g. {"BLOCK_M": 16, "TB": 2}.
_FORCE_BLOCKS: dict = {}


def text_similarity(hidden: torch.Tensor, w: torch.Tensor, b: torch.Tensor, ln_eps: float) -> torch.Tensor:
    """s [B, T, M] fp32 from hidden [B, M, Dv] and folded text w [Bt, T, Dv], b [Bt, T]."""
    V.check_similarity_inputs(hidden, w, b, ln_eps)
    B, M, Dv = hidden.shape
    T = w.shape[1]
    out = torch.empty((B, T, M), dtype=torch.float32, device=hidden.device)
    if out.numel() == 0:
        return out
    check_device(hidden, w, b)
    swb, swt, swd, sbb, sbt = text_strides(w, b, B)
    if interpret_mode():  # ~0.1-0.3 ms per interpreted op whatever its size: few, large tiles
        blk = dict(BLOCK_M=64, BLOCK_D=min(1024, max(16, next_pow2(Dv))))
    else:
        blk = dict(BLOCK_M=32, BLOCK_D=min(128, max(16, next_pow2(Dv))))
    blk["TB"] = min(16, next_pow2(T))
    blk.update(_FORCE_BLOCKS)
    nsplit = triton.cdiv(M, blk["BLOCK_M"])
    ntg = triton.cdiv(T, blk["TB"])
    with device_guard(hidden.device):
        _text_similarity_kernel[(B * nsplit * ntg,)](
            hidden, w, b, out,
            M, Dv, T, float(ln_eps), nsplit, ntg,
            hidden.stride(0), hidden.stride(1), hidden.stride(2), swb, swt, swd, sbb, sbt,
            num_warps=num_warps(blk), **blk,
        )
    return out

