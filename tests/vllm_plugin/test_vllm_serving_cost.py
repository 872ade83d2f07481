"""The serving-cost parts of the plugin (LLaVA-1.5, R = 64): the per-image tower cache, the tower's chunks, the
per-request kept-index records, and q of the last layer for the [CLS] row only.

One engine (``tower_batch=2`` so a batch of images shows its chunks, a small ``tower_cache``, ``report_path``
set); every result is checked against ``enable_litelvlm`` on the same weights, token for token and index for
index. The server side of the records is in ``test_vllm_server.py``.
"""

from __future__ import annotations

import pytest
import torch
from _compare import PROMPT, PROMPT_2, check_same, generate_recorded, greedy, hf, read_records, request
from conftest import close_llm, engine_kwargs, make_llm
from tiny_llava import image

from litelvlm_kernels.serving.vllm import plugin
from litelvlm_kernels.serving.vllm.tower_cache import TowerCache

R = 64
CACHE = 3  # images


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return tmp_path_factory.mktemp("reports") / "kept.jsonl"


@pytest.fixture(scope="module")
def llm(tiny, reports):
    engine = make_llm(tiny, num_retain=R, tower_batch=2, tower_cache=CACHE, report_path=str(reports))
    yield engine
    close_llm(engine)


def tower_calls(llm) -> list:
    """The tower calls' batch sizes since the last call of this function (a wrapper on the engine's tower)."""
    def take(m):
        calls = getattr(m, "_test_tower_calls", None)
        if calls is None:
            forward = m.vision_tower.forward
            calls = m._test_tower_calls = []

            def counted(pixels, *a, **k):
                calls.append(int(pixels.shape[0]))
                return forward(pixels, *a, **k)
            m.vision_tower.forward = counted
        out = list(calls)
        calls.clear()
        return out
    return llm.apply_model(take)[0]


# ---- the tower cache, without an engine -------------------------------------------------------------------------

def test_tower_cache_shares_bounds_and_chunks():
    calls = []

    def tower(px):
        calls.append(px.shape[0])
        return px.flatten(1)[:, None].repeat(1, 2, 1) * 2  # [B, 2, C*H*W]: any function of the pixels

    px = torch.randn(5, 3, 2, 2)
    cache = TowerCache(capacity=2, batch=2)
    keys = [b"a", b"b", b"a", b"c", None]
    out = cache.stacked(keys, px, tower)
    assert calls == [2, 2]  # 4 distinct (a, b, c and the keyless item) in near-equal chunks of <= 2: 2 + 2
    assert torch.equal(out[2], out[0]) and torch.equal(out[1], tower(px[1:2])[0])  # a twice: computed once
    assert cache.runs == 4 and len(cache) == 2  # bounded: the two most recent keys (b, c)
    calls.clear()
    again = cache.stacked([b"c", b"b", b"a"], px[[3, 1, 0]], tower)
    assert calls == [1] and torch.equal(again, torch.stack([out[3], out[1], out[0]]))  # only a (evicted) again
    with pytest.raises(ValueError, match="capacity"):
        TowerCache(capacity=-1, batch=1)
    off = TowerCache(capacity=0, batch=8)
    off.stacked([b"a", b"a"], px[:2], tower)
    assert off.runs == 1 and len(off) == 0  # off: nothing kept, the batch still shares


def test_settings_and_report_requests_are_checked(tiny):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    from litelvlm_kernels.serving.vllm.settings import settings_from_config

    for bad, match in (({"tower_cache": -1}, r"litelvlm\.tower_cache"), ({"tower_batch": 0}, r"litelvlm\.tower_batch"),
                       ({"report_path": ""}, r"litelvlm\.report_path")):
        with pytest.raises(ValueError, match=match):
            settings_from_config(type("C", (), {"litelvlm": {"clip": "/x", **bad}}))
    plugin.register()
    kw = engine_kwargs(tiny, num_retain=R)  # no report_path: a report id is refused by name
    mc = ModelConfig(model=kw["model"], hf_overrides=kw["hf_overrides"], dtype="float32", max_model_len=2048)
    processor = MULTIMODAL_REGISTRY.create_processor(mc)
    prompt = tiny.processor.tokenizer.encode(PROMPT_2)
    items = processor.info.parse_mm_data({"image": [image(0), image(0)]})
    with pytest.raises(ValueError, match=r"mm_processor_kwargs\.report: this engine writes no reports"):
        processor.apply(ProcessorInputs(prompt, items, hf_processor_mm_kwargs={"expression": "a", "report": "x"}),
                        TimingContext(enabled=False))
    # the key is the image's alone: another expression or budget, the same key; another image, another key
    keys = [processor.apply(ProcessorInputs(prompt, items, hf_processor_mm_kwargs=k), TimingContext(enabled=False))
            ["mm_kwargs"]["image"] for k in ({"expression": "a"}, {"expression": "b", "num_retain": 8})]
    assert all(it["litelvlm_key"].field.keep_on_cpu for it in keys[0])
    k = [[it["litelvlm_key"].data for it in req] for req in keys]
    assert torch.equal(k[0][0], k[0][1]) and torch.equal(k[0][0], k[1][0])
    other_items = processor.info.parse_mm_data({"image": [image(1)]})
    other = processor.apply(ProcessorInputs(tiny.processor.tokenizer.encode(PROMPT), other_items,
                                            hf_processor_mm_kwargs={"expression": "a"}), TimingContext(enabled=False))
    assert not torch.equal(other["mm_kwargs"]["image"][0]["litelvlm_key"].data, k[0][0])


# ---- in the engine ----------------------------------------------------------------------------------------------

def test_two_expressions_run_the_tower_once_in_one_batch_and_across_requests(llm, tiny):
    a, b, c = "the man on the left", "a red car", "the cat"
    tower_calls(llm)
    img = image(40)
    want = {e: hf(tiny, [img], [e], num_retain=R) for e in (a, b, c)}
    outs, rec = generate_recorded(llm, [request(img, a), request(img, b)])
    assert tower_calls(llm) == [1]  # one image, two expressions, one batch: the tower ran once
    for e, out in zip((a, b), outs):
        check_same(out, want[e], rec, R)
    assert not torch.equal(rec[0][1], rec[1][1])
    ((out,), rec) = generate_recorded(llm, [request(img, c)])  # a later request, a third expression
    assert tower_calls(llm) == []  # the states came from the cache: the selection only
    check_same(out, want[c], rec, R)


def test_tower_runs_in_chunks_and_evicts(llm, tiny):
    """5 new images with tower_batch=2: chunks of 1 + 2 + 2 (never above the batch); results unchanged; the cache
    holds the last CACHE images, so the first one runs again."""
    imgs = [image(50 + i) for i in range(5)]
    tower_calls(llm)
    outs, rec = generate_recorded(llm, [request(im, "the dog") for im in imgs])
    assert sorted(tower_calls(llm)) == [1, 2, 2]
    for im, out in zip(imgs, outs):
        check_same(out, hf(tiny, [im], ["the dog"], num_retain=R), rec, R)
    generate_recorded(llm, [request(imgs[-1], "a cup"), request(imgs[0], "a cup")])
    assert tower_calls(llm) == [1]  # the last image is cached, the first was evicted


def test_report_records_are_the_kept_indices(llm, tiny, reports):
    before = len(read_records(reports))
    imgs = [image(60), image(61)]
    reqs = [request(imgs, "the cat", prompt=PROMPT_2, report="two-images"),
            request(image(62), "a red car", report="one"), request(image(63), "the dog")]
    outs, rec = generate_recorded(llm, reqs)
    records = read_records(reports)[before:]
    assert sorted((r["id"], r["item"]) for r in records) == [("one", 0), ("two-images", 0), ("two-images", 1)]
    want = {("two-images", 0): hf(tiny, imgs, ["the cat"], prompt=reqs[0]["prompt"], num_retain=R),
            ("one", 0): hf(tiny, [image(62)], ["a red car"], num_retain=R)}
    for r in records:
        w = want.get((r["id"], 0))
        (view,) = r["views"]
        assert r["modality"] == "image" and r["num_retain"] == R and r["num_tokens"] == R and view["grid"] == [24, 24]
        assert view["indices"] == w["indices"][r["item"]].tolist()
        assert view["from_similarity"] == w["from_similarity"][r["item"]].tolist()
    # the same request again hits vLLM's caches: no selection, no new record (docs/serving.md)
    n = len(read_records(reports))
    (out,) = llm.generate([reqs[1]], greedy(), use_tqdm=False)
    assert list(out.outputs[0].token_ids) == list(outs[1].outputs[0].token_ids)
    assert len(read_records(reports)) == n


def test_engine_scorer_projects_q_for_the_cls_row_only(tiny):
    """The engine's CLIP scorer projects q for [CLS] alone; the transformers scorer keeps the stock layer's
    every-row product (bit for bit); the two agree to rounding."""
    import copy

    from litelvlm_kernels.selection.kinds import engine_parts_for, scorer_for

    config = copy.deepcopy(tiny.clip.config)  # the parts set fields of the text config: not on the shared model's
    parts = engine_parts_for(config.vision_config, config)
    state = tiny.clip.state_dict()
    parts.load_state_dict({ours: state[f"vision_model.{there}" if where == "tower" else there]
                           for ours, (where, there) in parts.checkpoint_names().items()})
    last = tiny.clip.vision_model.encoder.layers[-1]
    engine, hf_side = parts.scorer(), scorer_for(tiny.clip)
    assert engine.cls_query_only and not hf_side.cls_query_only
    x = torch.randn(3, 577, tiny.llava.config.vision_config.hidden_size)
    got, ref = engine.contribution_inputs(x), hf_side.contribution_inputs(x)
    y = last.layer_norm1(x)
    assert torch.equal(ref["q_cls"], last.self_attn.q_proj(y)[:, 0])  # the stock layer's product, sliced
    assert torch.equal(got["q_cls"], last.self_attn.q_proj(y[:, 0]))  # one row
    torch.testing.assert_close(got["q_cls"], ref["q_cls"])
    assert torch.equal(got["keys"], ref["keys"]) and torch.equal(got["values"], ref["values"])
