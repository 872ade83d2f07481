"""The vLLM benchmark's engine side: random-weight checkpoints built offline (presets of tower and LLM
shapes, cached under ``build/bench_vllm/``), engine arguments, requests, and wall-clock timers around the
image path's pieces inside an engine. Used by ``benchmarks/bench_vllm.py`` (its docstring says what is
measured); needs the vLLM venv (``scripts/install_vllm_cpu.sh``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

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
FULL = dict(tower="vit-l-336", llm="llama-1.8b", requests=8, max_tokens=16, kv_gib=2, warmup=1)
QUICK = dict(tower="tiny", llm="tiny", requests=4, max_tokens=8, kv_gib=1, warmup=1)

# A LLaVA-1.5-like prompt in the tests' word-level LLM vocabulary: a 34-word "system prompt" (fillers
# w0..w33, as LLaVA-1.5's ~35-token one), then the image and the question.
SYSTEM = " ".join(f"w{i}" for i in range(34))
PROMPT = SYSTEM + " user : <image> where is the man on the left ? assistant :"
EXPRESSIONS = ["the man on the left", "a red car", "the cat in the tree", "the dog", "a cup on the left",
               "the red ball", "the man in the red shirt", "a photo of the sky"]


# ------------------------------------------------------------------------------------------ imports


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


def build_checkpoint(tower: str = "vit-l-336", llm: str = "llama-1.8b", dtype: str = "bfloat16", seed: int = 0,
                     cache_dir: Path = CACHE_DIR, log=print) -> SimpleNamespace:
    """A LLaVA-1.5-shaped checkpoint (``TOWERS[tower]`` + ``LLMS[llm]``, random weights) and its CLIP checkpoint.

    ``tiny_llava.build`` writes the tokenizers, the processor and the layout; this swaps the configs and
    weights for the given shapes. The CLIP checkpoint holds what the plugin reads from it (text tower,
    ``text_projection``, ``visual_projection``); the vision tower, its last layer and ``post_layernorm``
    are in the LLaVA checkpoint, as in llava-hf's. Cached by shapes, dtype and seed.
    """
    import transformers
    from safetensors.torch import save_file

    tiny_llava, _, _ = tests_vllm()
    spec = dict(tower=TOWERS[tower], text=TEXT_TOWERS[tower], llm=LLMS[llm], vocab=VOCAB, dtype=dtype, seed=seed,
                version=BUILDER_VERSION)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cache_dir) / f"{tower}-{llm}-{dtype}-{key}"
    done = folder / "DONE"
    ck = SimpleNamespace(folder=folder, llava_dir=folder / "llava", clip_dir=folder / "clip", tower=tower, llm=llm,
                         dtype=dtype)
    if done.exists():
        ck.image_token_id = json.loads(done.read_text())["image_token_id"]
        return ck
    t0 = time.perf_counter()
    tiny = tiny_llava.build(folder)  # tokenizers, processor, configs and tiny weights (replaced below)
    torch_dtype = getattr(torch, dtype)

    text_cfg, proj = TEXT_TOWERS[tower]
    old = transformers.CLIPConfig.from_pretrained(tiny.clip_dir).text_config
    clip_cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=old.vocab_size, eos_token_id=old.eos_token_id, bos_token_id=old.bos_token_id,
                         pad_token_id=old.pad_token_id, **text_cfg),
        vision_config=dict(TOWERS[tower]), projection_dim=proj)
    clip_cfg.dtype = dtype
    clip_cfg.save_pretrained(tiny.clip_dir)
    wanted = [(k, s) for k, s in _meta_shapes(lambda: transformers.CLIPModel(clip_cfg))
              if not k.startswith("vision_model.")]
    save_file(_random_state(wanted, torch_dtype, seed), str(tiny.clip_dir / "model.safetensors"),
              metadata={"format": "pt"})

    old = tiny.llava.config
    heads = LLMS[llm]["num_attention_heads"]
    text = dict(model_type="llama", vocab_size=VOCAB, num_key_value_heads=heads, max_position_embeddings=4096,
                pad_token_id=old.text_config.pad_token_id, bos_token_id=old.text_config.bos_token_id,
                eos_token_id=old.text_config.eos_token_id, tie_word_embeddings=False, **LLMS[llm])
    cfg = transformers.LlavaConfig(vision_config=dict(model_type="clip_vision_model", **TOWERS[tower]),
                                   text_config=text, image_token_index=old.image_token_index, vision_feature_layer=-2,
                                   vision_feature_select_strategy="default", projector_hidden_act="gelu",
                                   image_seq_length=tiny_llava.M, tie_word_embeddings=False)
    cfg.architectures = ["LlavaForConditionalGeneration"]
    cfg.dtype = dtype
    cfg.save_pretrained(tiny.llava_dir)
    shapes = _meta_shapes(lambda: transformers.LlavaForConditionalGeneration(cfg))
    state = tiny_llava.hub_layout(_random_state(shapes, torch_dtype, seed + 1))
    save_file(state, str(tiny.llava_dir / "model.safetensors"), metadata={"format": "pt"})
    n_llm = sum(math.prod(s) for k, s in shapes if k.startswith("model.language_model.") or k.startswith("lm_head"))
    n_tower = sum(math.prod(s) for k, s in shapes if k.startswith("model.vision_tower."))
    del state, tiny
    gc.collect()
    ck.image_token_id = int(cfg.image_token_index)
    done.write_text(json.dumps({"image_token_id": ck.image_token_id, "llm_params": n_llm, "tower_params": n_tower}))
    log(f"[bench_vllm] built {folder.name} in {time.perf_counter() - t0:.0f} s "
        f"(LLM {n_llm / 1e6:.0f} M, tower {n_tower / 1e6:.0f} M parameters)")
    return ck


def checkpoint_params(ck) -> dict:
    return json.loads((ck.folder / "DONE").read_text())


# ------------------------------------------------------------------------------------------ engines


def engine_kwargs(ck, r=None, *, max_num_seqs: int, kv_gib: int, block_size: int,
                  max_num_batched_tokens=None) -> dict:
    """The tests' engine arguments (conftest.engine_kwargs), sized for the benchmark."""
    _, _, conftest = tests_vllm()
    kw = conftest.engine_kwargs(ck, stock=r is None, **({} if r is None else {"num_retain": r}))
    kw.update(dtype=ck.dtype, max_model_len=2048, limit_mm_per_prompt={"image": 1}, max_num_seqs=max_num_seqs,
              enable_prefix_caching=False, block_size=block_size, kv_cache_memory_bytes=kv_gib << 30,
              disable_log_stats=False)
    if max_num_batched_tokens:
        kw["max_num_batched_tokens"] = max_num_batched_tokens
    return kw


@contextlib.contextmanager
def engine(ck, r=None, **kw):
    from vllm import LLM

    _, _, conftest = tests_vllm()
    t0 = time.perf_counter()
    llm = LLM(**engine_kwargs(ck, r, **kw))
    llm._bench_start_s = time.perf_counter() - t0
    try:
        yield llm
    finally:
        with contextlib.suppress(Exception):
            llm.apply_model(_remove_timers)
        conftest.close_llm(llm)
        del llm
        gc.collect()


def requests(n: int, r=None, seed0: int = 0, tiny_llava=None, _compare=None) -> list:
    """n requests, one distinct image each; the plugin's get an expression (cycled)."""
    if tiny_llava is None:
        tiny_llava, _compare, _ = tests_vllm()
    out = []
    for i in range(n):
        expr = None if r is None else EXPRESSIONS[i % len(EXPRESSIONS)]
        out.append(_compare.request(tiny_llava.image(seed0 + i), expr, prompt=PROMPT))
    return out


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
    ``prune`` while this engine lives; "last_layer_qkv" times the scorer's ``contribution_inputs``; CPU ops
    are synchronous, so the wall clock is the compute). Appends (images, seconds) per call to
    ``model._bench_timers[part]`` and keeps the first image of the last tower / selection / projector call for
    ``time_one_image``."""
    import litelvlm_kernels.serving.vllm.selector as sel

    model._bench_timers = {k: [] for k in PARTS}
    model._bench_last = {}
    undo = []

    def wrap(obj, attr, name, instance=True):
        orig = getattr(obj, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = orig(*args, **kwargs)
            model._bench_timers[name].append((_count_images(args, kwargs), time.perf_counter() - t0))
            if name in ("tower", "selection", "projector"):
                model._bench_last[name] = (orig, tuple(_first_image(a) for a in args), dict(kwargs))
            return out

        setattr(obj, attr, timed)
        undo.append((obj, attr, orig, instance))

    wrap(model, "embed_multimodal", "encoder_step")
    wrap(model.vision_tower, "forward", "tower")
    wrap(model.multi_modal_projector, "forward", "projector")
    if hasattr(model, "litelvlm"):
        wrap(model.litelvlm, "select", "selection")
        wrap(model.litelvlm, "fold", "fold_text")
        wrap(model.litelvlm.scorer, "contribution_inputs", "last_layer_qkv")
        wrap(sel, "prune", "prune_op", instance=False)
    model._bench_undo = undo


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
    model._bench_timers = {k: [] for k in PARTS}
    return rec


def time_one_image(model, rounds: int = 3) -> dict:
    """The image path on one image of the timed batch, in the engine's process and modules: the tower, the
    selection (its parts timed by the wrappers) and the projector, ``rounds`` interleaved rounds.
    Returns {part: [seconds per round]}."""
    last = model._bench_last
    if "tower" not in last:
        return {}
    model._bench_timers = {k: [] for k in PARTS}
    with torch.inference_mode():
        for _ in range(rounds):
            for part in ("tower", "selection", "projector"):
                if part == "selection" and "selection" in last:
                    model.litelvlm.select(*last[part][1], **last[part][2])  # the wrapped method: parts timed
                elif part in last:
                    fn, args, kwargs = last[part]
                    t0 = time.perf_counter()
                    fn(*args, **kwargs)
                    model._bench_timers[part].append((1, time.perf_counter() - t0))
    return {k: [dt for _, dt in v] for k, v in take_timers(model).items() if v}


# -------------------------------------------------------------------------------------- measurement


def quantile(xs, q: float) -> float:
    t = torch.tensor(sorted(xs), dtype=torch.float64)
    return float(torch.quantile(t, q))
