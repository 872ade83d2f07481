"""The launchers' meta-parameters: those derived from other tiles (UNROLL, G, SINGLE) follow
the final, possibly forced, tiles; a forced derived value is kept.

The GPU check runs tests/triton on real kernels with forced tiles; an UNROLL chosen for the
default 16-token tile but launched with BLOCK_M = 32 is the variant triton 3.6's LLVM aborted
on (_common.feature_unroll)."""

import pytest
from _tri import CC, FS, ST, TS

from litelvlm_kernels.triton_ops import _common as C

# Small B: the default token tile is 16 on a GPU (64 under the interpreter).
B, M, T, D = 1, 576, 2, 1024


def _launchers(force):
    cls_force = {k: v for k, v in (force or {}).items() if k != "TB"}  # no text tile there
    return {"fused_select": FS.pick_blocks(B, M, T, D, D, force), "text_similarity": TS.pick_blocks(B, M, T, D, force),
            "cls_contribution": CC.pick_blocks(B, M, D, cls_force)}


@pytest.mark.parametrize("force", [None, dict(BLOCK_M=16), dict(BLOCK_M=32), dict(BLOCK_M=16, TB=8),
                                   dict(BLOCK_M=64, TB=1)])
def test_unroll_follows_the_final_tiles(force):
    for name, blk in _launchers(force).items():
        tb = blk.get("TB", 1)
        assert blk["UNROLL"] == C.feature_unroll(blk["BLOCK_M"], tb), (name, blk)
    if force:
        assert all(blk["BLOCK_M"] == force["BLOCK_M"] for blk in _launchers(force).values())


def test_forced_unroll_is_kept():
    assert all(blk["UNROLL"] == 2 for blk in _launchers(dict(BLOCK_M=32, UNROLL=2)).values())


@pytest.mark.parametrize("block_f", [16, 256, 1024, 4096])
@pytest.mark.parametrize("m", [17, 576, 5000])
def test_finaliser_blocks_follow_block_f(block_f, m):
    for blk, tb in ((FS.pick_blocks(B, m, 16, D, D, dict(BLOCK_F=block_f)), C.text_tile(16)),
                    (ST.pick_blocks(m, 16, dict(BLOCK_F=block_f)), C.text_tile(16))):
        assert blk["G"] == C.text_group(tb, block_f) and blk["SINGLE"] == (m <= block_f), blk
    assert ST.pick_blocks(m, 16, dict(BLOCK_F=block_f, G=1))["G"] == 1


@pytest.mark.parametrize("m,block_f,single", [(49, 256, True), (576, 1024, True), (2880, 4096, True),
                                              (4096, 4096, True), (4097, 2048, False), (16384, 2048, False)])
def test_long_rows_stream_2048_token_chunks(m, block_f, single):
    """Rows up to 4096 tokens stay on registers; longer ones stream CHUNK_F = 2048-token chunks with one text per
    pass (4096-token chunks spilled under triton 3.6's ptxas at M = 16384; docs/triton.md)."""
    assert C.finaliser_block(m) == block_f
    for blk in (FS.pick_blocks(B, m, 16, D, D), ST.pick_blocks(m, 16)):
        assert blk["BLOCK_F"] == block_f and blk["SINGLE"] == single, blk
        if not single:
            assert blk["G"] == 1, blk
