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
