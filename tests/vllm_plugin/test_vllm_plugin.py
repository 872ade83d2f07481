"""The plugin without an engine: entry point, idempotent registration, settings and the processor.

The processor checks use vLLM's own objects (``ModelConfig``, ``MULTIMODAL_REGISTRY``): the
placeholder count of an image, of the memory profile's dummy image and of the encoder budget is
R' = min(R, M), and the expression becomes the per-image tensor fields.
"""

from __future__ import annotations

import types
from importlib.metadata import entry_points

import pytest
import torch
from conftest import ARCH, engine_kwargs
from tiny_llava import M, image

from litelvlm_kernels.serving.vllm import MODEL_CLASS, plugin, settings

R = 48


def test_entry_point_runs_register_and_register_is_idempotent():
    from vllm import ModelRegistry
    from vllm.plugins import load_general_plugins

    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "litelvlm"]
    assert ep.value == "litelvlm_kernels.serving.vllm.plugin:register"
    load_general_plugins()
    assert ARCH in ModelRegistry.get_supported_archs()
    first = ModelRegistry.models[ARCH]
    for _ in range(3):  # every vLLM process runs it; again and again in one process is harmless
        ep.load()()
        plugin.register()
    assert ModelRegistry.models[ARCH] is first
    assert (first.module_name, first.class_name) == tuple(MODEL_CLASS.split(":"))


def cfg(**litelvlm):
    return types.SimpleNamespace(litelvlm=litelvlm)


@pytest.mark.parametrize("config,err,match", [
    (types.SimpleNamespace(), ValueError, r"litelvlm: the model config has no"),
    (cfg(num_retain=8), ValueError, r"litelvlm\.scorer"),
    (cfg(clip="/x", scorer="/y"), ValueError, r"litelvlm: give the checkpoint once"),
    (cfg(clip="/x", image_newline="kept_rows"), ValueError, r"litelvlm\.image_newline='kept_rows'"),
    (cfg(clip="/x", head_contribution="some"), ValueError, r"litelvlm\.head_contribution"),
    (cfg(clip="/x", num_retian=8), ValueError, r"unknown settings \['num_retian'\]"),
    (cfg(clip="/x", num_retain=0), ValueError, r"litelvlm\.num_retain"),
    (cfg(clip="/x", num_retain=True), TypeError, r"litelvlm\.num_retain"),
    (cfg(clip="/x", order="random"), ValueError, r"litelvlm\.order"),
    (cfg(clip="/x", missing_expressions="skip"), ValueError, r"litelvlm\.missing_expressions"),
    (cfg(clip="/x", multi_text="most"), ValueError, r"litelvlm\.multi_text"),
    (cfg(clip="/x", retain_ratio=0.5), ValueError, r"litelvlm\.retain_ratio: a paired scorer's setting"),
    (cfg(clip="/x", scorer_max_patches=64), ValueError, r"litelvlm\.scorer_max_patches: a paired scorer's"),
])
def test_bad_settings_name_the_key(config, err, match):
    with pytest.raises(err, match=match):
        settings.settings_from_config(config)


def test_request_options():
    s = settings.settings_from_config(cfg(clip="/x", num_retain=4))
    assert settings.request_options(s, {"expression": "a"}, M) == settings.RequestOptions(("a",), 4)
    assert settings.request_options(s, {"expression": ["a", "b"], "num_retain": 2}, M).num_retain == 2
    with pytest.raises(ValueError, match="5 expressions for 4 kept tokens"):
        settings.request_options(s, {"expression": list("abcde")}, M)
    with pytest.raises(ValueError, match=r"num_retain=5 is out of range"):
        settings.request_options(s, {"expression": "a", "num_retain": 5}, M)
    cls = settings.settings_from_config(cfg(clip="/x", num_retain=4, missing_expressions="cls"))
    assert settings.request_options(cls, {}, M).expressions == ()
    assert settings.request_options(cls, {"expression": []}, M).expressions == ()
    k = settings.settings_from_config(cfg(clip="/x", num_retain=4, k_per_text=3))
    with pytest.raises(ValueError, match="k_per_text=3"):
        settings.request_options(k, {"expression": ["a", "b"]}, M)
    assert settings.strip_request_keys({"expression": "a", "num_retain": 2, "do_resize": True}) == {"do_resize": True}


@pytest.fixture(scope="module")
def processor(tiny):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    plugin.register()
    kw = engine_kwargs(tiny, num_retain=R)
    mc = ModelConfig(model=kw["model"], hf_overrides=kw["hf_overrides"], dtype="float32", max_model_len=2048,
                     limit_mm_per_prompt={"image": 2})
    return MULTIMODAL_REGISTRY.create_processor(mc)


def test_placeholders_prompt_and_profile_are_r_prime(processor, tiny):
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    info = processor.info
    assert info.get_num_image_tokens(image_width=336, image_height=336) == R
    assert info.kept_count(10_000) == M
    assert info.get_max_image_tokens() == R
    assert info.get_mm_max_tokens_per_item(seq_len=2048, mm_counts={"image": 1}) in (None, {"image": R})
    # the memory profile: the dummy image gets R placeholders (and a dummy expression, so it does not fail)
    dummy = processor.get_dummy_mm_inputs({"image": 1})
    (ph,) = dummy["mm_placeholders"]["image"]
    assert ph.length == R
    # a real prompt: R' placeholders and the text fields
    tok = tiny.processor.tokenizer
    prompt = tok.encode("user : <image> what is this ? assistant :")
    items = info.parse_mm_data({"image": [image(0)]})
    inputs = ProcessorInputs(prompt, items, hf_processor_mm_kwargs={"expression": ["the cat", "a dog"]})
    out = processor.apply(inputs, TimingContext(enabled=False))
    assert sum(t == tiny.image_token_id for t in out["prompt_token_ids"]) == R
    (item,) = out["mm_kwargs"]["image"]
    ids, meta = (item[k].data for k in ("litelvlm_text_ids", "litelvlm_meta"))
    enc = tiny.clip_tokenizer(["the cat", "a dog"], padding=True, return_tensors="pt")
    assert torch.equal(ids, enc["input_ids"])
    assert meta.tolist() == [R, 2, R] and item["litelvlm_meta"].field.keep_on_cpu
    assert item["litelvlm_text_ids"].field.keep_on_cpu  # the fold cache keys on the ids without a device sync
    # the request's own budget reaches vLLM's count (through the processor's context variable), not the config's
    inputs = ProcessorInputs(prompt, items, hf_processor_mm_kwargs={"expression": "the cat", "num_retain": 5})
    out = processor.apply(inputs, TimingContext(enabled=False))
    assert sum(t == tiny.image_token_id for t in out["prompt_token_ids"]) == 5
    assert out["mm_kwargs"]["image"][0]["litelvlm_meta"].data.tolist() == [5, 1, 5]
    assert info.get_num_image_tokens(image_width=336, image_height=336) == R  # outside the request: configured


def test_engine_level_expression_or_budget_is_refused(tiny):
    """vLLM merges engine-level mm_processor_kwargs outside the multimodal hash: ours are refused by name."""
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    plugin.register()
    kw = engine_kwargs(tiny, num_retain=R)
    mc = ModelConfig(model=kw["model"], hf_overrides=kw["hf_overrides"], dtype="float32", max_model_len=2048,
                     mm_processor_kwargs={"expression": "the cat"})
    processor = MULTIMODAL_REGISTRY.create_processor(mc)
    prompt = tiny.processor.tokenizer.encode("user : <image> what is this ? assistant :")
    inputs = ProcessorInputs(prompt, processor.info.parse_mm_data({"image": [image(0)]}),
                             hf_processor_mm_kwargs={"expression": "a dog"})
    with pytest.raises(ValueError, match=r"mm_processor_kwargs: \['expression'\] set for the whole engine"):
        processor.apply(inputs, TimingContext(enabled=False))


def test_selection_reads_no_device_data(tiny):
    """The plugin's image path under FakeTensorMode: any read of tensor data on the host (.item(), .tolist(),
    a bool of a tensor, transformers checking a mask) raises there. Budgets and text counts are host ints
    (the CPU-resident field), the rest is shapes; mixed budgets and text counts take every branch.
    (transformers skips its own padding-mask check for fake tensors, so that one is not covered here: the
    plugin passes no mask at all, see selector.fold.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from litelvlm_kernels.serving.vllm.selector import EngineSelector

    s = settings.settings_from_config(cfg(clip=str(tiny.clip_dir), num_retain=R))
    vc = tiny.llava.config.vision_config
    ids = [torch.randint(0, 30, (2, 5)), torch.randint(0, 30, (1, 4)), torch.zeros(1, 1, dtype=torch.int64)]
    sel = EngineSelector(vc, tiny.clip.config, s)
    # fold reads the ids' bytes on purpose: they are CPU-resident host data (the processor's keep_on_cpu field)
    # that key the fold cache; it reads no other tensor's data
    calls = []
    encode = sel.scorer.encode_ids
    sel.scorer.encode_ids = lambda ids, mask: calls.append(ids.shape[0]) or encode(ids, mask)
    cond = sel.fold(ids, [2, 1, 0])
    again = sel.fold([ids[1], ids[0]], [1, 2])  # the same expressions again, other images: folded once only
    assert calls == [3]  # one text-tower call for the 3 distinct texts, none for the repeats
    assert torch.equal(again.folded.w[1], cond.folded.w[0]) and torch.equal(again.folded.w[0, :1], cond.folded.w[1, :1])
    with FakeTensorMode(allow_non_fake_inputs=True):
        states = torch.randn(3, 1 + M, vc.hidden_size)
        out = sel.select(states[:, 1:], states, cond, [R, 16, R])
    assert [tuple(i.shape) for i, _ in out] == [(R,), (16,), (R,)]


def test_settings_in_config_json(tiny, tmp_path):
    """The same settings in config.json instead of --hf-overrides."""
    import json

    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    plugin.register()
    for f in tiny.llava_dir.iterdir():
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "config.json").unlink()
    config = json.loads((tiny.llava_dir / "config.json").read_text())
    config.update(architectures=[ARCH], litelvlm={"clip": str(tiny.clip_dir), "num_retain": 20, "order": "spatial"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    mc = ModelConfig(model=str(tmp_path), dtype="float32", max_model_len=2048)
    assert mc.architectures == [ARCH]
    info = MULTIMODAL_REGISTRY.create_processor(mc).info
    assert info.get_max_image_tokens() == 20 and info.settings().order == "spatial"
