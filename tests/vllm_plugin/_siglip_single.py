"""The checks every single-view SigLIP family passes through the plugin (LLaVA with a SigLIP tower, PaliGemma),
written once: test_vllm_llava_siglip.py and test_vllm_paligemma.py import these fixtures and tests and give the
``family`` fixture (pytest runs an imported test in the importing module, with that module's fixtures).

The tiny checkpoints of tiny_siglip_lvlm.py (M = 64 patches per image, no [CLS]). Checked: the count is min(R, M)
for any budget and image size, also for the memory profile, and image embeddings are refused; keeping every token
(R = M, one expression, the default "official" order, which is raster order then) equals stock vLLM token for token;
R < M equals ``enable_litelvlm`` on the same weights token for token and index for index (several images,
expressions, text counts and budgets in one batch; LLaVA: 2 images per prompt), with the engine's prompt = text +
min(R, M) per image; one image with two expressions in one batch and across requests with prefix caching (each
correct, the two differ, B reuses no KV of A's image, A's repeat hits the cache); the OpenAI-compatible server
answers bad requests 400 naming the field and goes on serving.

PaliGemma's transformers side runs causally (no ``token_type_ids``), as vLLM's CPU build runs it
(``tiny_siglip_lvlm.PaliGemmaCausalInputs``).
"""

from __future__ import annotations

import pytest
import torch
from _compare import PROMPT, PROMPT_2, check_same, greedy, hf, recorded, records_by_id, request, start_recording
from conftest import close_llm
from test_vllm_server import chat, serve
from tiny_llava import image
from tiny_siglip_lvlm import ARCH, IMAGES_PER_PROMPT, TEXT_ONLY_TEMPLATE, M, PaliGemmaCausalInputs, build, engine_kwargs

# what a family's test module imports with *: the fixtures and the tests
__all__ = ["llm", "lvlm", "reports", "server", "stock_outputs",  # the tests in the order they are written
           "test_count_is_min_r_m_for_any_size_and_the_profile", "test_keep_all_equals_stock_vllm",
           "test_a_batch_of_images_expressions_and_budgets_equals_transformers",
           "test_one_image_two_expressions_in_one_batch_and_across_requests",
           "test_server_answers_400_naming_the_field_and_goes_on"]
PALIGEMMA_PROMPT = "what is this ?"  # vLLM puts <image> x R' + <bos> in front and "\n" after
SERVER_R = 16


def prompt_of(family: str, n_images: int) -> str:
    if family == "paligemma":
        return PALIGEMMA_PROMPT
    return PROMPT if n_images == 1 else PROMPT_2


def exprs(e) -> list:
    return [] if e is None else [e] if isinstance(e, str) else list(e)


def want(tiny, family: str, images: list, e, r: int) -> dict:
    """``enable_litelvlm``'s run of the same request (``_compare.hf``)."""
    inputs = PaliGemmaCausalInputs(tiny.processor) if family == "paligemma" else None
    return hf(tiny, images, exprs(e), prompt=prompt_of(family, len(images)), processor=inputs, num_retain=r)


def ask(family: str, images: list, e, r: int | None = None, **extra) -> dict:
    kw = {} if r is None else {"num_retain": r}
    return request(images, e, prompt=prompt_of(family, len(images)), **kw, **extra)


def processor_of(tiny, family: str, stock: bool = False, **litelvlm):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from litelvlm_kernels.serving.vllm import plugin

    plugin.register()
    e = engine_kwargs(tiny, family, stock=stock, **litelvlm)
    mc = ModelConfig(model=e["model"], hf_overrides=e["hf_overrides"], dtype="float32", max_model_len=2048,
                     limit_mm_per_prompt=e["limit_mm_per_prompt"], enable_mm_embeds=True)
    return MULTIMODAL_REGISTRY.create_processor(mc)


def make_llm(tiny, family: str, **kw):
    from vllm import LLM

    return LLM(**engine_kwargs(tiny, family, **kw))


# ---- fixtures (module-scoped in the importing module) ------------------------------------------------

@pytest.fixture(scope="module")
def lvlm(tmp_path_factory, family):
    return build(tmp_path_factory.mktemp(family), family)


def keep_all_cases(family: str) -> list:
    cases = [([image(10)], "the cat"), ([image(11, size=(500, 300))], "the dog")]
    return cases + ([([image(12), image(13)], "a red car")] if IMAGES_PER_PROMPT[family] > 1 else [])


@pytest.fixture(scope="module")
def stock_outputs(lvlm, family):
    llm = make_llm(lvlm, family, stock=True)
    try:
        outs = llm.generate([ask(family, i, None) for i, _ in keep_all_cases(family)], greedy(), use_tqdm=False)
        return [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs]
    finally:
        close_llm(llm)


@pytest.fixture(scope="module")
def reports(tmp_path_factory, family):
    return tmp_path_factory.mktemp(f"{family}_reports") / "kept.jsonl"


@pytest.fixture(scope="module")
def llm(lvlm, family, stock_outputs, reports):  # after the stock engine is gone; R = M, requests ask for less
    engine = make_llm(lvlm, family, num_retain=M, missing_expressions="cls", report_path=str(reports))
    yield engine
    close_llm(engine)


@pytest.fixture(scope="module")
def server(lvlm, family, tmp_path_factory):
    overrides = {"architectures": [ARCH[family]], "litelvlm": {"scorer": str(lvlm.clip_dir), "num_retain": SERVER_R}}
    extra = ("--chat-template", TEXT_ONLY_TEMPLATE) if family == "paligemma" else ()
    yield from serve(lvlm.llava_dir, overrides, tmp_path_factory, images=IMAGES_PER_PROMPT[family], extra_args=extra)


# ---- tests -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 16, M, M + 10])
def test_count_is_min_r_m_for_any_size_and_the_profile(lvlm, family, r):
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    proc = processor_of(lvlm, family, num_retain=r)
    sizes = [(64, 64), (500, 300), (7, 900)]
    assert [proc.info.get_num_image_tokens(image_width=w, image_height=h) for w, h in sizes] == [min(r, M)] * 3
    (ph,) = proc.get_dummy_mm_inputs({"image": 1})["mm_placeholders"]["image"]  # the memory profile's image
    assert ph.get_num_embeds() == min(r, M)  # (PaliGemma's placeholder range also spans the <bos> after them)
    if r == M:  # keeping every token: stock vLLM's count
        stock = processor_of(lvlm, family, stock=True).info
        assert stock.get_num_image_tokens(image_width=64, image_height=64) == M
    embeds = proc.info.parse_mm_data({"image": [torch.zeros(min(r, M), 64)]})
    prompt = lvlm.processor.tokenizer.encode(prompt_of(family, 1))
    with pytest.raises(ValueError, match="image_embeds"):
        proc.apply(ProcessorInputs(prompt, embeds, hf_processor_mm_kwargs={"expression": "the cat"}),
                   TimingContext(enabled=False))


def test_keep_all_equals_stock_vllm(llm, family, stock_outputs):
    outs = llm.generate([ask(family, i, e) for i, e in keep_all_cases(family)], greedy(), use_tqdm=False)
    assert [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs] == stock_outputs


def test_a_batch_of_images_expressions_and_budgets_equals_transformers(llm, lvlm, family, reports):
    cases = [([image(20)], "the cat", 16), ([image(21, size=(500, 300))], ["a red car", "the sky"], 16),
             ([image(22)], "the man on the left", 40), ([image(23)], ["the dog", "the tree in the sky"], 8),
             ([image(20)], "a red car", 16)]  # the first image again, another expression
    if IMAGES_PER_PROMPT[family] > 1:
        cases.append(([image(24), image(25, size=(90, 300))], ["the cup", "the ball"], 40))
    start_recording(llm)
    # every request but the last asks for its kept-index records (report.py)
    outs = llm.generate([ask(family, i, e, r, **({"report": f"{family}-{n}"} if n < len(cases) - 1 else {}))
                         for n, (i, e, r) in enumerate(cases)], greedy(), use_tqdm=False)
    rec, records = recorded(llm), records_by_id(reports)
    assert len(rec) == sum(len(i) for i, _, _ in cases)  # one selection per image: none reused another's
    assert sorted(records) == sorted((f"{family}-{n}", k) for n, (i, _, _) in enumerate(cases[:-1])
                                     for k in range(len(i)))
    side = int(M ** 0.5)
    for n, ((images, e, r), out) in enumerate(zip(cases, outs)):
        expected = want(lvlm, family, images, e, r)
        check_same(out, expected, rec, r)
        for k in range(len(images) if n < len(cases) - 1 else 0):  # the record: transformers' kept indices
            x = records[(f"{family}-{n}", k)]
            assert (x["num_retain"], x["num_tokens"], len(x["views"])) == (r, min(r, M), 1)
            assert x["views"][0]["grid"] == [side, side]
            assert x["views"][0]["indices"] == expected["indices"][k].tolist()
            assert x["views"][0]["from_similarity"] == expected["from_similarity"][k].tolist()
        assert expected["kept"] == [min(r, M)] * len(images)
        assert len(out.prompt_token_ids) == expected["text_len"] + len(images) * min(r, M)
        assert sum(t == lvlm.image_token_id for t in out.prompt_token_ids) == len(images) * min(r, M)
    assert list(outs[0].outputs[0].token_ids) != list(outs[4].outputs[0].token_ids)  # same image, other expression


def test_one_image_two_expressions_in_one_batch_and_across_requests(llm, lvlm, family):
    """In one batch and across requests with prefix caching (A, B, A again): each equals transformers, A and B
    differ, B reuses no KV of A's image, A's repeat is served from the caches."""
    a, b, r = "the man on the left", "a cup", 40  # a prompt over one KV block (32): the prefix cache holds blocks
    im = image(30)
    start_recording(llm)
    outs = llm.generate([ask(family, [im], a, r), ask(family, [im], b, r)], greedy(), use_tqdm=False)
    rec = recorded(llm)
    assert len(rec) == 2 and not torch.equal(rec[0][1], rec[1][1])
    for e, out in zip((a, b), outs):
        check_same(out, want(lvlm, family, [im], e, r), rec, r)
    im = image(31)  # across requests: an image the engine has not cached yet
    seq = []
    for e in (a, b, a):
        start_recording(llm)
        (out,) = llm.generate([ask(family, [im], e, r)], greedy(), use_tqdm=False)
        seq.append((out, recorded(llm)))
    (out_a, rec_a), (out_b, rec_b), (out_a2, rec_a2) = seq
    assert len(rec_a) == len(rec_b) == 1 and not rec_a2  # A's repeat selects nothing: served from the caches
    assert not torch.equal(rec_a[0][1], rec_b[0][1])
    check_same(out_a, want(lvlm, family, [im], a, r), rec_a, r)
    check_same(out_b, want(lvlm, family, [im], b, r), rec_b, r)
    assert out_b.num_cached_tokens <= list(out_b.prompt_token_ids).index(lvlm.image_token_id)
    assert list(out_a2.outputs[0].token_ids) == list(out_a.outputs[0].token_ids) and out_a2.num_cached_tokens > 0


@pytest.mark.parametrize("kwargs,field", [
    (None, "mm_processor_kwargs.expression"),
    ({"expression": 3}, "mm_processor_kwargs.expression"),
    ({"expression": ["the cat", 7]}, "mm_processor_kwargs.expression[1]"),
    ({"expression": "the cat", "num_retain": 0}, "mm_processor_kwargs.num_retain"),
    ({"expression": "the cat", "num_retain": SERVER_R + 1}, "mm_processor_kwargs.num_retain"),
])
def test_server_answers_400_naming_the_field_and_goes_on(server, lvlm, family, kwargs, field):
    im = image(40)
    code, resp = chat(server, im, kwargs)
    assert code == 400, resp
    assert field in resp["error"]["message"]
    code, resp = chat(server, im, {"expression": "the cat"})
    assert code == 200, resp
    expected = want(lvlm, family, [im], "the cat", SERVER_R)
    assert resp["usage"]["prompt_tokens"] == expected["text_len"] + SERVER_R
    assert resp["prompt_token_ids"] == expected["prompt_ids"] and resp["choices"][0]["token_ids"] == expected["tokens"]
