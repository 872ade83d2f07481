"""LLaVA-NeXT through the plugin (``LiteLVLMLlavaNextForConditionalGeneration``) on vLLM's CPU build.

The tiny checkpoint of tiny_llava_next.py: 64 px views, M = 64, tiles 1 x 2, 2 x 1 and 2 x 2, images sized so the
tile grid is unpadded (and one sliver whose tiles hold fewer real tokens than R). Checked: the count per image is the
documented min(R, M) + sum over tiles of min(R, real tokens) + h' (computed here from the TGI arithmetic vLLM's stock
count uses, not from the layout), also for the memory profile; keeping every token equals stock vLLM; R < M equals
``enable_litelvlm(..., image_newline="all")`` on the same weights token for token and view for view (several images,
expressions and budgets in one batch; one image with two expressions in one batch and across requests with prefix
caching); ``budget="global"`` with ``image_newline="none"``; configurations and requests that cannot be served are
refused by name (the server answers 400 and goes on).
"""

from __future__ import annotations

import math

import pytest
import torch
from _compare import (
    PROMPT,
    PROMPT_2,
    check_same,
    embeds_refused,
    generate_once,
    generate_recorded,
    greedy,
    hf,
    ids_of,
    refused_configs,
    request,
)
from conftest import close_llm, engine_kwargs, running
from test_vllm_server import BAD_REQUESTS, check_refused_then_served, serve
from tiny_llava import image
from tiny_llava_next import ARCH, PINPOINTS, VIEW, M, build

from litelvlm_kernels.serving.vllm import plugin

G = math.isqrt(M)  # cells per view side
SIZES = {"1x2": (100, 40), "2x1": (40, 100), "2x2": (90, 130), "2x2 full": (128, 128), "sliver": (300, 50)}


def img(name: str, seed: int = 0):
    return image(seed, size=SIZES[name])


def grid(im) -> tuple:
    """(nh, nw): the tile grid of a PIL image."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    return tuple(get_anyres_image_grid_shape((im.size[1], im.size[0]), PINPOINTS, VIEW))


def documented_count(size, r: int, budget: str = "per_tile", newline: str = "all") -> int:
    """docs/serving.md's count of an image (width, height), from the grid and the unpadding as vLLM's stock
    ``LlavaNextProcessingInfo`` computes them (TGI's arithmetic), cell by cell."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    w, h = size
    nh, nw = get_anyres_image_grid_shape((h, w), PINPOINTS, VIEW)
    rows, cols = range(nh * G), range(nw * G)
    if w / h > len(cols) / len(rows):  # wider than the grid: rows cut
        pad = (len(rows) - int(round(h * (len(cols) / w), 7))) // 2
        rows = range(pad, len(rows) - pad)
    else:
        pad = (len(cols) - int(round(w * (len(rows) / h), 7))) // 2
        cols = range(pad, len(cols) - pad)
    real = [sum(y // G == ty for y in rows) * sum(x // G == tx for x in cols) for ty in range(nh) for tx in range(nw)]
    kept = min(r, M + sum(real)) if budget == "global" else min(r, M) + sum(min(r, n) for n in real)
    return kept + (len(rows) if newline == "all" else 0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    t = build(tmp_path_factory.mktemp("tiny_llava_next"))
    t.llava.generation_config.eos_token_id = None  # greedy runs max_new_tokens, as vLLM with ignore_eos
    return t


def next_kwargs(tiny, *, stock: bool = False, **litelvlm) -> dict:
    kw = engine_kwargs(tiny, stock=stock, **litelvlm)
    if not stock:
        kw["hf_overrides"]["architectures"] = [ARCH]
    return kw


def make_next(tiny, **kw):
    from vllm import LLM

    return LLM(**next_kwargs(tiny, **kw))


def processor_of(tiny, stock: bool = False, **kw):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    plugin.register()
    e = next_kwargs(tiny, stock=stock, **kw)
    mc = ModelConfig(model=e["model"], hf_overrides=e["hf_overrides"], dtype="float32", max_model_len=2048,
                     limit_mm_per_prompt={"image": 2}, enable_mm_embeds=True)
    return MULTIMODAL_REGISTRY.create_processor(mc)


SWEEP = [(w, h) for w in range(9, 330, 23) for h in range(9, 330, 23)] + [tuple(s) for s in SIZES.values()]


@pytest.mark.parametrize("budget,newline,r", [("per_tile", "all", 16), ("global", "none", 40), ("per_tile", "all", M)])
def test_counts_are_documented_and_the_profile_takes_the_largest(tiny, budget, newline, r):
    proc = processor_of(tiny, num_retain=r, budget=budget, image_newline=newline)
    info = proc.info
    counts = {s: info.get_num_image_tokens(image_width=s[0], image_height=s[1]) for s in SWEEP}
    assert counts == {s: documented_count(s, r, budget, newline) for s in SWEEP}
    # the memory profile: vLLM's pinpoint search over our counts finds the largest count of any size
    assert info.get_max_image_tokens() == max(counts.values())
    (ph,) = proc.get_dummy_mm_inputs({"image": 1})["mm_placeholders"]["image"]
    assert ph.length == max(counts.values())
    if r == M:  # keeping every token: stock vLLM's count
        stock = processor_of(tiny, stock=True).info
        assert counts == {s: stock.get_num_image_tokens(image_width=s[0], image_height=s[1]) for s in SWEEP}


def test_what_cannot_be_served_is_refused_by_name(tiny):
    from litelvlm_kernels.serving.vllm.llava_next import check_next_config

    refused_configs(check_next_config, tiny.llava.config, [
        ("vision_feature_layer", [-2, -3], r"vision_feature_layer=\[-2, -3\]: .* one layer"),
        ("vision_feature_layer", -1, r"vision_feature_layer=-1: .* -2"),
        ("vision_feature_select_strategy", "full", r"vision_feature_select_strategy='full'"),
        ("vision_config.model_type", "siglip_vision_model", r"vision_config: .* CLIP tower")])
    # the model checks at start, before vLLM builds anything
    from vllm import LLM
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    kw = next_kwargs(tiny, num_retain=16)
    kw["hf_overrides"]["vision_feature_select_strategy"] = "full"
    try:
        with pytest.raises(ValueError, match=r"vision_feature_select_strategy='full'"):
            LLM(**kw)
    finally:
        cleanup_dist_env_and_memory()
    embeds_refused(processor_of(tiny, num_retain=16), tiny)


KEEP_ALL = [([img("1x2", 10)], "the cat", PROMPT), ([img("2x1", 11), img("2x2", 12)], ["a red car", "the sky"],
                                                    PROMPT_2),
            ([img("sliver", 13)], None, PROMPT), ([img("2x2 full", 14)], "the dog", PROMPT)]


@pytest.fixture(scope="module")
def stock_outputs(tiny):
    return generate_once(make_next(tiny, stock=True), [request(i, prompt=p) for i, _, p in KEEP_ALL])


@pytest.fixture(scope="module")
def llm(tiny, stock_outputs):  # after the stock engine is gone; R = M, requests ask for less
    yield from running(make_next(tiny, num_retain=M, missing_expressions="cls"))


def test_keep_all_equals_stock_vllm(llm, stock_outputs):
    outs = llm.generate([request(i, e, prompt=p) for i, e, p in KEEP_ALL], greedy(), use_tqdm=False)
    assert ids_of(outs) == stock_outputs


def test_a_batch_of_images_expressions_and_budgets_equals_transformers(llm, tiny):
    """Every tile grid, unpadded, 1 and 2 images per prompt, T = 1 and 2, R = 16 and 40 in one batch."""
    cases = [([img("1x2", 20)], "the cat", 16, PROMPT), ([img("2x1", 21)], ["a red car", "the sky"], 40, PROMPT),
             ([img("2x2", 22), img("sliver", 23)], "the man on the left", 40, PROMPT_2),
             ([img("2x2 full", 24)], ["the dog", "the tree"], 16, PROMPT)]
    outs, rec = generate_recorded(llm, [request(i, e, prompt=p, num_retain=r) for i, e, r, p in cases])
    assert len(rec) == sum(1 + nh * nw for images, *_ in cases for nh, nw in map(grid, images))  # real views only
    for (images, e, r, p), out in zip(cases, outs):
        want = hf(tiny, images, [e] if isinstance(e, str) else e, prompt=p, num_retain=r, image_newline="all")
        check_same(out, want, rec, r)
        # the engine's prompt: text + the documented count of each image
        documented = [documented_count(im.size, r) for im in images]
        assert want["kept"] == documented
        assert len(out.prompt_token_ids) == want["text_len"] + sum(documented)
        assert sum(t == tiny.image_token_id for t in out.prompt_token_ids) == sum(documented)


def test_one_image_two_expressions_in_one_batch_and_across_requests(llm, tiny):
    """In one batch and across requests with prefix caching (A, B, A again): each equals transformers, A and B
    differ, B reuses no KV of A's image, A's repeat hits the prefix cache."""
    im, a, b, r = img("2x2", 30), "the man on the left", "a cup", 16
    want = {e: hf(tiny, [im], [e], num_retain=r, image_newline="all") for e in (a, b)}
    outs, rec = generate_recorded(llm, [request(im, a, num_retain=r), request(im, b, num_retain=r)])
    assert len(rec) == 2 * 5  # two selections of the image's 5 views: neither request reused the other's
    for e, out in zip((a, b), outs):
        check_same(out, want[e], rec, r)
    assert any(not torch.equal(x, y) for x, y in zip(want[a]["indices"], want[b]["indices"]))
    im = img("1x2", 31)  # across requests: an image the engine has not cached yet
    want = {e: hf(tiny, [im], [e], num_retain=r, image_newline="all") for e in (a, b)}
    ([out_a], rec_a), ([out_b], rec_b), ([out_a2], rec_a2) = [
        generate_recorded(llm, [request(im, e, num_retain=r)]) for e in (a, b, a)]
    assert len(rec_a) == len(rec_b) == 3  # the image's 3 views, selected afresh for B
    assert all(torch.equal(x[1], y[1]) for x, y in zip(rec_a2, rec_a))  # A's repeat: cached (nothing) or the same
    assert any(not torch.equal(x[1], y[1]) for x, y in zip(rec_a, rec_b))
    check_same(out_a, want[a], rec_a, r)
    check_same(out_b, want[b], rec_b, r)
    assert out_b.num_cached_tokens <= list(out_b.prompt_token_ids).index(tiny.image_token_id)
    assert list(out_a2.outputs[0].token_ids) == want[a]["tokens"] and out_a2.num_cached_tokens > 0


def test_global_budget_without_newlines_equals_transformers(tiny):
    r = 40
    engine = make_next(tiny, num_retain=r, budget="global", image_newline="none")
    try:
        cases = [([img("2x2", 40)], "the cat", PROMPT), ([img("1x2", 41), img("sliver", 42)], "a red car", PROMPT_2)]
        outs, rec = generate_recorded(engine, [request(i, e, prompt=p) for i, e, p in cases])
    finally:
        close_llm(engine)
    for (images, e, p), out in zip(cases, outs):
        want = hf(tiny, images, [e], prompt=p, num_retain=r, budget="global", image_newline="none")
        check_same(out, want, rec, r)
        assert want["kept"] == [documented_count(im.size, r, "global", "none") for im in images] == [r] * len(images)


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    yield from serve(tiny.llava_dir, {"architectures": [ARCH], "litelvlm": {"scorer": str(tiny.clip_dir),
                                                                            "num_retain": 16}}, tmp_path_factory)


@pytest.mark.parametrize("kwargs,field", BAD_REQUESTS)
def test_server_answers_400_naming_the_field_and_goes_on(server, tiny, kwargs, field):
    check_refused_then_served(server, tiny, img("2x1", 50), kwargs, field, num_retain=16, image_newline="all")
