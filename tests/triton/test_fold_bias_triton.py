"""The Triton kernels on a text folded WITH a projection bias (SigLIP; docs/design.md section 3.5).

text_similarity and fused_select take (w, b) and need no change: the bias lives in b. These tests
hold them to the reference's unfolded scores e . (W LN(x) + c) and to its selection on them.
"""

import _tri
import pytest
import torch
from _inputs import noncontig
from _tri import tops

from litelvlm_kernels import reference as ref
from litelvlm_kernels.synthetic import clip_inputs

RTOL, ATOL = 2e-5, 2e-5  # as test_scores_triton.py: fp32 from the same input values, any dtype


def _biased(B, T, M, Dv, D, P=32, *, dtype=torch.float32, device="cpu", seed=0, text_batch=None):
    """Inputs, a bias c [P] (std 1: e . c is as large as the rest of the score), (w, b) folded
    with it by the reference, and the reference's direct scores (s with the bias, c)."""
    x = clip_inputs(B, T, M, Dv, D, P, dtype=dtype, device=device, seed=seed, text_batch=text_batch)
    g = torch.Generator().manual_seed(1000 + seed)
    c = torch.randn(P, generator=g).to(device=device, dtype=dtype)
    w, b = ref.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, c)
    s_ref = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5, proj_bias=c)
    return x, w, b, s_ref, ref.contribution_direct(x.q_cls, x.keys, x.values)


SIM_CASES = [  # B, T, M, Dv, P, text_batch, blocks
    (2, 2, 70, 200, 1000, None, dict(BLOCK_M=16, BLOCK_D=64, TB=2)),  # P = 1000, split M and Dv
    (3, 3, 33, 24, 8, 1, dict(BLOCK_M=16, BLOCK_D=16, TB=2)),  # broadcast text, 2 text groups
]


@pytest.mark.parametrize("case", SIM_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_text_similarity_with_bias(case, dtype, device):
    B, T, M, Dv, P, tb, blocks = case
    _tri.force_blocks(blocks)
    x, w, b, s_ref, _ = _biased(B, T, M, Dv, 16, P, dtype=dtype, device=device, seed=M, text_batch=tb)
    s = tops.text_similarity(noncontig(x.hidden), w, b, 1e-5)
    assert s.dtype == torch.float32 and s.shape == (B, T, M)
    torch.testing.assert_close(s, s_ref, rtol=RTOL, atol=ATOL * s_ref.abs().max().item())
    # The CPU kernel gives the same scores (same tolerance to the reference).
    s_cpu = torch.ops.litelvlm.text_similarity(x.hidden.cpu(), w.cpu(), b.cpu(), 1e-5)
    torch.testing.assert_close(s_cpu, s_ref.cpu(), rtol=RTOL, atol=ATOL * s_ref.abs().max().item())


@pytest.mark.parametrize("min_votes,order", [(1, "official"), (0, "spatial"), (2, "official")])
def test_fused_select_with_bias(min_votes, order, device):
    """fused_select vs the reference selection on the biased scores (near-ties only), and vs the
    separate kernels with the same blocks (bitwise-equal scores: identical selections)."""
    _tri.force_blocks(dict(BLOCK_M=16, BLOCK_D=32, BLOCK_F=64))  # M = 50: 4 programs per row
    x, w, b, s_ref, c_ref = _biased(2, 3, 50, 40, 24, 1000, device=device, seed=min_votes)
    kw = dict(min_votes=min_votes, order=order)
    out = _tri.fused(x, w, b, 20, **kw)
    _tri.assert_matches_reference(out, s_ref, c_ref, 20, **kw)
    again, _, _ = _tri.pieces(x, w, b, 20, **kw)
    _tri.assert_same(out, again, "fused vs separate kernels")
    # The CPU kernel on the same (w, b).
    cpu = torch.ops.litelvlm.fused_select(x.hidden.cpu(), w.cpu(), b.cpu(), 1e-5, x.q_cls.cpu(), x.keys.cpu(),
                                          x.values.cpu(), 20, min_votes, 0, order, None, None)
    _tri.assert_matches_reference(cpu, s_ref, c_ref, 20, **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_select_with_bias_low_precision_broadcast(dtype, device):
    """fp16 / bf16 inputs and bias, one text batch for 3 rows, num_texts per row."""
    _tri.force_blocks(dict(BLOCK_M=16, BLOCK_D=32, BLOCK_F=64))
    x, w, b, s_ref, c_ref = _biased(3, 2, 50, 40, 24, 40, dtype=dtype, device=device, seed=5, text_batch=1)
    nt = torch.tensor([2, 1, 0], device=device)
    out = _tri.fused(x, w, b, 16, num_texts=nt)
    _tri.assert_matches_reference(out, s_ref, c_ref, 16, num_texts=nt)
    again, _, _ = _tri.pieces(x, w, b, 16, num_texts=nt)
    _tri.assert_same(out, again, "fused vs separate kernels")
