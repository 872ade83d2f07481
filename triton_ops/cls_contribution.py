"""cls_contribution: c_j = || a_j v_j || with a = softmax_j(scale * q_hat . k_hat_j) over the
M patch keys (DESIGN.md section 1), computed as a_j * ||v_j|| (section 3)."""

from __future__ import annotations

import torch

from ._common import _HAS_TRITON, V, check_device, default_scale, interpret_mode, next_pow2, device_guard, num_warps

if _HAS_TRITON:
    import triton
    import triton.language as tl

    from ._common import _cls_partials, _row_softmax_stats

    @triton.jit
    def _cls_contribution_kernel(
        # pointers
        q_ptr, k_ptr, v_ptr, out_ptr, l_ws, vn_ws, cnt_ptr,
        # sizes
        M, D, scale, NSPLIT,
        # strides
        s_qb, s_qd, s_kb, s_km, s_kd, s_vb, s_vm, s_vd,
        # meta-parameters
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_F: tl.constexpr,
    ):
        """Grid: (B * NSPLIT,), NSPLIT = cdiv(M, BLOCK_M).
        Shapes: q [B, D], keys / values [B, M, D] (any float dtype / strides), out [B, M] fp32;
        workspace logits, ||v|| [B, M] fp32 and counters [B] int32 (zero on entry and exit).
        One program: logits and ||v|| of BLOCK_M tokens to scratch, then an acq_rel atomic on
        the row counter; the row's last program computes the softmax max / sum over the
        row in a fixed chunk order (deterministic, no float atomics) and writes c.
        BLOCK_M = 16 / 32 tokens x BLOCK_D = 128 as in fused_select; BLOCK_F = 1024-token
        chunks for the row pass (4 warps, 8 values per thread).
        """
        pid = tl.program_id(0)
        row = pid // NSPLIT
        split = pid % NSPLIT
        r64 = row.to(tl.int64)
        offs_m = split * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        _cls_partials(q_ptr + r64 * s_qb, s_qd, k_ptr + r64 * s_kb, s_km, s_kd, v_ptr + r64 * s_vb, s_vm, s_vd,
                      D, scale, l_ws + r64 * M, vn_ws + r64 * M, offs_m, mask_m, BLOCK_M, BLOCK_D)
        tl.debug_barrier()
        old = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel")
        if old == NSPLIT - 1:
            tl.debug_barrier()
            mx, se = _row_softmax_stats(l_ws + r64 * M, M, BLOCK_F)
            ar = tl.arange(0, BLOCK_F)
            for c0 in range(0, M, BLOCK_F):
                offs = c0 + ar
                valid = offs < M
                lg = tl.load(l_ws + r64 * M + offs, mask=valid, other=0.0, cache_modifier=".cg")
                vn = tl.load(vn_ws + r64 * M + offs, mask=valid, other=0.0, cache_modifier=".cg")
                tl.store(out_ptr + r64 * M + offs, tl.exp(lg - mx) / se * vn, mask=valid)
            tl.atomic_xchg(cnt_ptr + row, 0)


# Test / tuning hook: override block choices, e.g. {"BLOCK_M": 16, "BLOCK_F": 32}.
_FORCE_BLOCKS: dict = {}


def cls_contribution(q_cls: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale=None) -> torch.Tensor:
    """c [B, M] fp32 from q_cls [B, D], keys / values [B, M, D]; scale defaults to 1/sqrt(D)."""
    V.check_contribution_inputs(q_cls, keys, values, scale)
    B, M, D = keys.shape
    out = torch.empty((B, M), dtype=torch.float32, device=keys.device)
    if out.numel() == 0:
        return out
    check_device(q_cls, keys, values)
    if scale is None:
        scale = default_scale(D)
    if interpret_mode():  # ~0.1-0.3 ms per interpreted op whatever its size: few, large tiles
        blk = dict(BLOCK_M=64, BLOCK_D=min(1024, max(16, next_pow2(D))))
    else:
        blk = dict(BLOCK_M=16 if B * triton.cdiv(M, 32) < 264 else 32, BLOCK_D=min(128, max(16, next_pow2(D))))
    blk["BLOCK_F"] = min(1024, max(16, next_pow2(M)))
    blk.update(_FORCE_BLOCKS)
    nsplit = triton.cdiv(M, blk["BLOCK_M"])
    l_ws = torch.empty((B, M), dtype=torch.float32, device=keys.device)
    vn_ws = torch.empty((B, M), dtype=torch.float32, device=keys.device)
    counters = torch.zeros((B,), dtype=torch.int32, device=keys.device)
    with device_guard(keys.device):
        _cls_contribution_kernel[(B * nsplit,)](
            q_cls, keys, values, out, l_ws, vn_ws, counters,
            M, D, float(scale), nsplit,
            q_cls.stride(0), q_cls.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
            values.stride(0), values.stride(1), values.stride(2),
            num_warps=num_warps(blk), **blk,
        )
    return out

