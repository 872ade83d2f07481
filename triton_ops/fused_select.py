"""fused_select: LiteLVLM's whole token selection in ONE Triton kernel launch.

For every row (image, tile or frame) b of a batch: the folded [EOS] similarity of every
text, each text's bottom-k, the vote / set combination (union, intersection, min_votes),
the softmax-weighted [CLS] contribution c_j = a_j * ||v_j||, the recovery fill and the
final order (docs/design.md sections 1-4). See docs/triton.md for the walk-through.
"""

from __future__ import annotations

import torch

from . import _common as C
from ._workspace import row_counters, scratch

if C.has_triton():
    import triton
    import triton.language as tl

    from ._finalise import _finalise_row
    from ._tiles import _cls_partials, _last_to_arrive, _sim_partials, _token_block

    # Sizes that change per call or per request (rows, budgets, counts, the batch stride of
    # b) are not specialised: a new M or R' must not cost a compile (~2 s) while serving.
    # Widths (Dv, D) and the token / feature strides stay specialised: they are model
    # constants, and their divisibility by 16 lets loads vectorise.
    @triton.jit(do_not_specialize=["M", "T", "R", "k_per_text", "min_votes", "NSPLIT", "s_bb", "s_nt"])
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
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr, TB: tl.constexpr,
        BLOCK_F: tl.constexpr, SINGLE: tl.constexpr, RB: tl.constexpr, G: tl.constexpr,
    ):
        """Single-launch LiteLVLM selection.

        Grid: (B * NSPLIT,), NSPLIT = cdiv(M, BLOCK_M); program p handles tokens
        [s * BLOCK_M, (s + 1) * BLOCK_M) of row p // NSPLIT, s = p % NSPLIT.
        Shapes: hidden [B, M, Dv], w [Bt, T, Dv], b [Bt, T] (Bt = 1 broadcasts), q [B, D],
        keys / values [B, M, D], num_texts [B]; outputs indices [B, R'] int64,
        from_similarity [B, R'] uint8 (viewed as bool), num_similarity [B] int32.
        Workspace: sim [B, T, M], logits [B, M], ||v|| [B, M] fp32; votes [B, M] int32;
        keys [B, G, M] int32; list [B, M] int64; counters [B] int32 (zero on entry and exit).

        One program: phase 1 streams its tokens' hidden / keys / values once (fp32 math) and
        writes s_tj, logit_j, ||v_j|| to scratch; then bumps its row's counter (acq_rel). The
        program that sees NSPLIT - 1 is the last of the row: it runs _finalise_row (bottom-k
        per text, votes, softmax, recovery, order) and resets the counter to 0.
        Block sizes: _common.py (token_tile, feature_tile, text_tile, finaliser_block,
        text_group); RB = 64: rank tiles of 64 x 64 compares.
        """
        row, r64, offs_m, mask_m = _token_block(tl.program_id(0), NSPLIT, M, BLOCK_M)

        # ---- phase 1: partials of this program's tokens.
        for t0 in range(0, T, TB):
            _sim_partials(h_ptr + r64 * s_hb, s_hm, s_hd, Dv, w_ptr + r64 * s_wb, s_wt, s_wd, b_ptr + r64 * s_bb, s_bt,
                          T, t0, offs_m, mask_m, ln_eps, sim_ws + r64 * T * M, M, BLOCK_M, BLOCK_D, TB, UNROLL)
        _cls_partials(q_ptr + r64 * s_qb, s_qd, k_ptr + r64 * s_kb, s_km, s_kd, v_ptr + r64 * s_vb, s_vm, s_vd,
                      D, scale, l_ws + r64 * M, vn_ws + r64 * M, offs_m, mask_m, BLOCK_M, BLOCK_D, UNROLL)

        # ---- arrival: the row's last program runs the finaliser.
        if _last_to_arrive(cnt_ptr, row, NSPLIT):
            tl.debug_barrier()
            _finalise_row(row, sim_ws, l_ws, vn_ws, votes_ws, keys_ws, list_ws,
                          nt_ptr, idx_ptr, fs_ptr, ns_ptr,
                          M, T, R, k_per_text, min_votes, s_nt,
                          HAS_NT, OFFICIAL, BLOCK_F, SINGLE, RB, G, False)
            # Back to 0: the counters are a cached buffer, zero before every launch.
            tl.atomic_xchg(cnt_ptr + row, 0)


def pick_blocks(B: int, M: int, T: int, Dv: int, D: int, force=None) -> dict:
    """Meta-parameters of _fused_select_kernel (rules in _common.py); force overrides
    any of them (tests run the GPU sizes and the chunked finaliser under the interpreter)."""
    blocks = dict(BLOCK_M=C.token_tile(B, M), BLOCK_D=C.feature_tile(max(Dv, D)), TB=C.text_tile(T),
                  BLOCK_F=C.finaliser_block(M), RB=64)
    blocks.update(force or {})
    # Derived from the final tiles, so a forced BLOCK_M / TB / BLOCK_F gets its own partners.
    blocks.setdefault("UNROLL", C.feature_unroll(blocks["BLOCK_M"], blocks["TB"]))
    return C.derive_finaliser_blocks(blocks, M, blocks["TB"])


def fused_select(hidden, w, b, ln_eps, q_cls, keys, values, num_retain, min_votes=1,
                 k_per_text=0, order="official", num_texts=None, scale=None, *, _blocks=None):
    """LiteLVLM selection in one Triton launch (docs/design.md section 4, ``fused_select``).

    Arguments are assumed valid (the op layer checks them).

    Parameters
    ----------
    hidden : torch.Tensor
        [B, M, Dv] visual tokens (fp32 / fp16 / bf16, any strides).
    w, b : torch.Tensor
        Folded text [Bt, T, Dv] and [Bt, T], Bt in {1, B}.
    ln_eps : float
        LayerNorm epsilon.
    q_cls, keys, values : torch.Tensor
        [B, D] and [B, M, D].
    num_retain, min_votes, k_per_text, order, num_texts, scale
        As the op (docs/design.md section 2); scale None means 1/sqrt(D).

    Returns
    -------
    tuple
        indices [B, R'] int64, num_similarity [B] int32, from_similarity [B, R'] bool,
        R' = min(num_retain, M).

    Examples
    --------
    >>> idx, n_sim, from_sim = fused_select(h, w, b, 1e-5, q, k, v, 192)  # doctest: +SKIP
    """
    B, M, Dv = hidden.shape
    T = w.shape[1]
    D = q_cls.shape[-1]
    R = min(int(num_retain), M)
    dev = hidden.device
    indices = torch.empty((B, R), dtype=torch.int64, device=dev)
    if B == 0 or M == 0:  # empty outputs, no launch
        return (indices, torch.zeros((B,), dtype=torch.int32, device=dev),
                torch.zeros((B, R), dtype=torch.bool, device=dev))
    blk = pick_blocks(B, M, T, Dv, D, _blocks)
    G = blk["G"]
    # Every output element is written by the kernel (|recovered| + |S| = R'): no memset.
    from_sim = torch.empty((B, R), dtype=torch.uint8, device=dev)
    num_sim = torch.empty((B,), dtype=torch.int32, device=dev)
    sim_ws, l_ws, vn_ws, votes_ws, keys_ws, list_ws = scratch(dev, [
        ((B, max(T, 1), M), torch.float32), ((B, M), torch.float32), ((B, M), torch.float32),
        ((B, M), torch.int32), ((B, G, M), torch.int32), ((B, M), torch.int64)])
    counters = row_counters(dev, B)
    swb, swt, swd, sbb, sbt = C.text_strides(w, b, B)
    if T == 0:  # no texts: w / b are never read; do not hand triton a null pointer
        w = b = sim_ws
    has_nt = num_texts is not None
    nt = num_texts if has_nt else num_sim
    nsplit = C.cdiv(M, blk["BLOCK_M"])
    with C.device_guard(dev):
        _fused_select_kernel[(B * nsplit,)](
            hidden, w, b, q_cls, keys, values, nt,
            indices, from_sim, num_sim,
            sim_ws, l_ws, vn_ws, votes_ws, keys_ws, list_ws, counters,
            M, Dv, D, T, R, int(k_per_text), int(min_votes), float(ln_eps),
            float(C.default_scale(D) if scale is None else scale), nsplit,
            hidden.stride(0), hidden.stride(1), hidden.stride(2), swb, swt, swd, sbb, sbt,
            q_cls.stride(0), q_cls.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
            values.stride(0), values.stride(1), values.stride(2), nt.stride(0) if has_nt else 0,
            HAS_NT=has_nt, OFFICIAL=(order == "official"), num_warps=C.NUM_WARPS, **blk,
        )
    return indices, num_sim, from_sim.view(torch.bool)
