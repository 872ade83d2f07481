"""fold_text with a bias in the projection (``proj_bias``, SigLIP towers; docs/design.md section 3.5).

s_tj = e_t . (W LN(x_j) + c) folds into w_t = gamma * (W^T e_t), b_t = beta . (W^T e_t) + e_t . c.
Every implementation (C++ CPU kernel, torch composition, reference) is held to the reference's
unfolded formula ``similarity_direct(..., proj_bias=c)``, and the selection through fused_select /
prune to the reference selection on those scores.
"""

import pytest
import torch
from _inputs import noncontig

import litelvlm_kernels as lk
from litelvlm_kernels import reference as ref
from litelvlm_kernels._validate import min_votes_of
from litelvlm_kernels.synthetic import clip_inputs
from litelvlm_kernels.testing import assert_selection_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
OP = torch.ops.litelvlm.fold_text


def proj_bias(P, *, dtype=torch.float32, device="cpu", seed=0):
    """c [P] with std 1: e_t . c is then as large as the rest of the score (~sqrt(P)), so a bias
    dropped or added twice anywhere moves the scores far outside any tolerance."""
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(P, generator=g).to(device=device, dtype=dtype)


def _tol(ref_val):
    """As tests/test_scores.py: fp32 accumulation order differs (folded vs projected), scale with magnitudes."""
    return 2e-5 * (ref_val.abs().max().item() if ref_val.numel() else 0.0) + 1e-5


# -- fold_text itself ----------------------------------------------------------------------

FOLD_SHAPES = [  # Bt, T, P, Dv: odd on purpose (P = 1000, Dv = 577), T = 0, Bt = 1 and B
    (1, 1, 4, 8), (3, 3, 1000, 40), (2, 2, 40, 577), (2, 0, 16, 8), (1, 5, 1000, 1000), (0, 2, 8, 8)]


@pytest.mark.parametrize("shape", FOLD_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_fold_text_with_bias_vs_reference(shape, dtype, contiguous, device):
    from litelvlm_kernels.ops import selection

    Bt, T, P, Dv = shape
    x = clip_inputs(Bt, T, 1, Dv, 8, P, dtype=dtype, device=device, seed=P + T)
    c = proj_bias(P, dtype=dtype, device=device, seed=P)
    args = (x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, c)
    if not contiguous:
        args = tuple(noncontig(t) for t in args)
    # The reference runs on the same (possibly low-precision) values upcast to fp32, as the kernels do.
    w_ref, b_ref = ref.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, c)
    for name, fn in (("op", OP), ("torch composition", selection._fold_text_default)):
        w, b = fn(*args)
        assert w.dtype == b.dtype == torch.float32, name
        assert w.shape == (Bt, T, Dv) and b.shape == (Bt, T), name
        torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=_tol(b_ref), msg=name)
    # The bias only adds e_t . c to b; w is the bias-free one, bit for bit.
    w0, b0 = OP(*args[:4])
    w1, b1 = OP(*args)
    assert torch.equal(w1, w0)
    torch.testing.assert_close(b1 - b0, x.text_embeds.double() @ c.double(), rtol=0,
                               atol=_tol(b1) + 1e-5, check_dtype=False)


def test_fold_text_none_bias_is_the_old_call(device):
    x = clip_inputs(2, 3, 1, 24, 8, 12, device=device, seed=3)
    old = OP(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    for new in (OP(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, None),
                OP(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, proj_bias=None),
                lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, proj_bias=None)):
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
    # A zero bias changes nothing either (b + 0 is exact).
    z = OP(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, torch.zeros(12, device=device))
    assert torch.equal(z[0], old[0]) and torch.equal(z[1], old[1])


# -- the score: folded (fold_text + text_similarity) vs unfolded (reference) ----------------------

SIM_SHAPES = [  # B, T, M, Dv, D, P, as tests/test_scores.py
    (1, 1, 1, 8, 8, 4), (3, 3, 577, 1000, 72, 40), (2, 2, 196, 768, 64, 1000), (0, 2, 5, 16, 16, 8),
    (2, 0, 7, 16, 16, 8), (1, 2, 0, 16, 16, 8)]


@pytest.mark.parametrize("shape", SIM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("text_batch", [None, 1])
def test_similarity_with_bias_vs_direct(shape, dtype, text_batch, device):
    B, T, M, Dv, D, P = shape
    x = clip_inputs(B, T, M, Dv, D, P, text_batch=text_batch, dtype=dtype, device=device, seed=M)
    c = proj_bias(P, dtype=dtype, device=device, seed=M)
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, proj_bias=c)
    s = torch.ops.litelvlm.text_similarity(noncontig(x.hidden), w, b, 1e-5)
    s_ref = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5, proj_bias=c)
    assert s.shape == s_ref.shape and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, rtol=0, atol=_tol(s_ref))


def test_siglip_head_folds_exactly_in_float64():
    """The derivation of section 3.5 on an explicit SigLIP-style value path, in float64:
    e . (W_o (W_v LN(x) + b_v) + b_o) == ((x - mu) . w) / sigma + b with
    (w, b) = fold(W = W_o W_v, c = W_o b_v + b_o)."""
    g = torch.Generator().manual_seed(7)
    B, T, M, Dv, P = 2, 3, 50, 48, 40  # SigLIP's head: Dv -> Dv (value) -> P = Dv (out); P != Dv here
    x = torch.randn(B, M, Dv, generator=g, dtype=torch.float64) * 3 + 1
    e = torch.randn(B, T, P, generator=g, dtype=torch.float64)
    gamma = 1 + 0.1 * torch.randn(Dv, generator=g, dtype=torch.float64)
    beta = 0.1 * torch.randn(Dv, generator=g, dtype=torch.float64)
    W_v, b_v = torch.randn(Dv, Dv, generator=g, dtype=torch.float64) / Dv ** 0.5, torch.randn(Dv, generator=g,
                                                                                              dtype=torch.float64)
    W_o, b_o = torch.randn(P, Dv, generator=g, dtype=torch.float64) / Dv ** 0.5, torch.randn(P, generator=g,
                                                                                             dtype=torch.float64)
    ln = torch.nn.functional.layer_norm(x, (Dv,), gamma, beta, 1e-6)
    head = (ln @ W_v.t() + b_v) @ W_o.t() + b_o  # [B, M, P]: what the tower's head computes per token
    direct = e @ head.transpose(1, 2)  # [B, T, M]
    W, c = W_o @ W_v, W_o @ b_v + b_o
    u = e @ W
    w, b = u * gamma, u @ beta + e @ c  # section 3.5, written out
    mu = x.mean(-1, keepdim=True)
    sigma = ((x - mu).square().mean(-1) + 1e-6).sqrt()
    folded = torch.einsum("bmd,btd->btm", x - mu, w) / sigma[:, None] + b[..., None]
    torch.testing.assert_close(folded, direct, rtol=1e-12, atol=1e-12)
    # The reference (fp32 by design) and the op agree with it to fp32 rounding.
    w_ref, b_ref = ref.fold_text(e, W, gamma, beta, c)
    torch.testing.assert_close(w_ref.double(), w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b_ref.double(), b, rtol=1e-5, atol=1e-5)
    s_ref = ref.similarity_direct(x, e, W, gamma, beta, 1e-6, proj_bias=c)
    torch.testing.assert_close(s_ref.double(), direct, rtol=0, atol=2e-5 * direct.abs().max().item())
    w_op, b_op = lk.fold_text(e.float(), W.float(), gamma.float(), beta.float(), proj_bias=c.float())
    s_op = torch.ops.litelvlm.text_similarity(x.float(), w_op, b_op, 1e-6)
    torch.testing.assert_close(s_op.double(), direct, rtol=0, atol=2e-5 * direct.abs().max().item())


# -- the selection: fused_select / prune on a folded text with a bias --------------------------

CASES = [  # B, T, M, Dv, D, P, R (as tests/test_fused_select.py)
    (1, 2, 576, 256, 64, 96, 192),
    (3, 3, 577, 1000, 72, 40, 64),
    (3, 2, 5, 16, 8, 8, 3),
    (2, 0, 50, 16, 8, 8, 10),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("multi_text,order", [("union", "official"), ("intersection", "spatial"), (2, "official")])
def test_prune_with_bias_vs_reference(case, dtype, multi_text, order, device):
    B, T, M, Dv, D, P, R = case
    x = clip_inputs(B, T, M, Dv, D, P, dtype=dtype, device=device, seed=B + T + M)
    c = proj_bias(P, dtype=dtype, device=device, seed=M)
    min_votes = min_votes_of(multi_text)
    s = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5, proj_bias=c)
    c_ref = ref.contribution_direct(x.q_cls, x.keys, x.values)
    s_tol = 3e-5 * (s.abs().max().item() if s.numel() else 1)
    # Raw embeddings (prune folds them, with the bias) and a FoldedText folded once with the bias.
    folded = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, proj_bias=c)
    for text, kw in ((x.text_embeds, dict(proj_weight=x.proj_weight, ln_weight=x.ln_weight, ln_bias=x.ln_bias,
                                          proj_bias=c)),
                     (folded, {})):
        out = lk.prune(noncontig(x.hidden), text, x.q_cls, noncontig(x.keys), x.values, num_retain=R,
                       multi_text=multi_text, order=order, **kw)
        sel = (out.indices, out.num_similarity, out.from_similarity)
        notes = assert_selection_close(sel, s, c_ref, R, min_votes=min_votes, order=order, s_tol=s_tol, c_tol=1e-6)
        if notes:
            print("accepted near-tie differences:", notes)
    # The CPU / CUDA fused kernel directly, on (w, b) folded by the reference with the bias.
    w, b = ref.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, c)
    out = torch.ops.litelvlm.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, R, min_votes, 0, order,
                                          None, None)
    assert_selection_close(out, s, c_ref, R, min_votes=min_votes, order=order, s_tol=s_tol, c_tol=1e-6)
    # A per-text constant does not change a text's ranking (section 3.5): the selection on the
    # bias-free reference scores is the same, up to rounding-level near-ties.
    s0 = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5)
    assert_selection_close(out, s0, c_ref, R, min_votes=min_votes, order=order, s_tol=s_tol, c_tol=1e-6)


# -- argument errors: the C++ kernel, the torch composition and the fake say the same ---------------

BAD_BIAS = [  # proj_bias for P = 12, exception, text that must appear
    (torch.zeros(11), ValueError, r"proj_bias must have shape \[P\]=\[12\]"),
    (torch.zeros(13), ValueError, r"proj_bias must have shape \[P\]=\[12\]"),
    (torch.zeros(1, 12), ValueError, "proj_bias must have 1 dimensions"),
    (torch.zeros(()), ValueError, "proj_bias must have 1 dimensions"),
    (torch.zeros(12, dtype=torch.int32), TypeError, "proj_bias must have dtype"),
    (torch.zeros(12, dtype=torch.int64), TypeError, "proj_bias must have dtype"),
    (torch.zeros(12, dtype=torch.float64), TypeError, "proj_bias must have dtype"),
]


@pytest.mark.parametrize("bad,exc,text", BAD_BIAS)
def test_bad_proj_bias_raises_naming_it(bad, exc, text):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from litelvlm_kernels.ops import selection

    x = clip_inputs(2, 2, 20, 16, 8, 12, seed=1)
    args = (x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, bad)
    with pytest.raises(exc, match=text):
        OP(*args)  # C++ (select_checks.cpp)
    with pytest.raises(exc, match=text):
        selection._fold_text_default(*args)  # Python (_validate.py), as on CUDA
    with FakeTensorMode() as mode, pytest.raises(exc, match=text):
        OP(*(mode.from_tensor(t) for t in args))  # the fake impl
    with pytest.raises(exc, match=text):
        OP(*(t.to("meta") for t in args))  # the meta device: the default kernel's checks
    with pytest.raises(exc, match=text):
        lk.fold_text(*args[:4], proj_bias=bad)
    with pytest.raises(exc, match=text):
        lk.prune(x.hidden, x.text_embeds, x.q_cls, x.keys, x.values, num_retain=8, proj_weight=x.proj_weight,
                 ln_weight=x.ln_weight, ln_bias=x.ln_bias, proj_bias=bad)


def test_fake_shapes_with_bias():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = clip_inputs(3, 2, 1, 24, 8, 12, seed=2)
    with FakeTensorMode() as mode:
        w, b = OP(*(mode.from_tensor(t) for t in (x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)),
                  mode.from_tensor(proj_bias(12)))
        assert w.shape == (3, 2, 24) and b.shape == (3, 2) and w.dtype == b.dtype == torch.float32


# -- opcheck and torch.compile ------------------------------------------------------------------

def _opcheck_samples():
    x = clip_inputs(3, 2, 1, 24, 16, 12, seed=2)
    xb = clip_inputs(1, 3, 1, 1000, 16, 40, dtype=torch.bfloat16, seed=3)
    return [
        ((x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, proj_bias(12)), {}),
        ((x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias), {"proj_bias": proj_bias(12)}),
        ((x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias), {"proj_bias": None}),
        ((noncontig(xb.text_embeds), xb.proj_weight, xb.ln_weight, xb.ln_bias,
          noncontig(proj_bias(40, dtype=torch.bfloat16))), {}),
        ((x.text_embeds[:, :0], x.proj_weight, x.ln_weight, x.ln_bias, proj_bias(12).half()), {}),  # T = 0, mixed
    ]


@pytest.mark.parametrize("sample", range(5))
def test_opcheck_fold_text_with_bias(sample):
    args, kwargs = _opcheck_samples()[sample]
    torch.library.opcheck(OP.default, args, kwargs)


def _fold_and_score(text_embeds, proj_weight, ln_weight, ln_bias, c, hidden):
    w, b = lk.fold_text(text_embeds, proj_weight, ln_weight, ln_bias, proj_bias=c)
    return w, b, torch.ops.litelvlm.text_similarity(hidden, w, b, 1e-5)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_with_bias(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(_fold_and_score, fullgraph=True, dynamic=dynamic)
    for B, M, P in ((2, 40, 12), (3, 57, 20)):
        x = clip_inputs(B, 2, M, 24, 16, P, seed=B)
        args = (x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, proj_bias(P, seed=B), x.hidden)
        for got, want in zip(compiled(*args), _fold_and_score(*args)):
            assert torch.equal(got, want)


def test_siglip_head_of_transformers():
    """docs/ops.md's recipe on a (tiny, random) transformers SigLIP tower: the head's attention run on
    one token at a time returns that token's value path W_o (W_v LN(x_j) + b_v) + b_o exactly (a
    softmax over one key is 1), and the folded score matches e . (that vector)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SiglipVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=64, image_size=32, patch_size=8)
    torch.manual_seed(0)
    vm = transformers.SiglipVisionModel(cfg).eval()
    vm = getattr(vm, "vision_model", vm)  # transformers 4.x nests the tower; 5.x does not
    attn = vm.head.attention
    Dv = attn.embed_dim
    with torch.no_grad():
        for p in (attn.in_proj_bias, attn.out_proj.bias, vm.post_layernorm.bias):
            p.normal_()  # nonzero biases (they are initialised to 0)
        B, M, T = 2, 16, 3
        hidden = torch.randn(B, M, Dv) * 2
        e = torch.randn(B, T, Dv)
        y = vm.post_layernorm(hidden)
        probe = vm.head.probe.expand(B, 1, Dv)
        z = torch.cat([attn(probe, y[:, j:j + 1], y[:, j:j + 1])[0] for j in range(M)], dim=1)  # [B, M, Dv]
        direct = e @ z.transpose(1, 2)
        W_v, b_v = attn.in_proj_weight[2 * Dv:], attn.in_proj_bias[2 * Dv:]
        W_o, b_o = attn.out_proj.weight, attn.out_proj.bias
        w, b = lk.fold_text(e, W_o @ W_v, vm.post_layernorm.weight, vm.post_layernorm.bias,
                            proj_bias=W_o @ b_v + b_o)
        s = torch.ops.litelvlm.text_similarity(hidden, w, b, vm.post_layernorm.eps)
        torch.testing.assert_close(s, direct, rtol=0, atol=_tol(direct))
        # Without the bias the scores are off by e . c: the bias is needed for the values.
        w0, b0 = lk.fold_text(e, W_o @ W_v, vm.post_layernorm.weight, vm.post_layernorm.bias)
        s0 = torch.ops.litelvlm.text_similarity(hidden, w0, b0, vm.post_layernorm.eps)
        assert (s0 - direct).abs().max() > 100 * _tol(direct)
