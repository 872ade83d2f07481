"""prune(): argument errors name the argument; opcheck of every selection op; torch.compile."""

import pytest
import torch

import litelvlm_kernels as lk
from litelvlm_kernels.synthetic import clip_inputs


@pytest.fixture
def x():
    return clip_inputs(2, 2, 20, 16, 8, 12, seed=1)


def _kw(x, **over):
    kw = dict(num_retain=8, proj_weight=x.proj_weight, ln_weight=x.ln_weight, ln_bias=x.ln_bias)
    kw.update(over)
    return kw


def _args(x, **over):
    a = dict(hidden=x.hidden, text=x.text_embeds, q_cls=x.q_cls, keys=x.keys, values=x.values)
    a.update(over)
    return a


BAD = [  # (positional overrides, keyword overrides, exception, text that must appear)
    ({}, {"num_retain": 0}, ValueError, "num_retain"),
    ({}, {"num_retain": -3}, ValueError, "num_retain"),
    ({}, {"num_retain": 2.5}, TypeError, "num_retain"),
    ({}, {"num_retain": 1}, ValueError, "T=2"),  # T > R'
    ({}, {"multi_text": "both"}, ValueError, "multi_text"),
    ({}, {"multi_text": -1}, ValueError, "multi_text"),
    ({}, {"order": "raster"}, ValueError, "order"),
    ({}, {"k_per_text": 0}, ValueError, "k_per_text"),
    ({}, {"k_per_text": 5}, ValueError, "k_per_text"),  # 5 x 2 > 8
    ({}, {"ln_eps": -1.0}, ValueError, "ln_eps"),
    ({}, {"proj_weight": None}, ValueError, "proj_weight"),
    ({}, {"ln_bias": None}, ValueError, "ln_bias"),
    ({}, {"num_texts": "2"}, TypeError, "num_texts"),
    ({}, {"num_texts": torch.ones(3, dtype=torch.int64)}, ValueError, "num_texts"),
    ({}, {"num_texts": torch.ones(2)}, TypeError, "num_texts"),
    ({"hidden": "x"}, {}, TypeError, "hidden"),
    ({"hidden": torch.zeros(2, 20)}, {}, ValueError, "hidden"),
    ({"hidden": torch.zeros(2, 20, 16, dtype=torch.int32)}, {}, TypeError, "hidden"),
    ({"hidden": torch.zeros(3, 20, 16)}, {}, ValueError, "hidden"),
    ({"text": [1, 2]}, {}, TypeError, "text"),
    ({"text": torch.zeros(2, 2, 5)}, {}, ValueError, "text_embeds"),
    ({"q_cls": torch.zeros(2, 9)}, {}, ValueError, "q_cls"),
    ({"q_cls": torch.zeros(2, 8, dtype=torch.float64)}, {}, TypeError, "q_cls"),
    ({"keys": torch.zeros(2, 21, 8)}, {}, ValueError, "keys"),
    ({"values": torch.zeros(2, 20, 9)}, {}, ValueError, "values"),
    ({"values": torch.zeros(2, 20)}, {}, ValueError, "values"),
]


@pytest.mark.parametrize("pos,kw,exc,text", BAD)
def test_bad_arguments_raise_naming_the_argument(x, pos, kw, exc, text):
    with pytest.raises(exc, match=text):
        lk.prune(**_args(x, **pos), **_kw(x, **kw))


def test_bad_text_weights(x):
    with pytest.raises(ValueError, match="ln_weight"):
        lk.prune(**_args(x), **_kw(x, ln_weight=torch.ones(7)))
    with pytest.raises(ValueError, match="proj_weight"):
        lk.prune(**_args(x), **_kw(x, proj_weight=torch.ones(12, 7)))
    folded = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    with pytest.raises(ValueError, match="Dv"):
        lk.prune(x.hidden[..., :8], folded, x.q_cls, x.keys, x.values, num_retain=8)


def test_empty_batches_and_tokens():
    for B, M in ((0, 20), (2, 0)):
        x = clip_inputs(B, 0 if M == 0 else 2, M, 16, 8, 12)
        out = lk.prune(x.hidden, x.text_embeds, x.q_cls, x.keys, x.values, num_retain=8,
                       proj_weight=x.proj_weight, ln_weight=x.ln_weight, ln_bias=x.ln_bias)
        r = min(8, M)
        assert out.indices.shape == (B, r) and out.tokens.shape == (B, r, 16)
        assert out.num_similarity.shape == (B,) and out.from_similarity.shape == (B, r)


def _op_samples():
    x = clip_inputs(3, 2, 33, 24, 16, 12, seed=2)
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    s = torch.ops.litelvlm.text_similarity(x.hidden, w, b, 1e-5)
    c = torch.ops.litelvlm.cls_contribution(x.q_cls, x.keys, x.values)
    nt = torch.tensor([2, 1, 0])
    return [
        (torch.ops.litelvlm.fold_text.default, (x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias), {}),
        (torch.ops.litelvlm.text_similarity.default, (x.hidden, w, b, 1e-5), {}),
        (torch.ops.litelvlm.text_similarity.default, (x.hidden.half(), w[:1], b[:1], 1e-6), {}),
        (torch.ops.litelvlm.cls_contribution.default, (x.q_cls, x.keys, x.values), {}),
        (torch.ops.litelvlm.cls_contribution.default, (x.q_cls.bfloat16(), x.keys.bfloat16(), x.values.bfloat16()),
         {"scale": 0.5}),
        (torch.ops.litelvlm.select_tokens.default, (s, c, 10), {}),
        (torch.ops.litelvlm.select_tokens.default, (s, c, 10, 0, 4, "spatial", nt), {}),
        (torch.ops.litelvlm.fused_select.default, (x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 12), {}),
        (torch.ops.litelvlm.fused_select.default,
         (x.hidden, w[:1], b[:1], 1e-5, x.q_cls, x.keys, x.values, 12, 2, 6, "spatial", nt, 0.3), {}),
    ]


@pytest.mark.parametrize("sample", range(9))
def test_opcheck(sample):
    op, args, kwargs = _op_samples()[sample]
    torch.library.opcheck(op, args, kwargs)


def _prune_fn(hidden, text_w, text_b, q_cls, keys, values):
    out = lk.prune(hidden, lk.FoldedText(text_w, text_b), q_cls, keys, values, num_retain=16, order="spatial")
    return out.indices, out.tokens, out.num_similarity, out.from_similarity


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(_prune_fn, fullgraph=True, dynamic=dynamic)
    for B, M in ((2, 40), (3, 57)):
        x = clip_inputs(B, 2, M, 24, 16, 12, seed=B)
        w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
        got = compiled(x.hidden, w, b, x.q_cls, x.keys, x.values)
        want = _prune_fn(x.hidden, w, b, x.q_cls, x.keys, x.values)
        for g, e in zip(got, want):
            assert torch.equal(g, e)


# -- each rule is written once per language: C++ (CPU kernels) and Python (fakes, CUDA, default) ----

def _fused_args(x, **over):
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    a = dict(hidden=x.hidden, w=w, b=b, ln_eps=1e-5, q_cls=x.q_cls, keys=x.keys, values=x.values, num_retain=8,
             min_votes=1, k_per_text=0, order="official", num_texts=None, scale=None)
    a.update(over)
    return a


OP_BAD = [  # overrides of fused_select's arguments, exception, text that must appear
    ({"num_retain": -1}, ValueError, "num_retain"),
    ({"num_retain": 1}, ValueError, "T=2"),
    ({"min_votes": -2}, ValueError, "min_votes"),
    ({"k_per_text": -1}, ValueError, "k_per_text"),
    ({"k_per_text": 5}, ValueError, "k_per_text"),
    ({"order": "raster"}, ValueError, "order"),
    ({"ln_eps": -1.0}, ValueError, "ln_eps"),
    ({"ln_eps": float("nan")}, ValueError, "ln_eps"),
    ({"hidden": torch.zeros(2, 20)}, ValueError, "hidden"),
    ({"hidden": torch.zeros(2, 20, 16, dtype=torch.float64)}, TypeError, "hidden"),
    ({"hidden": torch.zeros(3, 20, 16)}, ValueError, "hidden"),
    ({"hidden": torch.zeros(2, 20, 15)}, ValueError, "Dv"),
    ({"w": torch.zeros(2, 2, 16, dtype=torch.int32)}, TypeError, "w must"),
    ({"b": torch.zeros(2, 3)}, ValueError, "b must"),
    ({"q_cls": torch.zeros(2, 9)}, ValueError, "q_cls"),
    ({"keys": torch.zeros(2, 21, 8)}, ValueError, "keys"),
    ({"values": torch.zeros(2, 20, 9)}, ValueError, "values"),
    ({"values": torch.zeros(2, 20, 8, dtype=torch.int64)}, TypeError, "values"),
    ({"num_texts": torch.ones(2)}, TypeError, "num_texts"),
    ({"num_texts": torch.ones(3, dtype=torch.int64)}, ValueError, "num_texts"),
    ({"num_texts": torch.ones(2, 1, dtype=torch.int32)}, ValueError, "num_texts"),
]


@pytest.mark.parametrize("over,exc,text", OP_BAD)
def test_cpp_and_python_rules_agree(x, over, exc, text):
    """The CPU kernel's C++ checks, the Python default kernel's and the fake's raise the same error."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from litelvlm_kernels.ops import selection

    args = _fused_args(x, **over)
    with pytest.raises(exc, match=text):
        torch.ops.litelvlm.fused_select(**args)  # C++ (select_checks.cpp)
    with pytest.raises(exc, match=text):
        selection._fused_select_default(**args)  # Python (_validate.py), as on CUDA
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        with pytest.raises(exc, match=text):
            torch.ops.litelvlm.fused_select(**fake)  # the fake impl


def test_fold_text_rules_agree(x):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from litelvlm_kernels.ops import selection

    bad = (x.text_embeds, x.proj_weight, torch.ones(7), x.ln_bias)
    with pytest.raises(ValueError, match="ln_weight"):
        torch.ops.litelvlm.fold_text(*bad)
    with pytest.raises(ValueError, match="ln_weight"):
        selection._fold_text_default(*bad)
    with FakeTensorMode() as mode, pytest.raises(ValueError, match="ln_weight"):
        torch.ops.litelvlm.fold_text(*(mode.from_tensor(t) for t in bad))


def test_num_retain_zero_and_empty_rows_through_the_op():
    """The ops accept num_retain = 0 (with T = 0) and M = 0: empty outputs, |S| = 0."""
    x = clip_inputs(3, 0, 10, 16, 8, 12, seed=4)
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    idx, ns, fs = torch.ops.litelvlm.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 0)
    assert idx.shape == (3, 0) and fs.shape == (3, 0) and ns.tolist() == [0, 0, 0]
    idx, ns, fs = torch.ops.litelvlm.fused_select(x.hidden[:, :0], w, b, 1e-5, x.q_cls, x.keys[:, :0],
                                                  x.values[:, :0], 5)
    assert idx.shape == (3, 0) and ns.tolist() == [0, 0, 0]
