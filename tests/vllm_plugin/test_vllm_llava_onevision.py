"""LLaVA-OneVision through the plugin (``LiteLVLMLlavaOnevisionForConditionalGeneration``) on vLLM's CPU build.

The tiny checkpoint of tiny_onevision.py: a SigLIP tower (64 px views, M = 64, the original's last layer dropped),
tiles 1 x 2, 2 x 1, 2 x 2 and 4 x 4 under anyres_max_9 (a 4 x 4 grid is downsampled), videos of 4 frames pooled to
P = 16 tokens each. Checked: the counts (images, videos, the memory profile's largest image, the request's budget)
and the per-item fields; keeping every token equals stock vLLM (images alone, two per prompt, a video, an image and
a video in one prompt); R < M equals ``enable_litelvlm(..., image_newline="all")`` on the transformers model of the
same checkpoint, fed the prompt's images as a flat list (each image AnyRes, as vLLM lays them out), token for token
and view for view (several images, expressions and budgets in one batch; videos); one image with two expressions in
one batch and across requests with prefix caching; ``budget="global"`` with ``image_newline="none"``; what cannot be
served is refused by name (the server answers 400 and goes on).
"""

from __future__ import annotations

import copy

import pytest
import torch
from _compare import (
    N_NEW,
    PROMPT,
    PROMPT_2,
    check_same,
    check_two_expressions,
    embeds_refused,
    generate_once,
    generate_recorded,
    greedy,
    hf,
    ids_of,
    records_by_id,
    refused_configs,
    request,
)
from conftest import close_llm
from test_vllm_server import BAD_REQUESTS, check_refused_then_served, serve
from tiny_llava import image
from tiny_onevision import ARCH, M, build, engine_kwargs, video

from litelvlm_kernels.serving.vllm import plugin

P = 16  # pooled tokens per frame: ceil(8 / 2)^2
FRAMES = 4
SIZES = {"1x2": (100, 40), "2x2": (128, 100), "4x4": (256, 256), "4x4 cropped": (240, 256), "sliver": (300, 50)}
VIDEO_PROMPT = "user : <video> what is this ? assistant :"
MIXED_PROMPT = "user : <image> and <video> where is the cat ? assistant :"


def img(name: str, seed: int = 0):
    return image(seed, size=SIZES[name])


def video_request(clip, expression=None, prompt: str = VIDEO_PROMPT, images=None, **kwargs) -> dict:
    req = request(images or [], expression, prompt=prompt, **kwargs)
    req["multi_modal_data"] = {**({"image": images} if images else {}), "video": [clip]}
    return req


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tiny_onevision"))


def onevision_kwargs(tiny, aspect: str | None = None, **kw) -> dict:
    """tiny_onevision.engine_kwargs, with another ``vision_aspect_ratio`` in the config when ``aspect`` is given."""
    e = engine_kwargs(tiny, **kw)
    if aspect is not None:
        e["hf_overrides"]["vision_aspect_ratio"] = aspect
    return e


def processor_of(tiny, stock: bool = False, aspect: str | None = None, **kw):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    plugin.register()
    e = onevision_kwargs(tiny, aspect, stock=stock, **kw)
    mc = ModelConfig(model=e["model"], hf_overrides=e["hf_overrides"], dtype="float32", max_model_len=2048,
                     limit_mm_per_prompt=e["limit_mm_per_prompt"], enable_mm_embeds=True)
    return MULTIMODAL_REGISTRY.create_processor(mc)


def make_llm(tiny, aspect: str | None = None, **kw):
    from vllm import LLM

    return LLM(**onevision_kwargs(tiny, aspect, **kw))


def hf_processor(tiny, aspect: str):
    """The checkpoint's processor counting with another ``vision_aspect_ratio``."""
    proc = copy.copy(tiny.processor)
    proc.vision_aspect_ratio = aspect
    return proc


SWEEP = [(w, h) for w in range(5, 330, 19) for h in range(5, 330, 19)] + list(SIZES.values())


@pytest.mark.parametrize("budget,newline,r", [("per_tile", "all", 8), ("global", "none", 40), ("per_tile", "all", M)])
def test_image_counts_and_the_profile(tiny, budget, newline, r):
    """docs/serving.md's counts, derived by hand for two sizes (M = 64):

    * 100 x 40: tiles 1 x 2 (8 x 16 cells), cropped to 6 rows (40 / 100 of 16 columns = 6.4), no downsampling:
      each tile owns 6 x 8 = 48 cells; R = 8: 8 + 8 + 8 + 6 newlines = 30; keep-all: 64 + 6 (16 + 1) = 166;
    * 256 x 256: tiles 4 x 4 (32 x 32 cells, more than 1.1^2 x 9 views' worth): downsampled to 24 x 24, each tile
      owns 6 x 6 = 36 cells; R = 8: 8 + 16 x 8 + 24 = 160; keep-all: 64 + 24 x 25 = 664.
    """
    proc = processor_of(tiny, num_retain=r, budget=budget, image_newline=newline)
    info = proc.info
    counts = {s: info.get_num_image_tokens(image_width=s[0], image_height=s[1]) for s in SWEEP}
    if (budget, r) == ("per_tile", 8):
        assert counts[SIZES["1x2"]] == 30 and counts[SIZES["4x4"]] == 160
    if r == M:  # keeping every token: stock vLLM's count (which hard-codes the anyres_max_9 the checkpoint has)
        stock = processor_of(tiny, stock=True).info
        assert counts == {s: stock.get_num_image_tokens(image_width=s[0], image_height=s[1]) for s in SWEEP}
        assert counts[SIZES["1x2"]] == 166 and counts[SIZES["4x4"]] == 664
    # the memory profile's image: at least as many placeholders as any size of the sweep, and the dummy has them
    w, h = info.get_image_size_with_most_features()
    most = info.get_num_image_tokens(image_width=w, image_height=h)
    assert most >= max(counts.values()) and info.get_max_image_tokens() == most
    (ph,) = proc.get_dummy_mm_inputs({"image": 1})["mm_placeholders"]["image"]
    assert ph.length == most


def test_the_configs_aspect_ratio_is_counted(tiny):
    """vLLM's count hard-codes anyres_max_9; the plugin reads ``vision_aspect_ratio``: at anyres_max_4 a 4 x 4 grid
    (32 x 32 cells) is downsampled to 16 x 16, 64 + 16 x 17 = 336 placeholders at keep-all (stock vLLM: 664), as
    transformers' processor counts."""
    info = processor_of(tiny, aspect="anyres_max_4", num_retain=M).info
    proc = hf_processor(tiny, "anyres_max_4")
    for name, (w, h) in SIZES.items():
        ids = proc(images=[img(name)], text=PROMPT, return_tensors="pt")["input_ids"][0]
        assert info.get_num_image_tokens(image_width=w, image_height=h) == int((ids == tiny.image_token_id).sum())
    assert info.get_num_image_tokens(image_width=256, image_height=256) == 336


@pytest.mark.parametrize("video_budget,newline,r,want", [("per_frame", "all", 8, FRAMES * 8 + 1),
                                                         ("per_frame", "none", 20, FRAMES * P),
                                                         ("per_clip", "all", 40, 40 + 1)])
def test_video_counts_and_the_profile(tiny, video_budget, newline, r, want):
    info = processor_of(tiny, num_retain=r, video_budget=video_budget, image_newline=newline).info
    assert info.get_num_video_tokens(image_width=64, image_height=64, num_frames=FRAMES) == want
    # the profile's dummy video: as many frames as stock vLLM's (a per-clip count never outgrows the sequence)
    stock = processor_of(tiny, stock=True).info
    assert (info.get_num_frames_with_most_features(2048, {"video": 1})
            == stock.get_num_frames_with_most_features(2048, {"video": 1}) == 16)


def test_request_budget_and_fields_per_modality(tiny):
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    proc = processor_of(tiny, num_retain=20)
    prompt = tiny.processor.tokenizer.encode(MIXED_PROMPT)
    items = proc.info.parse_mm_data({"image": [img("4x4", 1)], "video": [video(1)]})
    kwargs = {"expression": ["the cat", "a dog"], "num_retain": 5}
    out = proc.apply(ProcessorInputs(prompt, items, hf_processor_mm_kwargs=kwargs), TimingContext(enabled=False))
    ids = out["prompt_token_ids"]
    image_count, video_count = 5 + 16 * 5 + 24, FRAMES * 5 + 1  # 24 final rows of the 4 x 4 grid
    assert ids.count(tiny.image_token_id) == image_count
    assert ids.count(tiny.llava.config.video_token_index) == video_count
    enc = tiny.clip_tokenizer(["the cat", "a dog"], padding="max_length", return_tensors="pt")["input_ids"]
    for modality, prefix, count in (("image", "litelvlm_", image_count), ("video", "litelvlm_video_", video_count)):
        (item,) = out["mm_kwargs"][modality]
        assert item[f"{prefix}meta"].data.tolist() == [5, 2, count]
        assert torch.equal(item[f"{prefix}text_ids"].data, enc)
        assert item[f"{prefix}meta"].field.keep_on_cpu and item[f"{prefix}text_ids"].field.keep_on_cpu


def test_what_cannot_be_served_is_refused_by_name(tiny):
    from litelvlm_kernels.serving.vllm.llava_onevision import check_onevision_config

    assert check_onevision_config(tiny.llava.config) == "anyres_max_9"
    refused_configs(check_onevision_config, tiny.llava.config, [
        ("vision_feature_layer", -2, r"vision_feature_layer=-2: .* -1"),
        ("vision_feature_layer", [-1], r"vision_feature_layer=\[-1\]"),
        ("vision_feature_select_strategy", "default", r"vision_feature_select_strategy='default'"),
        ("vision_aspect_ratio", "anyres", r"vision_aspect_ratio='anyres'"),
        ("vision_config.model_type", "clip_vision_model", r"vision_config: .* SigLIP tower")])
    embeds_refused(processor_of(tiny, num_retain=16), tiny)


KEEP_ALL = [request([img("1x2", 10)], "the cat"),
            request([img("4x4", 11), img("2x2", 12)], ["a red car", "the sky"], prompt=PROMPT_2),
            request([img("sliver", 13)], "the dog"),
            video_request(video(14), "the cat"),
            video_request(video(15), "a cup", prompt=MIXED_PROMPT, images=[img("4x4 cropped", 16)])]


@pytest.fixture(scope="module")
def stock_outputs(tiny):
    return generate_once(make_llm(tiny, stock=True),
                         [{k: v for k, v in r.items() if k != "mm_processor_kwargs"} for r in KEEP_ALL])


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return tmp_path_factory.mktemp("onevision_reports") / "kept.jsonl"


@pytest.fixture(scope="module")
def llm(tiny, stock_outputs, reports):  # after the stock engine is gone; R = M, requests ask for less
    engine = make_llm(tiny, num_retain=M, report_path=str(reports))
    yield engine
    close_llm(engine)


def test_keep_all_equals_stock_vllm(llm, stock_outputs):
    assert ids_of(llm.generate(KEEP_ALL, greedy(), use_tqdm=False)) == stock_outputs


def test_a_batch_of_images_expressions_and_budgets_equals_transformers(llm, tiny, reports):
    """Every tile grid (the 4 x 4 ones downsampled), 1 and 2 images per prompt, T = 1 and 2, R = 8 and 20."""
    cases = [([img("1x2", 20)], "the cat", 8, PROMPT), ([img("4x4", 21)], ["a red car", "the sky"], 20, PROMPT),
             ([img("4x4 cropped", 22), img("sliver", 23)], "the man on the left", 8, PROMPT_2),
             ([img("2x2", 24)], ["the dog", "the tree"], 20, PROMPT)]
    # each request asks for its kept-index records (report.py): per view, transformers' kept indices
    outs, rec = generate_recorded(llm, [request(i, e, prompt=p, num_retain=r, report=f"img-{n}")
                                        for n, (i, e, r, p) in enumerate(cases)])
    records = records_by_id(reports)
    views = 0
    for n, ((images, e, r, p), out) in enumerate(zip(cases, outs)):
        want = hf(tiny, images, [e] if isinstance(e, str) else e, prompt=p, num_retain=r, image_newline="all")
        check_same(out, want, rec, r)
        # the engine's prompt: its text + each image's count (the rows transformers built)
        assert len(out.prompt_token_ids) == want["text_len"] + sum(want["kept"])
        assert sum(t == tiny.image_token_id for t in out.prompt_token_ids) == sum(want["kept"])
        got = [records[(f"img-{n}", k)] for k in range(len(images))]
        assert [(x["modality"], x["num_retain"], x["num_tokens"]) for x in got] == \
            [("image", r, c) for c in want["kept"]]
        got_views = [v for x in got for v in x["views"]]
        assert [v["indices"] for v in got_views] == [idx.tolist() for idx in want["indices"]]
        assert [v["from_similarity"] for v in got_views] == [fs.tolist() for fs in want["from_similarity"]]
        assert all(len(v["indices"]) <= v["grid"][0] * v["grid"][1] for v in got_views)
        views += len(want["indices"])
    assert len(rec) == views  # every real view selected once (vLLM's padding views are not run)


def hf_video(tiny, clip, expressions, **settings) -> dict:
    """``enable_litelvlm`` on one video prompt: greedy tokens, the kept indices per frame, the shrunk prompt ids."""
    from litelvlm_kernels.integrations.lvlm import enable_litelvlm

    inputs = tiny.processor(videos=[clip], text=VIDEO_PROMPT, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    with torch.no_grad(), enable_litelvlm(tiny.llava, tiny.clip, tiny.clip_tokenizer, **settings) as patch:
        out = tiny.llava.generate(**inputs, referring_expressions=[list(expressions)], max_new_tokens=N_NEW,
                                  do_sample=False)
        report = patch.last_report["video"]
    token, ((stock,), (kept,)) = tiny.llava.config.video_token_index, (report["stock"], report["kept"])
    first = ids.index(token)
    frames = report["views"][0]
    return {"tokens": out[0, len(ids):].tolist(), "prompt_ids": ids[:first] + [token] * kept + ids[first + stock:],
            "indices": [f["indices"] for f in frames], "from_similarity": [f["from_similarity"] for f in frames],
            "kept": kept}


def test_videos_equal_transformers(llm, tiny, reports):
    cases = [(video(30), "the cat", 8), (video(31), ["a red car", "the sky"], 3)]
    outs, rec = generate_recorded(llm, [video_request(c, e, num_retain=r, report=f"vid-{n}")
                                        for n, (c, e, r) in enumerate(cases)])
    assert len(rec) == FRAMES * len(cases)
    records = records_by_id(reports)
    for n, ((clip, e, r), out) in enumerate(zip(cases, outs)):
        want = hf_video(tiny, clip, [e] if isinstance(e, str) else e, num_retain=r, image_newline="all")
        check_same(out, want, rec, r)
        x = records[(f"vid-{n}", 0)]  # one view per frame, in the pooled frame's grid
        assert (x["modality"], x["num_retain"], len(x["views"])) == ("video", r, FRAMES)
        assert [v["indices"] for v in x["views"]] == [torch.as_tensor(i).tolist() for i in want["indices"]]
        assert want["kept"] == FRAMES * r + 1


def test_one_image_two_expressions_in_one_batch_and_across_requests(llm, tiny):
    check_two_expressions(llm, tiny, (img("4x4", 40), img("4x4 cropped", 41)), "the man on the left", "a cup", 8,
                          image_newline="all")


def test_global_budget_without_newlines_and_another_aspect_ratio_equal_transformers(tiny):
    """budget="global", image_newline="none", video_budget="per_clip", and vision_aspect_ratio="anyres_max_4" (both
    sides downsample the 4 x 4 grids to 16 x 16: vLLM's merge gets the config's value)."""
    r, aspect = 40, "anyres_max_4"
    engine = make_llm(tiny, aspect, num_retain=r, budget="global", image_newline="none", video_budget="per_clip")
    try:
        cases = [([img("4x4", 50)], "the cat", PROMPT), ([img("1x2", 51), img("2x2", 52)], "a red car", PROMPT_2)]
        outs, rec = generate_recorded(engine, [request(i, e, prompt=p) for i, e, p in cases]
                                      + [video_request(video(53), "the dog")])
    finally:
        close_llm(engine)
    tiny.llava.config.vision_aspect_ratio = aspect
    try:
        for (images, e, p), out in zip(cases, outs):
            want = hf(tiny, images, [e], prompt=p, processor=hf_processor(tiny, aspect), num_retain=r,
                      budget="global", image_newline="none")
            check_same(out, want, rec, r)
            assert want["kept"] == [r] * len(images)
    finally:
        tiny.llava.config.vision_aspect_ratio = "anyres_max_9"
    want = hf_video(tiny, video(53), ["the dog"], num_retain=r, video_budget="per_clip", image_newline="none")
    check_same(outs[-1], want, rec, r)
    assert want["kept"] == r


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    overrides = {"architectures": [ARCH], "litelvlm": {"scorer": str(tiny.clip_dir), "num_retain": 16}}
    yield from serve(tiny.llava_dir, overrides, tmp_path_factory)


@pytest.mark.parametrize("kwargs,field", BAD_REQUESTS)
def test_server_answers_400_naming_the_field_and_goes_on(server, tiny, kwargs, field):
    check_refused_then_served(server, tiny, img("4x4 cropped", 60), kwargs, field, num_retain=16, image_newline="all")
