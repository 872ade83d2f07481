"""fused_select and prune vs reference.prune: the whole method on raw CLIP-shaped tensors."""

import itertools

import pytest
import torch
from _inputs import noncontig

import litelvlm_kernels as lk
from litelvlm_kernels import reference as ref
from litelvlm_kernels._validate import min_votes_of
from litelvlm_kernels.synthetic import clip_inputs
from litelvlm_kernels.testing import assert_selection_close

CASES = [  # B, T, M, Dv, D, P, R
    (1, 2, 576, 256, 64, 96, 192),
    (3, 3, 577, 1000, 72, 40, 64),
    (2, 1, 196, 64, 32, 32, 196),
    (3, 2, 5, 16, 8, 8, 3),
    (0, 2, 9, 16, 8, 8, 4),
    (2, 0, 50, 16, 8, 8, 10),
]


def _ref_scores(x, scale=None):
    s = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5)
    return s, ref.contribution_direct(x.q_cls, x.keys, x.values, scale)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("multi_text,order", itertools.product(["union", "intersection", 2], ["official", "spatial"]))
def test_prune_vs_reference(case, dtype, multi_text, order, device):
    B, T, M, Dv, D, P, R = case
    x = clip_inputs(B, T, M, Dv, D, P, dtype=dtype, device=device, seed=B + T + M)
    min_votes = min_votes_of(multi_text)
    out = lk.prune(noncontig(x.hidden), x.text_embeds, x.q_cls, noncontig(x.keys), x.values, num_retain=R,
                   proj_weight=x.proj_weight, ln_weight=x.ln_weight, ln_bias=x.ln_bias, multi_text=multi_text,
                   order=order)
    s, c = _ref_scores(x)
    notes = assert_selection_close((out.indices, out.num_similarity, out.from_similarity), s, c, R,
                                   min_votes=min_votes, order=order,
                                   s_tol=3e-5 * (s.abs().max().item() if s.numel() else 1), c_tol=1e-6)
    if notes:
        print("accepted near-tie differences:", notes)
    # The gathered tokens are exactly hidden at the kept indices.
    assert out.tokens.dtype == dtype
    want = torch.gather(x.hidden, 1, out.indices.unsqueeze(-1).expand(-1, -1, Dv))
    assert torch.equal(out.tokens, want)


def test_folded_text_is_reused_and_broadcast(device):
    """One text for 4 video frames (Bt = 1), folded once, num_texts and k_per_text per call."""
    x = clip_inputs(4, 3, 196, 128, 64, 32, text_batch=1, device=device, seed=11)
    text = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    num_texts = torch.tensor([3, 2, 1, 0], device=device)
    for k in (None, 10):
        out = lk.prune(x.hidden, text, x.q_cls, x.keys, x.values, num_retain=64, num_texts=num_texts,
                       k_per_text=k, return_tokens=False)
        assert out.tokens is None
        s, c = _ref_scores(x)
        assert_selection_close((out.indices, out.num_similarity, out.from_similarity), s, c, 64,
                               k_per_text=k or 0, num_texts=num_texts, s_tol=1e-4 * s.abs().max().item())
    assert out.num_similarity[3] == 0  # a row without texts is pure context selection


def test_duplicated_tokens(device):
    """Duplicated hidden/key/value rows tie in real arithmetic. A batched GEMM may round twin columns
    differently, so the fused path is held to the near-tie rule; select_tokens' exact tie rule is
    tested on given scores in test_select_tokens.py."""
    x = clip_inputs(2, 2, 64, 32, 16, 16, device=device, seed=5)
    for t in (x.hidden, x.keys, x.values):
        t[:, 32:] = t[:, :32]
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    for order in ("official", "spatial"):
        out = torch.ops.litelvlm.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 20, 1, 0, order,
                                              None, None)
        s, c = _ref_scores(x)
        assert_selection_close(out, s, c, 20, order=order, s_tol=1e-5 * s.abs().max().item(), c_tol=1e-7)


def test_nan_inputs_follow_the_rules(device):
    x = clip_inputs(2, 2, 40, 32, 16, 16, device=device, seed=6)
    x.hidden[0, 3, 0] = float("nan")  # token 3's similarity is NaN: never in a bottom-k while numbers remain
    x.keys[1, 7, 2] = float("nan")  # row 1: every a_j is NaN: recovery by index
    text = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    out = lk.prune(x.hidden, text, x.q_cls, x.keys, x.values, num_retain=12, order="spatial")
    s, c = _ref_scores(x)
    assert_selection_close((out.indices, out.num_similarity, out.from_similarity), s, c, 12, order="spatial",
                           s_tol=1e-4 * s.nan_to_num().abs().max().item())
    assert 3 not in out.indices[0, out.from_similarity[0]].tolist()


# -- the C++ CPU kernel: parallel splits, accumulation, layouts, the default kernel -----------------

def _with_threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def test_parallel_split_does_not_change_results():
    """B < threads splits the tokens across threads, B >= threads the rows (csrc/fused_select_cpu.cpp):
    every token's score is computed the same way whatever the split, so the results are bit-identical
    to one thread and to the same image inside a batch (threads 2, 3: rows; 4 and B = 1: tokens)."""
    x = clip_inputs(3, 3, 1500, 256, 64, 32, text_batch=1, seed=21)  # 1500 tokens x 1.5 KiB: many tasks
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    ops = torch.ops.litelvlm

    def run(B):
        args = (x.hidden[:B], w, b, 1e-5, x.q_cls[:B], x.keys[:B], x.values[:B])
        return (ops.text_similarity(*args[:4]), ops.cls_contribution(*args[4:]),
                ops.fused_select(*args, 300, 1, 0, "official", None, None))

    one = _with_threads(1, lambda: run(3))
    for threads in (2, 3, 4):
        many = _with_threads(threads, lambda: run(3))
        single = _with_threads(threads, lambda: run(1))
        assert torch.equal(many[0], one[0]) and torch.equal(many[1], one[1])
        assert all(torch.equal(g, e) for g, e in zip(many[2], one[2]))
        assert torch.equal(single[0], one[0][:1]) and torch.equal(single[1], one[1][:1])
        assert all(torch.equal(g, e[:1]) for g, e in zip(single[2], one[2]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_fp32(dtype):
    """Sums of 4096 squares of |x| ~ 100 reach 4e7, far past fp16's 65504: accumulating in the
    input dtype would give inf / garbage; the kernel reads fp16 / bf16 and accumulates in fp32."""
    x = clip_inputs(2, 2, 64, 4096, 4096, 32, dtype=dtype, outliers=0, seed=22)
    hidden, keys, values = (t * 100 for t in (x.hidden, x.keys, x.values))
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    s = torch.ops.litelvlm.text_similarity(hidden, w, b, 1e-5)
    c = torch.ops.litelvlm.cls_contribution(x.q_cls, keys, values)
    s_ref = ref.similarity_direct(hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5)
    c_ref = ref.contribution_direct(x.q_cls, keys, values)
    assert torch.isfinite(s).all() and torch.isfinite(c).all()
    torch.testing.assert_close(s, s_ref, rtol=0, atol=2e-5 * s_ref.abs().max().item())
    torch.testing.assert_close(c, c_ref, rtol=2e-5, atol=1e-3)
    out = torch.ops.litelvlm.fused_select(hidden, w, b, 1e-5, x.q_cls, keys, values, 16, 1, 0, "official",
                                          None, None)
    assert_selection_close(out, s_ref, c_ref, 16, s_tol=3e-5 * s_ref.abs().max().item(), c_tol=1e-3)


def _layouts(t):
    """The same values as contiguous, every-dimension strided, channel-strided (stride(2) != 1) and
    batch-broadcast-free permuted layouts."""
    return [t, noncontig(t), t.transpose(1, 2).contiguous().transpose(1, 2), t.permute(1, 0, 2).contiguous()
            .permute(1, 0, 2)]


def test_strided_layouts_give_identical_results():
    x = clip_inputs(2, 2, 77, 40, 24, 16, seed=23)
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    want = torch.ops.litelvlm.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 20)
    for h, k, v in zip(_layouts(x.hidden), _layouts(x.keys), reversed(_layouts(x.values))):
        got = torch.ops.litelvlm.fused_select(h, noncontig(w), b.t().contiguous().t(), 1e-5, noncontig(x.q_cls),
                                              k, v, 20)
        assert all(torch.equal(g, e) for g, e in zip(got, want))


@pytest.mark.parametrize("order", ["official", "spatial"])
@pytest.mark.parametrize("min_votes", [1, 0, 2])
def test_cpp_kernel_vs_torch_composed_default(order, min_votes):
    """The C++ CPU kernel and the torch-composed default kernel (other devices) agree up to near-ties."""
    from litelvlm_kernels.ops import selection

    x = clip_inputs(3, 3, 300, 96, 48, 32, text_batch=1, seed=24)
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    nt = torch.tensor([3, 1, 0])
    args = (x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 90, min_votes, 0, order, nt, 0.7)
    got = torch.ops.litelvlm.fused_select(*args)
    s = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5)
    c = ref.contribution_direct(x.q_cls, x.keys, x.values, 0.7)
    for out in (got, selection._fused_select_default(*args)):
        assert_selection_close(out, s, c, 90, min_votes=min_votes, order=order, num_texts=nt,
                               s_tol=3e-5 * s.abs().max().item(), c_tol=1e-6)


def test_many_texts_and_large_rows():
    """T = 9 texts (three passes of up to 4 texts over each hidden row) and M = 4099."""
    x = clip_inputs(1, 9, 4099, 72, 40, 24, seed=25)
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    s = torch.ops.litelvlm.text_similarity(x.hidden, w, b, 1e-5)
    s_ref = ref.similarity_direct(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, 1e-5)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=2e-5 * s_ref.abs().max().item())
    for mv in (1, 0, 3):
        out = torch.ops.litelvlm.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 576, mv)
        assert_selection_close(out, s_ref, ref.contribution_direct(x.q_cls, x.keys, x.values), 576, min_votes=mv,
                               s_tol=3e-5 * s_ref.abs().max().item(), c_tol=1e-7)
