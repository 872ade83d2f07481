"""The two sides of a comparison: vLLM + the plugin, and ``enable_litelvlm`` on the same weights."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

PROMPT = "user : <image> what is this ? assistant :"
PROMPT_2 = "user : <image> and <image> where is the cat ? assistant :"
N_NEW = 8


def request(images, expression=None, prompt: str = PROMPT, **kwargs) -> dict:
    """An LLM.generate prompt dict; ``expression`` (str or list) and other kwargs go to mm_processor_kwargs."""
    mm = dict(kwargs)
    if expression is not None:
        mm["expression"] = expression
    req = {"prompt": prompt, "multi_modal_data": {"image": images}}
    if mm:
        req["mm_processor_kwargs"] = mm
    return req


def greedy():
    from vllm import SamplingParams

    return SamplingParams(max_tokens=N_NEW, temperature=0, ignore_eos=True)


def ids_of(outs) -> list:
    """(prompt ids, generated ids) of each output of ``LLM.generate``."""
    return [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs]


def generate_once(llm, requests) -> list:
    """``ids_of`` the greedy outputs of ``requests`` on an engine started for them alone and shut down after (the
    stock engine a keep-all test compares with: one engine at a time in a process)."""
    from conftest import close_llm

    try:
        return ids_of(llm.generate(requests, greedy(), use_tqdm=False))
    finally:
        close_llm(llm)


def refused_configs(check, config, cases) -> None:
    """A family's config ``check`` passes ``config`` and refuses each copy of it with one ``(field, value, match)``
    changed (``field`` may be dotted: "vision_config.model_type") with a ValueError matching ``match``."""
    check(config)
    for field, value, match in cases:
        cfg = copy.deepcopy(config)
        *path, name = field.split(".")
        setattr(functools.reduce(getattr, path, cfg), name, value)
        with pytest.raises(ValueError, match=match):
            check(cfg)


def embeds_refused(processor, tiny) -> None:
    """vLLM's multimodal ``processor`` (made with ``enable_mm_embeds=True``) refuses precomputed image embeddings by
    name."""
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    prompt = tiny.processor.tokenizer.encode(PROMPT)
    embeds = processor.info.parse_mm_data({"image": [torch.zeros(100, tiny.llava.config.text_config.hidden_size)]})
    with pytest.raises(ValueError, match="image_embeds"):
        processor.apply(ProcessorInputs(prompt, embeds, hf_processor_mm_kwargs={"expression": "the cat"}),
                        TimingContext(enabled=False))


def start_recording(llm) -> None:
    """Record every image's kept indices inside the engine (selector.recorder)."""
    llm.apply_model(lambda m: setattr(m.litelvlm, "recorder", []))


def recorded(llm) -> list:
    """[(num_retain, indices, from_similarity)] since start_recording, and stop recording."""
    def take(m):
        out, m.litelvlm.recorder = m.litelvlm.recorder, None
        return out
    return llm.apply_model(take)[0]


def generate_recorded(llm, requests) -> tuple:
    """(the greedy outputs of ``requests``, every selection the engine recorded meanwhile)."""
    start_recording(llm)
    outs = llm.generate(requests, greedy(), use_tqdm=False)
    return outs, recorded(llm)


def hf(tiny, images, expressions, prompt: str = PROMPT, processor=None, **settings) -> dict:
    """enable_litelvlm's greedy tokens, kept indices per image and the shrunk prompt ids, for one prompt.

    ``expressions``: the prompt's referring expressions (a list of str; [] for none)."""
    from litelvlm_kernels.integrations.lvlm import enable_litelvlm

    images = images if isinstance(images, list) else [images]
    inputs = (processor or tiny.processor)(images=images, text=prompt, return_tensors="pt")
    ids = inputs["input_ids"][0]
    with torch.no_grad(), enable_litelvlm(tiny.llava, tiny.clip, tiny.clip_tokenizer, **settings) as patch:
        out = tiny.llava.generate(**inputs, referring_expressions=[list(expressions)], max_new_tokens=N_NEW,
                                  do_sample=False)
        report = patch.last_report
    kept = report["image"]["kept"]
    views = [v for item in report["image"]["views"] for v in item]  # every view of every image, in order
    shrunk, k, i = [], 0, 0
    while i < len(ids):  # each run of M placeholders -> kept[k] placeholders
        if ids[i] == tiny.image_token_id:
            run = i
            while run < len(ids) and ids[run] == tiny.image_token_id:
                run += 1
            shrunk += [tiny.image_token_id] * kept[k]
            k, i = k + 1, run
        else:
            shrunk.append(int(ids[i]))
            i += 1
    return {"tokens": out[0, len(ids):].tolist(), "indices": [v["indices"] for v in views],
            "from_similarity": [v["from_similarity"] for v in views], "prompt_ids": shrunk, "kept": kept,
            "text_len": len(shrunk) - sum(kept)}


def check_same(out, want: dict, rec: list, r: int) -> None:
    """An engine output equals ``want`` (``hf``'s): prompt ids, greedy ids, and the item's views (kept indices and
    flags, at budget ``r``) found as one run in the recording ``rec``."""
    assert list(out.prompt_token_ids) == want["prompt_ids"]
    assert list(out.outputs[0].token_ids) == want["tokens"]
    views = list(zip(want["indices"], want["from_similarity"]))
    runs = [rec[i:i + len(views)] for i in range(len(rec) - len(views) + 1)]
    assert any(all(x[0] == r and torch.equal(x[1], i) and torch.equal(x[2], f) for x, (i, f) in zip(run, views))
               for run in runs)


def check_two_expressions(llm, tiny, images: tuple, a: str, b: str, r: int, **hf_kwargs) -> None:
    """One image with expressions ``a`` and ``b`` at budget ``r``: in one batch (``images[0]``), then across requests
    with prefix caching (A, B, A again on ``images[1]``, which the engine has not seen: nothing of it is cached).
    Each equals ``hf`` (with ``hf_kwargs``), A and B keep different tokens, neither request reuses the other's
    selection or KV of the image, A's repeat hits the prefix cache."""
    im = images[0]
    want = {e: hf(tiny, [im], [e], num_retain=r, **hf_kwargs) for e in (a, b)}
    outs, rec = generate_recorded(llm, [request(im, a, num_retain=r), request(im, b, num_retain=r)])
    assert len(rec) == 2 * len(want[a]["indices"])  # two selections of the image's views
    for e, out in zip((a, b), outs):
        check_same(out, want[e], rec, r)
    assert any(not torch.equal(x, y) for x, y in zip(want[a]["indices"], want[b]["indices"]))
    im = images[1]
    want = {e: hf(tiny, [im], [e], num_retain=r, **hf_kwargs) for e in (a, b)}
    ((out_a,), rec_a), ((out_b,), rec_b), ((out_a2,), _) = [
        generate_recorded(llm, [request(im, e, num_retain=r)]) for e in (a, b, a)]
    check_same(out_a, want[a], rec_a, r)
    check_same(out_b, want[b], rec_b, r)
    assert out_b.num_cached_tokens <= list(out_b.prompt_token_ids).index(tiny.image_token_id)
    assert list(out_a2.outputs[0].token_ids) == want[a]["tokens"] and out_a2.num_cached_tokens > 0


def read_records(path) -> list:
    """The kept-index records (``litelvlm.report_path``, one JSON line each) written so far."""
    import json

    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def records_by_id(path) -> dict:
    """{(report id, item index in its request): record} of the records written so far."""
    return {(r["id"], r["item"]): r for r in read_records(path)}
