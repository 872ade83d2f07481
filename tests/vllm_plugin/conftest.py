"""vLLM plugin tests: run in the vLLM venv only (scripts/install_vllm_cpu.sh, then
``.venv-vllm/bin/python -m pytest tests/vllm_plugin``). Elsewhere (the main environment, no vLLM) nothing
here is collected.

Engines run in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``distributed_executor_backend="uni"``:
about 4 s to start) with a 1 GiB KV cache (``VLLM_CPU_KVCACHE_SPACE``; vLLM's CPU default takes 90% of
the RAM), and are shared by the tests of a module.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
from pathlib import Path

import pytest


def _have_vllm() -> bool:
    """The real vLLM package (a regular package; this folder is named vllm_plugin so that it never shadows it)."""
    spec = importlib.util.find_spec("vllm")
    return spec is not None and bool(spec.origin) and spec.origin.endswith("__init__.py")


if not _have_vllm():
    collect_ignore_glob = ["test_*.py"]
else:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARCH = "LiteLVLMLlavaForConditionalGeneration"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny LLaVA + CLIP checkpoints (tiny_llava.py) and the same models in memory."""
    import tiny_llava

    t = tiny_llava.build(tmp_path_factory.mktemp("tiny_llava"))
    t.llava.generation_config.eos_token_id = None  # greedy runs max_new_tokens, as vLLM with ignore_eos
    return t


def engine_kwargs(tiny, *, stock: bool = False, **litelvlm) -> dict:
    """LLM(...) arguments for the tiny checkpoint: the LiteLVLM architecture with ``litelvlm`` settings,
    or the stock LLaVA."""
    over = {} if stock else {"architectures": [ARCH], "litelvlm": {"clip": str(tiny.clip_dir), **litelvlm}}
    return dict(model=str(tiny.llava_dir), hf_overrides=over, dtype="float32", max_model_len=2048,
                distributed_executor_backend="uni", enforce_eager=True, limit_mm_per_prompt={"image": 2},
                max_num_seqs=8, enable_prefix_caching=True, block_size=32, seed=0)


def make_llm(tiny, **kw):
    from vllm import LLM

    return LLM(**engine_kwargs(tiny, **kw))


def running(llm):
    """A module fixture's body: yield the engine, shut it down when the module is done."""
    try:
        yield llm
    finally:
        close_llm(llm)


def close_llm(llm) -> None:
    """Shut an in-process engine down so the next one in this process starts clean."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:
        pass
    del llm
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception:
        pass
