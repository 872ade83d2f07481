"""Keeping every token in raster order equals stock vLLM; [CLS]-only selection without an expression.

One engine at a time in this process: stock vLLM's LLaVA first, then the plugin's architecture
with num_retain = M, order = "spatial", missing_expressions = "cls" on the same checkpoint.
"""

from __future__ import annotations

import pytest
import torch
from _compare import PROMPT, PROMPT_2, generate_once, greedy, hf, ids_of, recorded, request, start_recording
from conftest import close_llm, make_llm
from tiny_llava import M, image

REQUESTS = [([image(10)], "the cat", PROMPT), ([image(11), image(12)], ["a red car", "the sky"], PROMPT_2),
            ([image(13)], None, PROMPT)]


@pytest.fixture(scope="module")
def stock_outputs(tiny):
    return generate_once(make_llm(tiny, stock=True), [request(imgs, prompt=p) for imgs, _, p in REQUESTS])


@pytest.fixture(scope="module")
def keep_all(tiny, stock_outputs):  # after the stock engine is gone
    llm = make_llm(tiny, num_retain=M, order="spatial", missing_expressions="cls")
    yield llm
    close_llm(llm)


def test_keep_all_in_raster_order_equals_stock_vllm(keep_all, stock_outputs):
    outs = keep_all.generate([request(imgs, e, prompt=p) for imgs, e, p in REQUESTS], greedy(), use_tqdm=False)
    assert ids_of(outs) == stock_outputs


def test_missing_expression_selects_by_cls_contribution(keep_all, tiny):
    """missing_expressions="cls": no expression -> the R' tokens of largest [CLS] contribution, as
    enable_litelvlm(missing_expressions="cls") with no expressions."""
    img = image(14)
    start_recording(keep_all)
    (out,) = keep_all.generate([request(img, num_retain=16)], greedy(), use_tqdm=False)
    (rec,) = recorded(keep_all)
    want = hf(tiny, img, [], num_retain=16, order="spatial", missing_expressions="cls")
    assert list(out.prompt_token_ids) == want["prompt_ids"]
    assert list(out.outputs[0].token_ids) == want["tokens"]
    assert torch.equal(rec[1], want["indices"][0]) and not rec[2].any()  # nothing from the similarity set
