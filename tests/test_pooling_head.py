"""SigLIP's attention-pooling head as [CLS]: head_qkv and map_contribution (docs/design.md section 10).

- the derivation, against the real module: sum_j W_o [a_hj v_hj]_h + b_o == head.attention(probe, y, y)[0]
  on tiny random transformers SiglipVisionModel towers (fp64: to 1e-12; fp32: within a multiple of torch's
  own fp32 error against the fp64 run), and the [EOS]-similarity analog under uniform attention;
- map_contribution("exact") against reference.map_contribution_direct, "heads" against its direct formula,
  and when "heads" equals "exact" (orthogonal W_o) and when not;
- argument errors name the argument; torch.compile(fullgraph=True).
"""

import copy
import math

import pytest
import torch

from litelvlm_kernels import head_qkv, map_contribution
from litelvlm_kernels.pooling_head import map_patch_terms
from litelvlm_kernels.reference import map_contribution_direct

# -- tiny SigLIP towers ----------------------------------------------------------------------------------

TOWERS = {  # hidden, heads, layers, image px (patch 8): M = 16, 49, 64
    "d64-h4-m16": (64, 4, 2, 32),
    "d48-h3-m49": (48, 3, 3, 56),
    "d64-h8-m64": (64, 8, 2, 64),
}


def _tower(name, seed):
    """A random SiglipVisionModel with its pooling head, and the head randomised with a decent std.

    nn.MultiheadAttention starts with zero in_proj / out_proj biases and torch's init keeps the logits
    small; std 0.2 on W_q, W_k (D = 64, LN'd y) gives logits of std ~2.5 across patches: far from
    uniform attention, so the softmax and the per-head weights are really exercised.
    """
    transformers = pytest.importorskip("transformers")
    D, H, L, img = TOWERS[name]
    torch.manual_seed(seed)
    cfg = transformers.SiglipVisionConfig(hidden_size=D, intermediate_size=2 * D, num_hidden_layers=L,
                                          num_attention_heads=H, image_size=img, patch_size=8,
                                          vision_use_head=True)  # 4.x reads it with getattr(..., True)
    model = transformers.SiglipVisionModel(cfg).eval()
    tower = getattr(model, "vision_model", model)  # transformers 4.x nests SiglipVisionTransformer
    head = tower.head
    with torch.no_grad():
        head.probe.normal_(0, 1)
        head.attention.in_proj_weight.normal_(0, 0.2)
        head.attention.in_proj_bias.normal_(0, 0.2)
        head.attention.out_proj.weight.normal_(0, D ** -0.5)
        head.attention.out_proj.bias.normal_(0, 0.2)
        tower.post_layernorm.weight.normal_(1, 0.2)
        tower.post_layernorm.bias.normal_(0, 0.2)
    return model, tower, head


def _y(model, tower, B, seed):
    """y = post_layernorm(the last layer's output): what the model's head pools.

    The last layer's output is the encoder's ``last_hidden_state``, not ``hidden_states[-1]`` of the
    model's forward: with transformers 4.57.1 that entry is not the last layer's output.
    """
    img = model.config.image_size
    px = torch.randn(B, 3, img, img, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(px)
        y = tower.post_layernorm(tower.encoder(inputs_embeds=tower.embeddings(px)).last_hidden_state)
        assert torch.equal(y, out.last_hidden_state)
        assert torch.equal(tower.head(y), out.pooler_output)
    return y


def _attention(head, y):
    """The head's own attention output [B, D] (the module, not a formula)."""
    B, _, D = y.shape
    with torch.no_grad():
        return head.attention(head.probe.reshape(1, 1, D).expand(B, 1, D), y, y)[0][:, 0]


def _pooled_from_terms(head, y):
    """sum_j W_o [a_hj v_hj]_h + b_o from the library's per-patch terms."""
    with torch.no_grad():
        q, k, v = head_qkv(head, y)
        terms = map_patch_terms(q, k, v, head.attention.out_proj.weight, head.attention.num_heads)
        return terms.sum(1) + head.attention.out_proj.bias


@pytest.mark.parametrize("name", list(TOWERS))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("B", [1, 3])
def test_patch_terms_sum_to_the_heads_attention(name, seed, B):
    model, tower, head = _tower(name, seed)
    y = _y(model, tower, B, seed + 10)
    head64, y64 = copy.deepcopy(head).double(), y.double()
    ref64 = _attention(head64, y64)
    # The derivation itself, without fp32 rounding in the way: the library's fp64 path == the module's.
    torch.testing.assert_close(_pooled_from_terms(head64, y64), ref64, rtol=0, atol=1e-12)
    # fp32: our error against the fp64 run within a multiple of torch's own (flash-attention's rule).
    # 4x: over 135 cases (these towers x 15 seeds x B = 1, 3, 5) the ratio was 1.02 at the median,
    # 2.4 at most (we sum M per-patch GEMM outputs, torch does a@v then one GEMM: errors of one
    # size); 4 leaves room for other BLAS kernels' rounding without admitting a wrong formula.
    ours = (_pooled_from_terms(head, y).double() - ref64).abs().max().item()
    torch_err = (_attention(head, y).double() - ref64).abs().max().item()
    floor = 2 ** -23 * ref64.abs().max().item()  # one fp32 ulp of the output: torch may be exact by luck
    assert ours <= 4 * max(torch_err, floor), (ours, torch_err)


@pytest.mark.parametrize("name", ["d64-h4-m16", "d48-h3-m49"])
@pytest.mark.parametrize("B", [1, 3])
def test_uniform_attention_gives_the_mean_similarity(name, B):
    """[EOS] analog: with W_q = 0, b_q = 0 every a_hj = 1/M, and for any text e
    e . attention_output == mean_j s_j with s_j = e . (W_o (W_v y_j + b_v) + b_o)."""
    model, tower, head = _tower(name, B)
    y = _y(model, tower, B, 7)
    D, M = y.shape[-1], y.shape[1]
    with torch.no_grad():
        head.attention.in_proj_weight[:D].zero_()
        head.attention.in_proj_bias[:D].zero_()
    e = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    head64, y64, e64 = copy.deepcopy(head).double(), y.double(), e.double()
    for h, yy, ee, atol in ((head64, y64, e64, 1e-12), (head, y, e, 1e-5)):
        with torch.no_grad():
            w, b = h.attention.in_proj_weight, h.attention.in_proj_bias
            w_o, b_o = h.attention.out_proj.weight, h.attention.out_proj.bias
            s = (yy @ w[2 * D:].t() + b[2 * D:]) @ w_o.t() @ ee.t() + b_o @ ee.t()  # [B, M, T], token by token
            torch.testing.assert_close(_attention(h, yy) @ ee.t(), s.mean(1), rtol=0, atol=atol)
            # and the contribution under uniform attention is ||W_o v_j|| / M
            q, k, v = head_qkv(h, yy)
            c = map_contribution(q, k, v, w_o, h.attention.num_heads)
            torch.testing.assert_close(c, torch.linalg.vector_norm(v @ w_o.t(), dim=-1) / M, rtol=atol, atol=0)


def test_head_qkv_matches_the_modules_projections():
    """q, k, v as nn.MultiheadAttention computes them, on any duck-typed head (no transformers needed)."""
    torch.manual_seed(0)
    D, H = 32, 4
    head = torch.nn.Module()
    head.probe = torch.nn.Parameter(torch.randn(1, 1, D))
    head.attention = torch.nn.MultiheadAttention(D, H, batch_first=True)
    with torch.no_grad():
        head.attention.in_proj_bias.normal_(0, 0.3)
        y = torch.randn(2, 11, D)
        q, k, v = head_qkv(head, y)
        w, b = head.attention.in_proj_weight, head.attention.in_proj_bias
        torch.testing.assert_close(q, head.probe[0] @ w[:D].t() + b[:D])
        torch.testing.assert_close(k, y @ w[D:2 * D].t() + b[D:2 * D])
        torch.testing.assert_close(v, y @ w[2 * D:].t() + b[2 * D:])
        assert q.shape == (1, D) and k.shape == v.shape == (2, 11, D)
        got = map_patch_terms(q, k, v, head.attention.out_proj.weight, H).sum(1) + head.attention.out_proj.bias
        torch.testing.assert_close(got, _attention(head, y), rtol=1e-5, atol=1e-5)


# -- map_contribution against the reference ----------------------------------------------------------------

def _inputs(B, M, D, dtype, *, q_rows=None, noncontig=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(q_rows or B, D, generator=g)
    if noncontig:  # keys / values as head_qkv returns them: strided views of one [B, M, 2D] tensor
        kv = torch.randn(B, M, 2 * D, generator=g)
        keys, values = kv[..., :D], kv[..., D:]
        assert not keys.is_contiguous()
    else:
        keys, values = torch.randn(B, M, D, generator=g), torch.randn(B, M, D, generator=g)
    w_o = torch.randn(D, D, generator=g) / math.sqrt(D)
    return [t.to(dtype) for t in (q, keys, values, w_o)]


TOL = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}  # fp32 math on upcast inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,M,D,H", [(1, 49, 32, 4), (3, 49, 48, 3), (3, 729, 32, 4), (2, 577, 16, 2)])
@pytest.mark.parametrize("q_rows", [1, None])
@pytest.mark.parametrize("noncontig", [False, True])
def test_exact_matches_reference(dtype, B, M, D, H, q_rows, noncontig):
    q, keys, values, w_o = _inputs(B, M, D, dtype, q_rows=q_rows, noncontig=noncontig, seed=B + M)
    c = map_contribution(q, keys, values, w_o, H)
    assert c.dtype == torch.float32 and c.shape == (B, M)
    want = map_contribution_direct(q, keys, values, w_o, H)
    torch.testing.assert_close(c, want, rtol=TOL[dtype], atol=TOL[dtype] * want.abs().max().item())
    # the low-precision inputs are upcast before any arithmetic: same result as fp32 inputs
    assert torch.equal(c, map_contribution(*[t.float() for t in (q, keys, values, w_o)], H))


def _heads_direct(q, keys, values, H):
    """c_j = sqrt(sum_h || a_hj v_hj ||^2), per row and head as written."""
    B, M, D = keys.shape
    dh = D // H
    c = torch.zeros(B, M, dtype=torch.float64)
    for b in range(B):
        qb = q[b if q.shape[0] > 1 else 0].double()
        for h in range(H):
            cols = slice(h * dh, (h + 1) * dh)
            a = torch.softmax(keys[b, :, cols].double() @ qb[cols] / math.sqrt(dh), dim=0)
            c[b] += (torch.linalg.vector_norm(a[:, None] * values[b, :, cols].double(), dim=-1)) ** 2
    return c.sqrt().float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,M,D,H,q_rows", [(1, 49, 32, 4, 1), (3, 729, 32, 4, None), (3, 50, 48, 3, 1)])
def test_heads_matches_its_direct_formula(dtype, B, M, D, H, q_rows):
    q, keys, values, w_o = _inputs(B, M, D, dtype, q_rows=q_rows, noncontig=True, seed=M)
    c = map_contribution(q, keys, values, None, H, mode="heads")
    assert c.dtype == torch.float32 and c.shape == (B, M)
    want = _heads_direct(q, keys, values, H)
    torch.testing.assert_close(c, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert torch.equal(c, map_contribution(q, keys, values, w_o, H, mode="heads"))  # W_o checked, unused


def test_heads_equals_exact_only_for_an_orthogonal_out_proj():
    B, M, D, H = 2, 49, 32, 4
    q, keys, values, w_o = _inputs(B, M, D, torch.float32, seed=5)
    heads = map_contribution(q, keys, values, None, H, mode="heads")
    Q = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(1))).Q
    torch.testing.assert_close(map_contribution(q, keys, values, Q, H), heads, rtol=1e-5, atol=0)
    torch.testing.assert_close(map_contribution(q, keys, values, 2.5 * Q, H), 2.5 * heads, rtol=1e-5, atol=0)
    # a random (non-orthogonal) W_o: the norms differ by tens of percent, not by rounding
    rel = (map_contribution(q, keys, values, w_o, H) / heads - 1).abs()
    assert rel.max() > 0.1 and rel.median() > 0.02, (rel.max(), rel.median())


def test_empty_shapes():
    for B, M in ((0, 5), (2, 0)):
        q, keys, values, w_o = _inputs(B, M, 8, torch.float32)
        for mode in ("exact", "heads"):
            assert map_contribution(q[:1] if B == 0 else q, keys, values, w_o, 2, mode=mode).shape == (B, M)


# -- errors ------------------------------------------------------------------------------------------------

def _good():
    q, keys, values, w_o = _inputs(2, 9, 8, torch.float32)
    return dict(q=q, keys=keys, values=values, out_weight=w_o, num_heads=2)


BAD = [
    ({"q": torch.randn(3, 8)}, ValueError, "q must be"),
    ({"q": torch.randn(8)}, ValueError, "q must be"),
    ({"q": torch.randn(1, 7)}, ValueError, "q must be"),
    ({"q": [0.0] * 8}, TypeError, "q must be"),
    ({"keys": torch.randn(9, 8)}, ValueError, "keys must be"),
    ({"keys": None}, TypeError, "keys must be"),
    ({"values": torch.randn(2, 9, 8, dtype=torch.float64).to("meta")}, ValueError, "values must be on"),
    ({"keys": torch.randn(2, 9, 8).int()}, ValueError, "keys must be"),
    ({"values": torch.randn(2, 8, 8)}, ValueError, "values must"),
    ({"out_weight": torch.randn(8, 4)}, ValueError, "out_weight must"),
    ({"out_weight": None}, ValueError, "out_weight"),
    ({"out_weight": "w"}, TypeError, "out_weight"),
    ({"num_heads": 3}, ValueError, "num_heads"),
    ({"num_heads": 0}, ValueError, "num_heads"),
    ({"num_heads": True}, ValueError, "num_heads"),
    ({"num_heads": 2.0}, ValueError, "num_heads"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_arguments_name_the_argument(case):
    over, exc, text = BAD[case]
    args = {**_good(), **over}
    with pytest.raises(exc, match=text):
        map_contribution(**args)


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        map_contribution(**_good(), mode="fast")


def test_head_qkv_errors_name_head_or_y():
    D = 8
    sep = torch.nn.Module()  # separate q/k/v projection weights: in_proj_weight is None
    sep.probe = torch.nn.Parameter(torch.randn(1, 1, D))
    sep.attention = torch.nn.MultiheadAttention(D, 2, kdim=4, vdim=4, batch_first=True)
    with pytest.raises(ValueError, match="head"):
        head_qkv(sep, torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="head"):
        head_qkv(torch.nn.Linear(D, D), torch.randn(1, 3, D))
    ok = torch.nn.Module()
    ok.probe = torch.nn.Parameter(torch.randn(1, 1, D))
    ok.attention = torch.nn.MultiheadAttention(D, 2, batch_first=True)
    for y, exc in ((torch.randn(3, D), ValueError), (torch.randn(1, 3, D + 1), ValueError),
                   (torch.randn(1, 3, D).half(), ValueError), ("y", TypeError)):
        with pytest.raises(exc, match="y"):
            head_qkv(ok, y)
    bias_k = torch.nn.Module()
    bias_k.probe = ok.probe
    bias_k.attention = torch.nn.MultiheadAttention(D, 2, add_bias_kv=True, batch_first=True)
    with pytest.raises(ValueError, match="head"):
        head_qkv(bias_k, torch.randn(1, 3, D))


# -- torch.compile -----------------------------------------------------------------------------------------

def _both(q, keys, values, w_o):
    return map_contribution(q, keys, values, w_o, 4), map_contribution(q, keys, values, None, 4, mode="heads")


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    # aot_eager: the whole graph through dynamo and AOTAutograd in a second; Inductor's C++ codegen
    # would cost tens of seconds on a 2-core machine and adds nothing to what is checked here.
    compiled = torch.compile(_both, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for B, M, q_rows in ((2, 49, 1), (3, 50, None)):
        args = _inputs(B, M, 32, torch.float32, q_rows=q_rows, noncontig=True, seed=M)
        for got, want in zip(compiled(*args), _both(*args)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
