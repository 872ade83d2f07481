"""The serving-cost parts on LLaVA-NeXT (tiny_llava_next.py, a 2 x 2 image: 5 views of M = 64): the tower runs
once for two expressions on one image, in chunks of ``tower_batch`` views; the per-request records give each view's
kept indices, equal to ``enable_litelvlm(image_newline="all")``'s."""

from __future__ import annotations

import json

import pytest
from _compare import check_same, generate_recorded, hf, request
from conftest import engine_kwargs, running
from test_vllm_serving_cost import tower_calls
from tiny_llava import image
from tiny_llava_next import ARCH, build

R = 16


@pytest.fixture(scope="module")
def next_tiny(tmp_path_factory):
    t = build(tmp_path_factory.mktemp("tiny_llava_next_cost"))
    t.llava.generation_config.eos_token_id = None  # greedy runs max_new_tokens, as vLLM with ignore_eos
    return t


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return tmp_path_factory.mktemp("next_reports") / "kept.jsonl"


@pytest.fixture(scope="module")
def llm(next_tiny, reports):
    from vllm import LLM

    kw = engine_kwargs(next_tiny, num_retain=R, tower_batch=3, report_path=str(reports))
    kw["hf_overrides"]["architectures"] = [ARCH]
    yield from running(LLM(**kw))


def test_two_expressions_one_tower_run_and_records_per_view(llm, next_tiny, reports):
    im = image(7, size=(90, 130))  # tiles 2 x 2: a base view + 4 tiles
    a, b = "the man on the left", "a red car"
    want = {e: hf(next_tiny, [im], [e], num_retain=R, image_newline="all") for e in (a, b)}
    tower_calls(llm)
    outs, rec = generate_recorded(llm, [request(im, a, report="a"), request(im, b, report="b")])
    assert tower_calls(llm) == [2, 3]  # 5 views once, in near-equal chunks of <= 3
    for e, out in zip((a, b), outs):
        check_same(out, want[e], rec, R)
    records = {r["id"]: r for r in map(json.loads, reports.read_text().splitlines())}
    assert sorted(records) == ["a", "b"]
    for rid, e, out in (("a", a, outs[0]), ("b", b, outs[1])):
        r = records[rid]
        assert r["num_tokens"] == list(out.prompt_token_ids).count(next_tiny.image_token_id)
        assert [v["indices"] for v in r["views"]] == [i.tolist() for i in want[e]["indices"]]
        assert [v["from_similarity"] for v in r["views"]] == [f.tolist() for f in want[e]["from_similarity"]]
        assert all(v["grid"] == [8, 8] for v in r["views"])
