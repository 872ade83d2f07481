"""text_similarity: folded [EOS] similarity s [B, T, M] of every visual token to every text.

s_tj = ((x_j - mu_j) . w_t) / sigma_j + b_t with (w, b) = fold_text(...) (docs/design.md
section 3): one pass over each token's Dv values per group of texts instead of projecting
every token.
"""

from __future__ import annotations

import torch

from . import _common as C

if C.has_triton():
    import triton
    import triton.language as tl

    from ._tiles import _sim_partials, _token_block

    @triton.jit(do_not_specialize=["M", "T", "NSPLIT", "NTG", "s_bb"])
    def _text_similarity_kernel(
        # pointers
        h_ptr, w_ptr, b_ptr, out_ptr,
        # sizes
        M, Dv, T, ln_eps, NSPLIT, NTG,
        # strides
        s_hb, s_hm, s_hd, s_wb, s_wt, s_wd, s_bb, s_bt,
        # meta-parameters
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TB: tl.constexpr, UNROLL: tl.constexpr,
    ):
        """Grid: (B * NSPLIT * NTG,), NSPLIT = cdiv(M, BLOCK_M), NTG = cdiv(T, TB).
        Shapes: hidden [B, M, Dv] (any float dtype, any strides), w [Bt, T, Dv], b [Bt, T]
        (Bt = 1 broadcast through stride 0), out [B, T, M] fp32 contiguous.
        One program: BLOCK_M tokens x TB texts; it reads its tokens twice over Dv (mean,
        then centred dot + variance; the second read mostly hits L1/L2) and writes a
        [TB, BLOCK_M] tile.
        """
        pid = tl.program_id(0)
        # Programs pid // NTG form the same (B * NSPLIT,) token grid as the other kernels'.
        _, r64, offs_m, mask_m = _token_block(pid // NTG, NSPLIT, M, BLOCK_M)
        t0 = (pid % NTG) * TB
        _sim_partials(h_ptr + r64 * s_hb, s_hm, s_hd, Dv, w_ptr + r64 * s_wb, s_wt, s_wd, b_ptr + r64 * s_bb, s_bt,
                      T, t0, offs_m, mask_m, ln_eps, out_ptr + r64 * T * M, M, BLOCK_M, BLOCK_D, TB, UNROLL)


def pick_blocks(B: int, M: int, T: int, Dv: int, force=None) -> dict:
    """Meta-parameters of _text_similarity_kernel (rules in _common.py)."""
    blocks = dict(BLOCK_M=C.token_tile(B, M), BLOCK_D=C.feature_tile(Dv), TB=C.text_tile(T))
    blocks.update(force or {})
    blocks.setdefault("UNROLL", C.feature_unroll(blocks["BLOCK_M"], blocks["TB"]))  # of the final tiles
    return blocks


def text_similarity(hidden: torch.Tensor, w: torch.Tensor, b: torch.Tensor, ln_eps: float, *,
                    _blocks=None) -> torch.Tensor:
    """s [B, T, M] fp32 (arguments assumed valid: the op layer checks them).

    Parameters
    ----------
    hidden, w, b, ln_eps
        As :func:`fused_select`: hidden [B, M, Dv] (any float dtype, any strides), the
        folded text w [Bt, T, Dv] / b [Bt, T] with Bt in {1, B}, the post-layernorm epsilon.

    Returns
    -------
    torch.Tensor
        s [B, T, M] fp32.

    Examples
    --------
    >>> s = text_similarity(h, w, b, 1e-5)  # doctest: +SKIP
    """
    B, M, Dv = hidden.shape
    T = w.shape[1]
    out = torch.empty((B, T, M), dtype=torch.float32, device=hidden.device)
    if out.numel() == 0:
        return out
    swb, swt, swd, sbb, sbt = C.text_strides(w, b, B)
    blk = pick_blocks(B, M, T, Dv, _blocks)
    nsplit = C.cdiv(M, blk["BLOCK_M"])
    ntg = C.cdiv(T, blk["TB"])
    with C.device_guard(hidden.device):
        _text_similarity_kernel[(B * nsplit * ntg,)](
            hidden, w, b, out,
            M, Dv, T, float(ln_eps), nsplit, ntg,
            hidden.stride(0), hidden.stride(1), hidden.stride(2), swb, swt, swd, sbb, sbt,
            num_warps=C.NUM_WARPS, **blk,
        )
    return out
