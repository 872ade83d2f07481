"""cls_contribution: c_j = || a_j v_j || with a = softmax_j(scale * q_hat . k_hat_j) over the
M patch keys (docs/design.md section 1), computed as a_j * ||v_j|| (section 3)."""

from __future__ import annotations

import torch

from . import _common as C
from ._workspace import row_counters, scratch

if C.has_triton():
    import triton
    import triton.language as tl

    from ._tiles import _cls_partials, _last_to_arrive, _row_softmax_stats, _token_block

    @triton.jit(do_not_specialize=["M", "NSPLIT"])
    def _cls_contribution_kernel(
        # pointers
        q_ptr, k_ptr, v_ptr, out_ptr, l_ws, vn_ws, cnt_ptr,
        # sizes
        M, D, scale, NSPLIT,
        # strides
        s_qb, s_qd, s_kb, s_km, s_kd, s_vb, s_vm, s_vd,
        # meta-parameters
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr, BLOCK_F: tl.constexpr,
    ):
        """Grid: (B * NSPLIT,), NSPLIT = cdiv(M, BLOCK_M).
        Shapes: q [B, D], keys / values [B, M, D] (any float dtype / strides), out [B, M] fp32;
        workspace logits, ||v|| [B, M] fp32 and counters [B] int32 (zero on entry and exit).
        One program: logits and ||v|| of BLOCK_M tokens to scratch, then an acq_rel atomic on
        the row counter; the row's last program computes the softmax max / sum over the
        row in a fixed chunk order (deterministic, no float atomics) and writes c.
        """
        row, r64, offs_m, mask_m = _token_block(tl.program_id(0), NSPLIT, M, BLOCK_M)
        _cls_partials(q_ptr + r64 * s_qb, s_qd, k_ptr + r64 * s_kb, s_km, s_kd, v_ptr + r64 * s_vb, s_vm, s_vd,
                      D, scale, l_ws + r64 * M, vn_ws + r64 * M, offs_m, mask_m, BLOCK_M, BLOCK_D, UNROLL)
        if _last_to_arrive(cnt_ptr, row, NSPLIT):
            tl.debug_barrier()
            mx, se = _row_softmax_stats(l_ws + r64 * M, M, BLOCK_F)
            ar = tl.arange(0, BLOCK_F)
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                lg = tl.load(l_ws + r64 * M + offs, mask=valid, other=0.0, cache_modifier=".cg")
                vn = tl.load(vn_ws + r64 * M + offs, mask=valid, other=0.0, cache_modifier=".cg")
                tl.store(out_ptr + r64 * M + offs, tl.exp(lg - mx) / se * vn, mask=valid)
            tl.atomic_xchg(cnt_ptr + row, 0)  # zero again for the next launch (cached counters)


def pick_blocks(B: int, M: int, D: int, force=None) -> dict:
    """Meta-parameters of _cls_contribution_kernel; BLOCK_F = 1024-token chunks for the
    row pass (4 values per thread at 8 warps)."""
    blocks = dict(BLOCK_M=C.token_tile(B, M), BLOCK_D=C.feature_tile(D), BLOCK_F=min(1024, C.finaliser_block(M)))
    blocks.update(force or {})
    blocks.setdefault("UNROLL", C.feature_unroll(blocks["BLOCK_M"], 1))  # of the final tile
    return blocks


def cls_contribution(q_cls: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale=None, *,
                     _blocks=None) -> torch.Tensor:
    """c [B, M] fp32 (arguments assumed valid: the op layer checks them).

    Parameters
    ----------
    q_cls : torch.Tensor
        [B, D] [CLS] query.
    keys, values : torch.Tensor
        [B, M, D] patch keys and values.
    scale : float, optional
        Logit scale; None means 1/sqrt(D).

    Returns
    -------
    torch.Tensor
        c [B, M] fp32.

    Examples
    --------
    >>> c = cls_contribution(q, k, v)  # doctest: +SKIP
    """
    B, M, D = keys.shape
    out = torch.empty((B, M), dtype=torch.float32, device=keys.device)
    if out.numel() == 0:
        return out
    blk = pick_blocks(B, M, D, _blocks)
    nsplit = C.cdiv(M, blk["BLOCK_M"])
    l_ws, vn_ws = scratch(keys.device, [((B, M), torch.float32), ((B, M), torch.float32)])
    counters = row_counters(keys.device, B)
    with C.device_guard(keys.device):
        _cls_contribution_kernel[(B * nsplit,)](
            q_cls, keys, values, out, l_ws, vn_ws, counters,
            M, D, float(C.default_scale(D) if scale is None else scale), nsplit,
            q_cls.stride(0), q_cls.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
            values.stride(0), values.stride(1), values.stride(2),
            num_warps=C.NUM_WARPS, **blk,
        )
    return out
