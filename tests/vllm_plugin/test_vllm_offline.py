"""vLLM + the plugin (offline ``LLM``) against ``enable_litelvlm`` on the same weights, R = 64 < M = 576.

Token for token (greedy, 8 new tokens, an LLM sharpened so its tokens depend on the selection)
and index for index (the kept indices recorded inside the engine against the transformers
side's report), for T = 1 and T = 2 expressions; the engine's own prompt length is text + R' per
image; one image with two expressions in one batch and across requests with prefix caching on
(different selections, each equal to transformers'); per-request ``num_retain``; named errors.
"""

from __future__ import annotations

import pytest
import torch
from _compare import PROMPT, PROMPT_2, greedy, hf, recorded, request, start_recording
from conftest import close_llm, make_llm
from tiny_llava import M, image

R = 64
EXPRESSIONS = ["the cat", "a red car", ["the man on the left", "a red car"], ["the dog", "the tree in the sky"]]


@pytest.fixture(scope="module")
def llm(tiny):
    engine = make_llm(tiny, num_retain=R)
    yield engine
    close_llm(engine)


def exprs(e) -> list:
    return [e] if isinstance(e, str) else list(e)


def check_same(out, want, rec) -> None:
    assert list(out.prompt_token_ids) == want["prompt_ids"]
    assert list(out.outputs[0].token_ids) == want["tokens"]
    assert [torch.equal(r[1], w) for r, w in zip(rec, want["indices"])] == [True] * len(want["indices"])
    assert [torch.equal(r[2], w) for r, w in zip(rec, want["from_similarity"])] == [True] * len(want["indices"])


def test_one_batch_of_expressions_equals_transformers(llm, tiny):
    """Several expressions (T = 1 and 2) on one image, all in one batch: each request equals transformers."""
    img = image(0)
    start_recording(llm)
    outs = llm.generate([request(img, e) for e in EXPRESSIONS], greedy(), use_tqdm=False)
    rec = recorded(llm)
    assert len(rec) == len(EXPRESSIONS)  # one selection per request: no request reused another's
    for e, out, r in zip(EXPRESSIONS, outs, rec):
        want = hf(tiny, img, exprs(e), num_retain=R)
        check_same(out, want, [r])
    # the expression changes the selection (stock vLLM would silently ignore the kwarg)
    assert not torch.equal(rec[0][1], rec[1][1])
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) > 1


def test_prompt_tokens_are_text_plus_kept_per_image(llm, tiny):
    imgs = [image(1), image(2, size=(500, 300))]  # any size: the processor resizes to 336
    start_recording(llm)
    (out,) = llm.generate([request(imgs, "the cat", prompt=PROMPT_2)], greedy(), use_tqdm=False)
    rec = recorded(llm)
    want = hf(tiny, imgs, ["the cat"], prompt=PROMPT_2, num_retain=R)
    assert want["kept"] == [R, R]
    assert len(out.prompt_token_ids) == want["text_len"] + 2 * R < want["text_len"] + 2 * M
    assert sum(t == tiny.image_token_id for t in out.prompt_token_ids) == 2 * R
    check_same(out, want, rec)


def test_same_image_two_expressions_across_requests_with_prefix_caching(llm, tiny):
    """Request A, then B (same image, another expression), then A again: B is selected afresh
    (the multimodal hash covers the expression), A's repeat is served from the prefix cache."""
    img = image(3)
    a, b = "the man on the left", "a cup"
    start_recording(llm)
    (out_a,) = llm.generate([request(img, a)], greedy(), use_tqdm=False)
    (out_b,) = llm.generate([request(img, b)], greedy(), use_tqdm=False)
    (out_a2,) = llm.generate([request(img, a)], greedy(), use_tqdm=False)
    rec = recorded(llm)
    want_a, want_b = hf(tiny, img, [a], num_retain=R), hf(tiny, img, [b], num_retain=R)
    check_same(out_a, want_a, rec[:1])
    check_same(out_b, want_b, rec[1:2])
    assert not torch.equal(rec[0][1], rec[1][1])
    # B reused no KV of A's image positions (their hashes differ), only text before the image, if any
    assert out_b.num_cached_tokens <= list(out_b.prompt_token_ids).index(tiny.image_token_id)
    assert list(out_a2.outputs[0].token_ids) == want_a["tokens"]
    assert out_a2.num_cached_tokens > 0  # the repeat hit the prefix cache ...
    assert len(rec) == 2 or torch.equal(rec[2][1], rec[0][1])  # ... and selected nothing new (or the same)
    print(f"cached tokens: A {out_a.num_cached_tokens}, B {out_b.num_cached_tokens}, A again "
          f"{out_a2.num_cached_tokens} of {len(out_a2.prompt_token_ids)}; selections run: {len(rec)}")


def test_per_request_num_retain(llm, tiny):
    img = image(4)
    start_recording(llm)
    (out,) = llm.generate([request(img, "the red ball", num_retain=16)], greedy(), use_tqdm=False)
    rec = recorded(llm)
    want = hf(tiny, img, ["the red ball"], num_retain=16)
    assert sum(t == tiny.image_token_id for t in out.prompt_token_ids) == 16
    check_same(out, want, rec)


def test_budgets_and_text_counts_mixed_in_one_batch(llm, tiny):
    """Requests with different num_retain and numbers of expressions batched together: each equals transformers
    (the selector groups images by budget and pads the texts)."""
    cases = [(image(6), "the cat", 16), (image(7), ["a red car", "the sky"], R), (image(8), "the dog", 40)]
    start_recording(llm)
    outs = llm.generate([request(img, e, num_retain=r) for img, e, r in cases], greedy(), use_tqdm=False)
    rec = sorted(recorded(llm), key=lambda x: x[0])
    for (img, e, r), out in zip(cases, outs):
        want = hf(tiny, img, exprs(e), num_retain=r)
        (mine,) = [x for x in rec if x[0] == r]
        check_same(out, want, [mine])


@pytest.mark.parametrize("kwargs,err,match", [
    ({}, ValueError, r"mm_processor_kwargs\.expression"),
    ({"expression": 3}, TypeError, r"mm_processor_kwargs\.expression"),
    ({"expression": ["the cat", ""]}, ValueError, r"mm_processor_kwargs\.expression\[1\]"),
    ({"expression": "the cat", "num_retain": 0}, ValueError, r"mm_processor_kwargs\.num_retain"),
    ({"expression": "the cat", "num_retain": R + 1}, ValueError, r"mm_processor_kwargs\.num_retain"),
    ({"expression": "the cat", "num_retain": "8"}, TypeError, r"mm_processor_kwargs\.num_retain"),
])
def test_bad_requests_name_the_field_and_the_engine_goes_on(llm, kwargs, err, match):
    req = {"prompt": PROMPT, "multi_modal_data": {"image": image(5)}, "mm_processor_kwargs": kwargs}
    with pytest.raises(err, match=match):
        llm.generate([req], greedy(), use_tqdm=False)
    (out,) = llm.generate([request(image(5), "the cat")], greedy(), use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 8
