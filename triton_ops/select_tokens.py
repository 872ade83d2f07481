"""select_tokens: the selection of docs/design.md section 2 from given scores s [B, T, M]
and contributions c [B, M], with fused_select's row finaliser (_finalise.py), so tests can
check the selection rules on exact, hand-made scores: ties, -0.0, NaN, +-inf."""

from __future__ import annotations

import torch

from . import _common as C
from ._workspace import scratch

if C.has_triton():
    import triton
    import triton.language as tl

    from ._finalise import _finalise_row

    @triton.jit(do_not_specialize=["M", "T", "R", "k_per_text", "min_votes", "s_nt"])
    def _select_tokens_kernel(
        # pointers
        s_ptr, c_ptr, nt_ptr, idx_ptr, fs_ptr, ns_ptr, votes_ws, keys_ws, list_ws,
        # sizes
        M, T, R, k_per_text, min_votes, s_nt,
        # meta-parameters
        HAS_NT: tl.constexpr, OFFICIAL: tl.constexpr,
        BLOCK_F: tl.constexpr, SINGLE: tl.constexpr, RB: tl.constexpr, G: tl.constexpr,
    ):
        """Grid: (B,). Shapes: s [B, T, M], c [B, M] fp32 contiguous; outputs as fused_select.
        One program: one row, fused_select's finaliser with c read directly (block sizes
        as fused_select's finaliser, _common.py)."""
        row = tl.program_id(0)
        _finalise_row(row, s_ptr, c_ptr, c_ptr, votes_ws, keys_ws, list_ws,
                      nt_ptr, idx_ptr, fs_ptr, ns_ptr,
                      M, T, R, k_per_text, min_votes, s_nt,
                      HAS_NT, OFFICIAL, BLOCK_F, SINGLE, RB, G, True)


def pick_blocks(M: int, T: int, force=None) -> dict:
    """Meta-parameters of _select_tokens_kernel; force overrides any of them."""
    blocks = dict(BLOCK_F=C.finaliser_block(M), RB=64)
    blocks.update(force or {})
    return C.derive_finaliser_blocks(blocks, M, C.text_tile(T))


def select_tokens(s, c, num_retain, min_votes=1, k_per_text=0, order="official", num_texts=None, *,
                  _blocks=None):
    """The selection from given scores (arguments assumed valid: the op layer checks them).

    Parameters
    ----------
    s : torch.Tensor
        [B, T, M] similarities (any float dtype; copied to contiguous fp32 if needed).
    c : torch.Tensor
        [B, M] contributions.
    num_retain, min_votes, k_per_text, order, num_texts
        As the op (docs/design.md section 2).

    Returns
    -------
    tuple
        indices [B, R'] int64, num_similarity [B] int32, from_similarity [B, R'] bool.

    Examples
    --------
    >>> idx, n_sim, from_sim = select_tokens(s, c, 64)  # doctest: +SKIP
    """
    B, T, M = s.shape
    R = min(int(num_retain), M)
    dev = s.device
    indices = torch.empty((B, R), dtype=torch.int64, device=dev)
    if B == 0 or M == 0:
        return (indices, torch.zeros((B,), dtype=torch.int32, device=dev),
                torch.zeros((B, R), dtype=torch.bool, device=dev))
    s = s.to(torch.float32).contiguous()
    c = c.to(torch.float32).contiguous()
    if T == 0:  # s is never read; do not hand triton a null pointer
        s = c
    blk = pick_blocks(M, T, _blocks)
    from_sim = torch.empty((B, R), dtype=torch.uint8, device=dev)
    num_sim = torch.empty((B,), dtype=torch.int32, device=dev)
    votes_ws, keys_ws, list_ws = scratch(dev, [((B, M), torch.int32), ((B, blk["G"], M), torch.int32),
                                               ((B, M), torch.int64)])
    has_nt = num_texts is not None
    nt = num_texts if has_nt else num_sim
    # One program per row: B programs rarely fill the SMs, so occupancy is not worth a
    # spill. Without a .maxnreg, ptxas 12.9 traded registers for occupancy (64 registers
    # and a 4-byte spill at BLOCK_F = 256); with the hardware's own limit stated it uses
    # what it needs (111-245 registers over the compiled grid, no spills; 128 spilled at 4096).
    with C.device_guard(dev):
        _select_tokens_kernel[(B,)](
            s, c, nt, indices, from_sim, num_sim, votes_ws, keys_ws, list_ws,
            M, T, R, int(k_per_text), int(min_votes), nt.stride(0) if has_nt else 0,
            HAS_NT=has_nt, OFFICIAL=(order == "official"), num_warps=C.NUM_WARPS, maxnreg=255, **blk,
        )
    return indices, num_sim, from_sim.view(torch.bool)
