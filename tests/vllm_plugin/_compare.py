"""The two sides of a comparison: vLLM + the plugin, and ``enable_litelvlm`` on the same weights."""

from __future__ import annotations

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


def start_recording(llm) -> None:
    """Record every image's kept indices inside the engine (selector.recorder)."""
    llm.apply_model(lambda m: setattr(m.litelvlm, "recorder", []))


def recorded(llm) -> list:
    """[(num_retain, indices, from_similarity)] since start_recording, and stop recording."""
    def take(m):
        out, m.litelvlm.recorder = m.litelvlm.recorder, None
        return out
    return llm.apply_model(take)[0]


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
    views = [v[0] for v in report["image"]["views"]]
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
