"""select_tokens: the selection of DESIGN.md section 2 from given scores s [B, T, M] and
contributions c [B, M], with the same row finaliser as fused_select (so tests can check
the selection rules on exact, hand-made scores: ties, -0.0, NaN, +-inf)."""

from __future__ import annotations

import torch

from ._common import _HAS_TRITON, V, check_device, check_select_args, next_pow2, radix_bits, device_guard

if _HAS_TRITON:
    import triton
    import triton.language as tl

    from .fused_select import _finalise_row

    @triton.jit
    def _select_tokens_kernel(
        # pointers
        s_ptr, c_ptr, nt_ptr, idx_ptr, fs_ptr, ns_ptr, votes_ws, keys_ws, list_ws,
        # sizes
        M, T, R, k_per_text, min_votes, s_nt,
        # meta-parameters
        HAS_NT: tl.constexpr, OFFICIAL: tl.constexpr,
        BLOCK_F: tl.constexpr, SINGLE: tl.constexpr, RB: tl.constexpr, BITS: tl.constexpr,
    ):
        """Grid: (B,). Shapes: s [B, T, M], c [B, M] fp32 contiguous; outputs as fused_select.
        One program: one row, the whole of fused_select's finaliser (bottom-k per text by
        threshold search, votes, recovery, order) with c read directly. Block sizes as
        fused_select's finaliser: BLOCK_F = next_pow2(M) up to 4096 (row in registers for
        the counting steps), RB = 64.
        """
        row = tl.program_id(0)
        _finalise_row(row, s_ptr, c_ptr, c_ptr, votes_ws, keys_ws, list_ws,
                      nt_ptr, idx_ptr, fs_ptr, ns_ptr,
                      M, T, R, k_per_text, min_votes, s_nt,
                      HAS_NT, OFFICIAL, BLOCK_F, SINGLE, RB, BITS, True)


# Test / tuning hook, e.g. {"BLOCK_F": 32} to force the chunked (not SINGLE) path.
_FORCE_BLOCKS: dict = {}


def select_tokens(s, c, num_retain, min_votes=1, k_per_text=0, order="official", num_texts=None):
    """(indices [B, R'] int64, num_similarity [B] int32, from_similarity [B, R'] bool) from
    s [B, T, M] and c [B, M] (any float dtype; copied to contiguous fp32 if they are not)."""
    V.check_scores(s, c, num_texts)
    B, T, M = s.shape
    check_select_args(T, M, num_retain, min_votes, k_per_text, order)
    R = min(int(num_retain), M)
    dev = s.device
    indices = torch.empty((B, R), dtype=torch.int64, device=dev)
    if B == 0 or M == 0:
        return (indices, torch.zeros((B,), dtype=torch.int32, device=dev),
                torch.zeros((B, R), dtype=torch.bool, device=dev))
    check_device(s, c)
    s = s.to(torch.float32).contiguous()
    c = c.to(torch.float32).contiguous()
    if T == 0:  # s is never read; do not hand triton a null pointer
        s = c
    from_sim = torch.empty((B, R), dtype=torch.uint8, device=dev)
    num_sim = torch.empty((B,), dtype=torch.int32, device=dev)
    votes_ws = torch.empty((B, M), dtype=torch.int32, device=dev)
    keys_ws = torch.empty((B, M), dtype=torch.int64, device=dev)
    list_ws = torch.empty((B, M), dtype=torch.int64, device=dev)
    has_nt = num_texts is not None
    nt = num_texts if has_nt else num_sim
    blk = dict(BLOCK_F=min(4096, max(16, next_pow2(M))), RB=64)
    blk.update(_FORCE_BLOCKS)
    blk["SINGLE"] = M <= blk["BLOCK_F"]
    blk.setdefault("BITS", radix_bits(blk["BLOCK_F"]))
    with device_guard(dev):
        _select_tokens_kernel[(B,)](
            s, c, nt, indices, from_sim, num_sim, votes_ws, keys_ws, list_ws,
            M, T, R, int(k_per_text), int(min_votes), nt.stride(0) if has_nt else 0,
            HAS_NT=has_nt, OFFICIAL=(order == "official"), num_warps=_finaliser_warps(blk), **blk,
        )
    return indices, num_sim, from_sim.view(torch.bool)


def _finaliser_warps(blk) -> int:
    # Untuned (no GPU yet): 8 warps for the wider tiles keeps ptxas under 255 registers
    # per thread without spills (tests/triton/aot_compile.py prints the counts).
    return 8 if blk["BLOCK_F"] >= 2048 else 4
