"""Tensor parallelism: TP = 2 (two CPU ranks) gives the same selection and tokens as transformers (= TP = 1).

The vision tower and projector are vLLM's tensor-parallel layers; the plugin's own modules (the
last layer's q/k/v, post_layernorm, visual_projection, the text tower) are replicated and read
the tower's whole output, so every rank selects the same tokens. vLLM's automatic CPU thread
binding refuses two ranks on this kind of machine ("Not enough allowed NUMA nodes"), so the ranks
are bound by hand: ``VLLM_CPU_OMP_THREADS_BIND="0|1"``. Multi-process engine: 30-45 s to start.
"""

from __future__ import annotations

import os

import pytest
from _compare import PROMPT_2, greedy, hf, request
from conftest import close_llm, engine_kwargs
from tiny_llava import image

R = 40


@pytest.fixture(scope="module")
def tp2(tiny):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("TP = 2 needs 2 CPU cores")
    from vllm import LLM

    old = {k: os.environ.get(k) for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING")}
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = os.environ.get("LITELVLM_TEST_TP_BIND", "0|1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    kw = dict(engine_kwargs(tiny, num_retain=R), tensor_parallel_size=2, distributed_executor_backend="mp")
    try:
        llm = LLM(**kw)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield llm
    close_llm(llm)


def test_tp2_equals_transformers(tp2, tiny):
    cases = [([image(30)], "the cat", None), ([image(31), image(32)], ["a red car", "the tree"], PROMPT_2)]
    outs = tp2.generate([request(imgs, e, **({"prompt": p} if p else {})) for imgs, e, p in cases], greedy(),
                        use_tqdm=False)
    for (imgs, e, p), out in zip(cases, outs):
        want = hf(tiny, imgs, [e] if isinstance(e, str) else e, **({"prompt": p} if p else {}), num_retain=R)
        assert list(out.prompt_token_ids) == want["prompt_ids"]
        assert list(out.outputs[0].token_ids) == want["tokens"]
