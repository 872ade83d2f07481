"""text_similarity and cls_contribution kernels vs the reference's direct formulas."""

import _tri
import pytest
import torch
from _inputs import noncontig
from _tri import tops

from litelvlm_kernels import reference as ref

# Both sides compute in fp32 from the same input values (fp16 / bf16 inputs are upcast
# first), so one tolerance serves every dtype: a few ulps of the largest term.
RTOL, ATOL = 2e-5, 2e-5

SIM_CASES = [  # B, T, M, Dv, P, text_batch, blocks
    (3, 2, 577, 1000, 48, None, None),  # odd shapes, default blocks (Dv = 1000: masked tail)
    (2, 5, 70, 200, 16, 1, dict(BLOCK_M=16, BLOCK_D=64, TB=2)),  # broadcast text, 3 text groups, split M and Dv
    (1, 1, 9, 24, 8, None, dict(BLOCK_M=16, BLOCK_D=16, TB=1)),  # tiny
]


@pytest.mark.parametrize("case", SIM_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_text_similarity(case, dtype, device):
    B, T, M, Dv, P, tb, blocks = case
    if dtype != torch.float32 and M > 100:
        pytest.skip("low precision checked on the small cases (interpreter time)")
    _tri.force_blocks(blocks)
    x, w, b = _tri.inputs(B, T, M, Dv, 16, P, dtype=dtype, device=device, seed=M, text_batch=tb)
    s = tops.text_similarity(noncontig(x.hidden), w, b, 1e-5)
    s_ref = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5)
    assert s.dtype == torch.float32 and s.shape == (B, T, M)
    torch.testing.assert_close(s, s_ref, rtol=RTOL, atol=ATOL * s_ref.abs().max().item())


def test_text_similarity_centred_form_outliers(device):
    """Large common offset and outlier channels: the centred (x - mu) . w stays accurate
    where x . w - mu * sum(w) would cancel catastrophically (docs/design.md section 3).
    Compared with a float64 evaluation of the direct formula."""
    _tri.force_blocks(dict(BLOCK_M=16, BLOCK_D=64))
    x, w, b = _tri.inputs(2, 2, 40, 256, 16, 24, device=device, outliers=8, outlier_scale=1000.0)
    hidden = x.hidden + 3000.0  # mean ~3e3 per token: the uncentred form would lose ~3 digits
    s = tops.text_similarity(hidden, w, b, 1e-5)
    s64 = ref.similarity_direct(hidden.double(), x.text_embeds.double(), x.proj_weight.double(),
                                x.ln_weight.double(), x.ln_bias.double(), 1e-5)
    err = (s.double() - s64).abs().max().item()
    assert err <= 1e-5 * s64.abs().max().item() + 1e-5, err


CLS_CASES = [  # B, M, D, blocks
    (3, 577, 1000, None),
    (1, 70, 40, dict(BLOCK_M=16, BLOCK_D=16, BLOCK_F=32)),  # split M over 5 programs, chunked softmax
    (2, 1, 8, None),
]


@pytest.mark.parametrize("case", CLS_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cls_contribution(case, dtype, device):
    B, M, D, blocks = case
    if dtype != torch.float32 and M > 100:
        pytest.skip("low precision checked on the small cases (interpreter time)")
    _tri.force_blocks(blocks)
    g = torch.Generator().manual_seed(M)
    q = torch.randn(B, D, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(B, M, D, generator=g).to(device=device, dtype=dtype)
    v = (torch.randn(B, M, D, generator=g) * 3).to(device=device, dtype=dtype)
    for scale in (None, 0.7):
        c = tops.cls_contribution(q, noncontig(k), noncontig(v), scale)
        c_ref = ref.contribution_direct(q, k, v, scale)
        assert c.dtype == torch.float32 and c.shape == (B, M)
        torch.testing.assert_close(c, c_ref, rtol=RTOL, atol=ATOL * c_ref.abs().max().item())


def test_cls_contribution_nan_inf(device):
    """A NaN key makes its row's softmax NaN (as torch.softmax); an inf value gives c = inf."""
    _tri.force_blocks(dict(BLOCK_M=16, BLOCK_D=16, BLOCK_F=16))
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 8, generator=g)
    k = torch.randn(2, 40, 8, generator=g)
    v = torch.randn(2, 40, 8, generator=g)
    k[0, 5, 3] = float("nan")
    v[1, 7, 0] = float("inf")
    v[1, 9, 2] = float("nan")
    q, k, v = q.to(device), k.to(device), v.to(device)
    c = tops.cls_contribution(q, k, v).cpu()
    c_ref = ref.contribution_direct(q, k, v).cpu()
    assert torch.isnan(c[0]).all() and torch.isnan(c_ref[0]).all()
    assert c[1, 7] == float("inf") and c_ref[1, 7] == float("inf")
    assert torch.isnan(c[1, 9]) and torch.isnan(c_ref[1, 9])
    fin = torch.isfinite(c_ref[1])
    torch.testing.assert_close(c[1][fin], c_ref[1][fin], rtol=RTOL, atol=0.0)


def test_empty(device):
    x, w, b = _tri.inputs(0, 2, 5, 8, 8, 8, device=device)
    assert tops.text_similarity(x.hidden, w, b, 1e-5).shape == (0, 2, 5)
    assert tops.cls_contribution(x.q_cls, x.keys, x.values).shape == (0, 5)
    x, w, b = _tri.inputs(2, 2, 0, 8, 8, 8, device=device)
    assert tops.text_similarity(x.hidden, w, b, 1e-5).shape == (2, 2, 0)
    assert tops.cls_contribution(x.q_cls, x.keys, x.values).shape == (2, 0)
