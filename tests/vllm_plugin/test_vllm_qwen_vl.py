"""Qwen2.5-VL and Qwen3-VL through the plugin with a paired CLIP scorer, on vLLM's CPU build (docs/serving.md).

Tiny random checkpoints (tiny_qwen_vl.py: images of at most 16 merged tokens, a CLIP of 64 native patches), both
families, one engine per family with chunked prefill (32-token steps) and prefix caching (32-token blocks):

* keeping every token (``retain_ratio=1``) equals stock vLLM token for token;
* R' < N: greedy ids, the engine's prompt ids and each image's kept indices equal ``enable_litelvlm`` on the
  transformers model loaded from the same checkpoints (transformers 5.19, the venv's) for a batch mixing one- and
  two-image prompts, expressions (T = 1, 2), ``num_retain`` and ``retain_ratio``; the prompt is text + R' per image
  with R' = min(R, N) or ceil(q N) on N = prod(grid) / 4 of the processed image;
* one image, two expressions: in one batch and across requests (A, B, A) each equals transformers, A and B differ;
  A's first run is chunked with a chunk starting inside the image, its repeat hits the prefix cache up to a block
  ending inside the image, and both still equal transformers;
* bad requests are refused by name offline and with HTTP 400 by the OpenAI-compatible server, which goes on.
"""

from __future__ import annotations

import math

import pytest
import torch
from _compare import generate_once, generate_recorded, greedy, hf, records_by_id, request
from conftest import close_llm
from test_vllm_server import chat, serve
from tiny_llava import image
from tiny_qwen_vl import ARCH, VISION, build, engine_kwargs

from litelvlm_kernels.serving.vllm import mrope_hook

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
R = 6
P1 = f"user : {VISION} what is this ? assistant :"
P2 = f"user : {VISION} and {VISION} where is the cat ? assistant :"
# 30 tokens before the image: the 32-token chunk and KV block both end inside it
LONG = "user : " + " ".join(f"w{i}" for i in range(27)) + f" {VISION} what is this ? assistant :"
WIDE, TALL, SQUARE = (150, 100), (60, 170), (90, 90)  # (W, H): tall images have max(h, w) != w


def make_llm(qwen, family: str, **kw):
    from vllm import LLM

    return LLM(**{**engine_kwargs(qwen, family, **kw), "max_num_batched_tokens": 32})


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def qwen(family, tmp_path_factory):
    return build(tmp_path_factory.mktemp(family), family)


KEEP_ALL = [([image(1, WIDE)], P1), ([image(2, TALL), image(3, SQUARE)], P2)]


@pytest.fixture(scope="module")
def stock_outputs(qwen, family):
    return generate_once(make_llm(qwen, family, stock=True), [request(i, prompt=p) for i, p in KEEP_ALL])


@pytest.fixture(scope="module")
def reports(family, tmp_path_factory):
    return tmp_path_factory.mktemp(f"{family}_reports") / "kept.jsonl"


@pytest.fixture(scope="module")
def llm(qwen, family, stock_outputs, reports):  # after the stock engine is gone
    engine = make_llm(qwen, family, num_retain=R, report_path=str(reports))
    yield engine
    close_llm(engine)


def exprs(e) -> list:
    return [e] if isinstance(e, str) else list(e)


def kept_rule(n: int, budget: dict) -> int:
    """The documented count, written out: min(R, N), or min(N, max(1, ceil(q N - 1e-9)))."""
    q = budget.get("retain_ratio")
    return min(n, max(1, math.ceil(q * n - 1e-9))) if q is not None else min(budget.get("num_retain", R), n)


def check_same(out, want: dict, rec: list) -> None:
    """Prompt ids, greedy ids, and each image's kept indices and flags among the engine's recorded selections."""
    assert list(out.prompt_token_ids) == want["prompt_ids"]
    assert list(out.outputs[0].token_ids) == want["tokens"]
    for idx, flags in zip(want["indices"], want["from_similarity"]):
        assert any(torch.equal(x[1], idx) and torch.equal(x[2], flags) for x in rec)


def test_keep_all_equals_stock_vllm(llm, stock_outputs):
    outs = llm.generate([request(i, "the cat", prompt=p, retain_ratio=1.0) for i, p in KEEP_ALL], greedy(),
                        use_tqdm=False)
    assert [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs] == stock_outputs


def test_a_batch_equals_transformers_and_prompts_are_text_plus_kept(llm, qwen, reports):
    cases = [([image(10, WIDE)], "the cat", P1, {}),
             ([image(11, TALL), image(12, SQUARE)], ["a red car", "the man on the left"], P2, {"num_retain": 3}),
             ([image(13, SQUARE)], "the dog", P1, {"retain_ratio": 0.3}),
             ([image(10, WIDE)], "a red car", P1, {})]  # the first image again, another expression
    # each request asks for its kept-index records (report.py): the record is transformers' kept indices
    outs, rec = generate_recorded(llm, [request(i, e, prompt=p, report=f"batch-{n}", **b)
                                        for n, (i, e, p, b) in enumerate(cases)])
    records = records_by_id(reports)
    assert len(rec) == sum(len(i) for i, *_ in cases)  # one selection per image: none reused another's
    wants = [hf(qwen, i, exprs(e), prompt=p, **(b or {"num_retain": R})) for i, e, p, b in cases]
    assert not torch.equal(wants[0]["indices"][0], wants[3]["indices"][0])  # same image, other expression
    for n, ((images, _, prompt, budget), out, want) in enumerate(zip(cases, outs, wants)):
        check_same(out, want, rec)
        grids = qwen.processor(images=images, text=prompt, return_tensors="pt")["image_grid_thw"]
        kept = [kept_rule(int(g.prod()) // 4, budget) for g in grids]
        assert want["kept"] == kept and all(k < int(g.prod()) // 4 for k, g in zip(kept, grids))
        assert len(out.prompt_token_ids) == want["text_len"] + sum(kept)
        assert sum(t == qwen.image_token_id for t in out.prompt_token_ids) == sum(kept)
        for k, g in enumerate(grids.tolist()):
            x = records[(f"batch-{n}", k)]
            assert (x["num_tokens"], x["num_retain"]) == (kept[k], budget.get("num_retain", kept[k] if budget else R))
            assert x["views"][0]["grid"] == [g[1] // 2, g[2] // 2]
            assert x["views"][0]["indices"] == want["indices"][k].tolist()
            assert x["views"][0]["from_similarity"] == want["from_similarity"][k].tolist()


def record_hook(llm) -> None:
    """Record (num_computed_tokens, rows placed) of every pruning-hook call that places rows."""
    def install(m):
        m.hook_calls, orig = [], m.recompute_mrope_positions

        def rec(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
            if len(multimodal_embeddings):
                m.hook_calls.append((num_computed_tokens, sum(len(x) for x in multimodal_embeddings)))
            return orig(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens)
        m.recompute_mrope_positions = rec
    llm.apply_model(install)


def hook_calls(llm) -> list:
    def take(m):
        out, m.hook_calls = m.hook_calls, []
        return out
    return llm.apply_model(take)[0]


def test_two_expressions_chunked_prefill_and_prefix_cache(llm, qwen):
    a, b, im = "the man on the left", "a cup", image(20, WIDE)
    outs, rec = generate_recorded(llm, [request([im], a, prompt=P1), request([im], b, prompt=P1)])
    assert len(rec) == 2 and not torch.equal(rec[0][1], rec[1][1])
    for e, out in zip((a, b), outs):
        check_same(out, hf(qwen, [im], [e], prompt=P1, num_retain=R), rec)
    im = image(21, WIDE)  # across requests, an image the engine has not seen: A, B, A again
    record_hook(llm)
    seq = [(*generate_recorded(llm, [request([im], e, prompt=LONG)]), hook_calls(llm)) for e in (a, b, a)]
    (out_a, rec_a, hook_a), (out_b, rec_b, _), (out_a2, rec_a2, hook_a2) = [(o[0], r, h) for o, r, h in seq]
    for out, e, r in ((out_a, a, rec_a), (out_b, b, rec_b), (out_a2, a, rec_a + rec_a2)):
        check_same(out, hf(qwen, [im], [e], prompt=LONG, num_retain=R), r)
    assert not torch.equal(rec_a[0][1], rec_b[0][1])
    ids = list(out_a.prompt_token_ids)
    first = ids.index(qwen.image_token_id)
    last = first + R - 1
    assert first < 32 <= last  # the 32-token chunk / block boundary falls inside the image
    assert (0, 32 - first) in hook_a and (32, last + 1 - 32) in hook_a  # chunked: the image placed in two parts
    assert out_b.num_cached_tokens <= first  # B reused no KV of A's image (their multimodal hashes differ)
    assert out_a2.num_cached_tokens == 32 and hook_a2 == [(32, last + 1 - 32)]  # the cache hit ends inside it


@pytest.mark.parametrize("kwargs,err,match", [
    ({}, ValueError, r"mm_processor_kwargs\.expression"),
    ({"expression": "the cat", "num_retain": 0}, ValueError, r"mm_processor_kwargs\.num_retain"),
    ({"expression": "the cat", "num_retain": "3"}, TypeError, r"mm_processor_kwargs\.num_retain"),
    ({"expression": "the cat", "retain_ratio": 1.5}, ValueError, r"mm_processor_kwargs\.retain_ratio"),
    ({"expression": "the cat", "num_retain": 2, "retain_ratio": 0.5}, ValueError, r"num_retain / retain_ratio"),
    ({"expression": ["a", "the cat", "the dog"], "num_retain": 2}, ValueError, r"mm_processor_kwargs\.expression"),
])
def test_bad_requests_are_refused_by_name_and_the_engine_goes_on(llm, kwargs, err, match):
    req = {"prompt": P1, "multi_modal_data": {"image": image(30, WIDE)}, "mm_processor_kwargs": kwargs}
    with pytest.raises(err, match=match):
        llm.generate([req], greedy(), use_tqdm=False)
    (out,) = llm.generate([request(image(30, WIDE), "the cat", prompt=P1)], greedy(), use_tqdm=False)
    assert len(out.outputs[0].token_ids) == 8


def test_videos_and_embeddings_are_refused_by_name(llm, qwen, family):
    import numpy as np

    video = {"prompt": "user : <|vision_start|><|video_pad|><|vision_end|> what ?",
             "multi_modal_data": {"video": np.zeros((4, 56, 56, 3), dtype=np.uint8)},
             "mm_processor_kwargs": {"expression": "the cat"}}
    with pytest.raises(ValueError, match="video"):
        llm.generate([video], greedy(), use_tqdm=False)
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    proc = MULTIMODAL_REGISTRY.create_processor(llm.llm_engine.vllm_config.model_config)
    embeds = proc.info.parse_mm_data({"image": {"image_embeds": torch.zeros(4, 64),
                                                "image_grid_thw": torch.tensor([[1, 4, 4]])}}, validate=False)
    with pytest.raises(ValueError, match="image_embeds"):
        proc.apply(ProcessorInputs(qwen.processor.tokenizer.encode(P1), embeds,
                                   hf_processor_mm_kwargs={"expression": "the cat"}), TimingContext(enabled=False))


def test_register_turns_the_hook_on_once():
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    from litelvlm_kernels.serving.vllm import plugin

    plugin.register()
    wrapped = CPUModelRunner.load_model
    assert mrope_hook.is_enabled() and getattr(wrapped, "_litelvlm_mrope_hook", False)
    plugin.register()  # every vLLM process runs it, maybe more than once: nothing is wrapped twice
    assert mrope_hook.enable() == [] and CPUModelRunner.load_model is wrapped


def test_the_hook_places_kept_rows_from_the_chunk_start():
    """3 text tokens, an image of 2 x 3 tokens keeping 3 (raster 1, 3, 5), 2 text tokens: the text after the image at
    base + max(h, w); a chunk starting inside the image places its rows only; placing twice changes nothing."""
    from types import SimpleNamespace as NS

    from litelvlm_kernels.serving.vllm.qwen_vl import mrope_positions, place_kept_rows, position_channels

    img = 299
    ids = [5, 6, 7, img, img, img, 8, 9]
    feat = NS(modality="image", mm_position=NS(offset=3, length=3), data={"image_grid_thw": NS(data=torch.tensor(
        [1, 4, 6]))})
    pos, delta = mrope_positions(ids, [feat], merge=2)
    assert pos.tolist() == [[0, 1, 2, 3, 3, 3, 6, 7]] * 3 and delta == 0
    kept = torch.tensor([1, 3, 5])
    rows = torch.cat([torch.randn(3, 2), position_channels(kept, 3).float()], 1)
    want = [[0, 1, 2, 3, 3, 3, 6, 7], [0, 1, 2, 3, 4, 4, 6, 7], [0, 1, 2, 4, 3, 5, 6, 7]]
    out, full, d = place_kept_rows(ids, [rows], pos, 0, img)
    assert full.tolist() == want and d == 0 and torch.equal(out[0], rows[:, :2])
    _, part, _ = place_kept_rows(torch.tensor(ids), [rows[1:]], pos, 4, img)  # a chunk from token 4 (V2: a tensor)
    assert part[:, :4].tolist() == pos[:, :4].tolist() and part[:, 4:].tolist() == full[:, 4:].tolist()
    assert place_kept_rows(ids, [rows], full, 0, img)[1].tolist() == want  # again on its own output
    assert place_kept_rows(ids, [], full, 8, img)[1:] == (full, 0)  # decode steps: nothing to place


def test_budget_settings_and_the_transformers_bound():
    from types import SimpleNamespace as NS

    from litelvlm_kernels.integrations.qwen_vl import check_transformers
    from litelvlm_kernels.serving.vllm.qwen_vl import qwen_request, qwen_settings

    check_transformers()  # this venv's transformers (5.19): what the comparisons above ran enable_litelvlm on
    with pytest.raises(ValueError, match="transformers 5.18.2"):
        check_transformers("5.18.2")
    with pytest.raises(ValueError, match=r"litelvlm\.num_retain / retain_ratio"):
        qwen_settings(NS(litelvlm={"scorer": "/x", "num_retain": 8, "retain_ratio": 0.5}))
    ratio = qwen_settings(NS(litelvlm={"scorer": "/x", "retain_ratio": 0.3}))
    assert [qwen_request(ratio, {"expression": "a"}).kept(n) for n in (1, 10, 11)] == [1, 3, 4]
    assert [qwen_request(ratio, {"expression": "a", "num_retain": 4}).kept(n) for n in (2, 10)] == [2, 4]


@pytest.fixture(scope="module")
def server(qwen, family, tmp_path_factory):
    overrides = {"architectures": [ARCH[family]], "litelvlm": {"scorer": str(qwen.clip_dir), "num_retain": R}}
    yield from serve(qwen.llava_dir, overrides, tmp_path_factory)


@pytest.mark.parametrize("family", ["qwen2_5_vl"], indirect=True)  # one family: the server path is the same
@pytest.mark.parametrize("kwargs,field", [
    (None, "mm_processor_kwargs.expression"),
    ({"expression": "the cat", "retain_ratio": 2}, "mm_processor_kwargs.retain_ratio"),
    ({"expression": "the cat", "num_retain": 2, "retain_ratio": 0.5}, "mm_processor_kwargs.num_retain"),
])
def test_server_answers_400_naming_the_field_and_goes_on(server, qwen, kwargs, field):
    im = image(40, WIDE)
    code, resp = chat(server, im, kwargs)
    assert code == 400, resp
    assert field in resp["error"]["message"]
    code, resp = chat(server, im, {"expression": "the cat", "retain_ratio": 0.5})
    assert code == 200, resp
    want = hf(qwen, [im], ["the cat"], prompt=P1, retain_ratio=0.5)
    assert resp["usage"]["prompt_tokens"] == want["text_len"] + sum(want["kept"])
    assert resp["prompt_token_ids"] == want["prompt_ids"] and resp["choices"][0]["token_ids"] == want["tokens"]
