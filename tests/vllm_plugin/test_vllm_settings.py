"""Other settings, one engine: multi_text="intersection", order="spatial", and LLaVA's
vision_feature_select_strategy="full" ([CLS] kept in front: R' + 1 placeholders), all set through
``hf_overrides``; against ``enable_litelvlm`` with the same settings on the same weights.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from _compare import greedy, hf, recorded, request, start_recording
from conftest import close_llm, engine_kwargs
from tiny_llava import PATCH, image

R = 48
SETTINGS = dict(num_retain=R, multi_text="intersection", order="spatial")


@pytest.fixture(scope="module")
def llm(tiny):
    from vllm import LLM

    kw = engine_kwargs(tiny, **SETTINGS)
    kw["hf_overrides"]["vision_feature_select_strategy"] = "full"
    engine = LLM(**kw)
    yield engine
    close_llm(engine)


@pytest.fixture
def hf_full(tiny):
    """The transformers model and a processor with vision_feature_select_strategy="full" (restored after)."""
    configs = {id(c): c for c in (tiny.llava.config, getattr(tiny.llava, "model", tiny.llava).config)}.values()
    saved = [(c, c.vision_feature_select_strategy) for c in configs]  # before any change (one object or two)
    for c in configs:
        c.vision_feature_select_strategy = "full"
    p = tiny.processor
    proc = transformers.LlavaProcessor(image_processor=p.image_processor, tokenizer=p.tokenizer, patch_size=PATCH,
                                       vision_feature_select_strategy="full", image_token="<image>",
                                       num_additional_image_tokens=1, chat_template=p.chat_template)
    try:
        yield proc
    finally:
        for c, v in saved:
            c.vision_feature_select_strategy = v


def test_intersection_spatial_full_equals_transformers(llm, tiny, hf_full):
    img = image(40)
    cases = ["the cat", ["the man on the left", "a red car"]]
    start_recording(llm)
    outs = llm.generate([request(img, e) for e in cases], greedy(), use_tqdm=False)
    rec = recorded(llm)
    for e, out, r in zip(cases, outs, rec):
        want = hf(tiny, img, [e] if isinstance(e, str) else e, processor=hf_full, **SETTINGS)
        assert want["kept"] == [R + 1]  # [CLS] + R'
        assert sum(t == tiny.image_token_id for t in out.prompt_token_ids) == R + 1
        assert list(out.prompt_token_ids) == want["prompt_ids"]
        assert list(out.outputs[0].token_ids) == want["tokens"]
        assert torch.equal(r[1], want["indices"][0])
        assert torch.equal(r[1], r[1].sort().values)  # spatial order
