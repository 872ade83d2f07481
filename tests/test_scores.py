"""fold_text, text_similarity, cls_contribution vs the direct formulas of the reference."""


import pytest
import torch
from _inputs import noncontig

import litelvlm_kernels as lk
from litelvlm_kernels import reference as ref
from litelvlm_kernels.synthetic import clip_inputs

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, T, M, Dv, D, P): odd shapes on purpose (M = 577, Dv = 1000, B = 3)
SHAPES = [(1, 1, 1, 8, 8, 4), (3, 3, 577, 1000, 72, 40), (2, 2, 196, 768, 64, 512), (0, 2, 5, 16, 16, 8),
          (2, 0, 7, 16, 16, 8), (1, 2, 0, 16, 16, 8)]


def _inputs(shape, dtype, device, text_batch=None, seed=0):
    B, T, M, Dv, D, P = shape
    return clip_inputs(B, T, M, Dv, D, P, text_batch=text_batch, dtype=dtype, device=device, seed=seed)


def _tol(ref_val):
    """fp32 accumulation order differs (folded dot vs full projection): scale with the magnitudes."""
    return 2e-5 * (ref_val.abs().max().item() if ref_val.numel() else 0.0) + 1e-5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("text_batch", [None, 1])
def test_text_similarity_vs_direct_projection(shape, dtype, text_batch, device):
    x = _inputs(shape, dtype, device, text_batch)
    w, b = torch.ops.litelvlm.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    assert w.dtype == b.dtype == torch.float32
    w_ref, b_ref = ref.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-5)
    s = torch.ops.litelvlm.text_similarity(noncontig(x.hidden), w, b, 1e-5)
    # The reference runs on the same low-precision inputs upcast to fp32 (docs/CONTRIBUTING.md item 7):
    # our output is fp32 computed from the same values, so fp32 tolerances apply.
    s_ref = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5)
    assert s.shape == s_ref.shape and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, rtol=0, atol=_tol(s_ref))


def test_outlier_channels_need_the_centred_form():
    """With |x| ~ 3e3 outliers, x.w - mu*sum(w) loses digits; the op must not."""
    x = clip_inputs(2, 2, 64, 1024, 16, 32, outliers=4, outlier_scale=3000.0, seed=3)
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    s = torch.ops.litelvlm.text_similarity(x.hidden, w, b, 1e-5)
    s64 = ref.similarity_direct(x.hidden.double(), x.text_embeds.double(), x.proj_weight.double(),
                                x.ln_weight.double(), x.ln_bias.double(), 1e-5)
    err = (s.double() - s64).abs().max().item()
    h = x.hidden.double()
    mu = h.mean(-1, keepdim=True)
    sigma = ((h - mu).square().mean(-1) + 1e-5).sqrt()
    naive = ((h.float() @ w[0].t()) - mu.float() * w[0].sum(-1)) / sigma.float().unsqueeze(-1) + b[0]
    naive_err = (naive.transpose(1, 2).double() - s64).abs().max().item()
    assert err < 1e-3 and err * 10 < naive_err, (err, naive_err)


@pytest.mark.parametrize("shape", [(1, 0, 1, 8, 8, 4), (3, 0, 577, 8, 72, 8), (2, 0, 196, 8, 768, 8),
                                   (0, 0, 3, 8, 8, 8)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [None, 2.5])
def test_cls_contribution_vs_direct(shape, dtype, scale, device):
    x = _inputs(shape, dtype, device)
    c = torch.ops.litelvlm.cls_contribution(x.q_cls, noncontig(x.keys), x.values.transpose(1, 2).contiguous()
                                            .transpose(1, 2), scale)
    c_ref = ref.contribution_direct(x.q_cls, x.keys, x.values, scale)
    assert c.shape == c_ref.shape and c.dtype == torch.float32
    torch.testing.assert_close(c, c_ref, rtol=2e-5, atol=1e-7)


def test_cls_contribution_special_values(device):
    q = torch.randn(1, 8, device=device)
    k = torch.randn(1, 5, 8, device=device)
    v = torch.randn(1, 5, 8, device=device)
    v[0, 1] = 0.0
    k[0, 2] = 0.0  # zero key: F.normalize convention gives logit 0, not NaN
    v[0, 3, 0] = float("inf")
    c = torch.ops.litelvlm.cls_contribution(q, k, v)
    c_ref = ref.contribution_direct(q, k, v)
    torch.testing.assert_close(c, c_ref, equal_nan=True)
    assert c[0, 1] == 0 and torch.isinf(c[0, 3])
    k[0, 4, 1] = float("nan")
    assert torch.isnan(torch.ops.litelvlm.cls_contribution(q, k, v)).all()
