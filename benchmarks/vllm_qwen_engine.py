"""The Qwen2.5-VL vLLM benchmark's engine side: a random-weight Qwen2.5-VL-shaped checkpoint and its paired CLIP
scorer built offline (presets below, cached under ``build/bench_vllm_qwen/``), engine arguments, requests, and
timers around the image path's pieces inside an engine. Used by ``benchmarks/bench_vllm_qwen.py`` (its docstring
says what is measured); needs the vLLM venv. Shared with the LLaVA benchmark: ``vllm_engine`` (random weights,
the in-process engine, the timer wrapper).
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from .vllm_engine import ROOT, TESTS_VLLM, _meta_shapes, _random_state, part_timers, tests_vllm

CACHE_DIR = ROOT / "build" / "bench_vllm_qwen"
FAMILY = "qwen2_5_vl"
BUILDER_VERSION = 1  # bump when the weights or layout written below change (cached checkpoints are keyed on it)
MAX_TOKENS = 1024    # the processor's largest image, in merged tokens (896 x 896 px)

# Qwen2.5-VL's vision tower (the same in every released size; out_hidden_size = the LLM's width) and a tiny one
TOWERS = {
    "qwen2.5-vl": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31]),
    "tiny": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56, fullatt_block_indexes=[1]),
}
# Qwen2-shaped LLMs (GQA, heads of 128 or 32, which vLLM's CPU attention runs); M-RoPE sections sum to head_dim / 2
LLMS = {
    "qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, mrope_section=[16, 24, 24]),
    "qwen2-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                     num_key_value_heads=2, mrope_section=[16, 24, 24]),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, mrope_section=[4, 6, 6]),
}
# paired CLIP scorers: ViT-B/16 at 224 px (196 native patches) with CLIP's text tower; the tests' tiny one
SCORERS = {
    "vit-b-16": (dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12),
                 dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                      max_position_embeddings=77), 512),
    "tiny": (dict(image_size=64, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=2),
             dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=16), 32),
}
VOCAB = 32000
EXPRESSIONS = ["the man on the left", "a red car", "the cat in the tree", "the dog", "a cup on the left",
               "the red ball", "the man in the red shirt", "a photo of the sky"]


def vision_tag() -> str:
    return "<|vision_start|><|image_pad|><|vision_end|>"


# a Qwen chat-like prompt in the tests' word-level vocabulary: a 30-word "system prompt", the image, the question
PROMPT = ("user : " + " ".join(f"w{i}" for i in range(30)) + f" {vision_tag()} where is the man on the left ? "
          "assistant :")


def _qwen_builder():
    tests_vllm()  # tests/vllm_plugin (and, through tiny_llava, examples/) on the path
    if str(TESTS_VLLM) not in sys.path:
        sys.path.insert(0, str(TESTS_VLLM))
    import tiny_qwen_vl

    return tiny_qwen_vl


def image_token_id() -> int:
    """The image placeholder's id in the tests' Qwen vocabulary (examples/tiny_qwen.py)."""
    return _qwen_builder().tq.IMAGE_TOKEN


def build_checkpoint(tower: str = "qwen2.5-vl", llm: str = "qwen2-1.5b", scorer: str = "vit-b-16",
                     dtype: str = "bfloat16", seed: int = 0, cache_dir: Path = CACHE_DIR, log=print) -> SimpleNamespace:
    """A Qwen2.5-VL-shaped checkpoint (``TOWERS[tower]`` + ``LLMS[llm]``, random weights) and a CLIP checkpoint of
    ``SCORERS[scorer]`` shapes (random weights) to pair it with. ``tests/vllm_plugin/tiny_qwen_vl.py`` writes the
    tokenizers, the processor (images up to ``MAX_TOKENS`` tokens) and the layout; this swaps configs and weights.
    Cached by shapes, dtype and seed."""
    import transformers
    from safetensors.torch import save_file

    spec = dict(tower=TOWERS[tower], llm=LLMS[llm], scorer=SCORERS[scorer], vocab=VOCAB, dtype=dtype, seed=seed,
                max_tokens=MAX_TOKENS, version=BUILDER_VERSION)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cache_dir) / f"{tower}-{llm}-{scorer}-{dtype}-{key}"
    ck = SimpleNamespace(folder=folder, llava_dir=folder / FAMILY, clip_dir=folder / "clip", tower=tower, llm=llm,
                         scorer=scorer, dtype=dtype)
    done = folder / "DONE"
    if done.exists():
        return ck
    t0 = time.perf_counter()
    tiny = _qwen_builder().build(folder, FAMILY, max_tokens=MAX_TOKENS)
    torch_dtype = getattr(torch, dtype)

    vision, text, proj = SCORERS[scorer]
    old = tiny.clip.config.text_config
    clip_cfg = transformers.CLIPConfig(text_config=dict(vocab_size=old.vocab_size, eos_token_id=old.eos_token_id,
                                                        bos_token_id=old.bos_token_id, pad_token_id=old.pad_token_id,
                                                        **text), vision_config=vision, projection_dim=proj)
    clip_cfg.dtype = dtype
    clip_cfg.save_pretrained(ck.clip_dir)
    shapes = _meta_shapes(lambda: transformers.CLIPModel(clip_cfg))
    save_file(_random_state(shapes, torch_dtype, seed), str(ck.clip_dir / "model.safetensors"),
              metadata={"format": "pt"})
    n_scorer = sum(math.prod(s) for _, s in shapes)

    lm = dict(LLMS[llm])
    section = lm.pop("mrope_section")
    old = tiny.llava.config
    text_cfg = dict(vocab_size=VOCAB, pad_token_id=old.text_config.pad_token_id, bos_token_id=None, eos_token_id=None,
                    max_position_embeddings=32768, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section}, **lm)
    vision_cfg = dict(TOWERS[tower], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      out_hidden_size=lm["hidden_size"])
    cfg = transformers.Qwen2_5_VLConfig(text_config=text_cfg, vision_config=vision_cfg,
                                        image_token_id=old.image_token_id, video_token_id=old.video_token_id,
                                        vision_start_token_id=old.vision_start_token_id,
                                        vision_end_token_id=old.vision_end_token_id, tie_word_embeddings=False)
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    cfg.dtype = dtype
    cfg.save_pretrained(ck.llava_dir)
    shapes = _meta_shapes(lambda: transformers.Qwen2_5_VLForConditionalGeneration(cfg))
    save_file(_random_state(shapes, torch_dtype, seed + 1), str(ck.llava_dir / "model.safetensors"),
              metadata={"format": "pt"})
    n_llm = sum(math.prod(s) for k, s in shapes if not k.startswith("model.visual."))
    n_tower = sum(math.prod(s) for k, s in shapes if k.startswith("model.visual."))
    del tiny
    gc.collect()
    done.write_text(json.dumps({"llm_params": n_llm, "tower_params": n_tower, "scorer_params": n_scorer}))
    log(f"[bench_vllm_qwen] built {folder.name} in {time.perf_counter() - t0:.0f} s (LLM {n_llm / 1e6:.0f} M, "
        f"tower {n_tower / 1e6:.0f} M, scorer {n_scorer / 1e6:.0f} M parameters)")
    return ck


def checkpoint_params(ck) -> dict:
    return json.loads((ck.folder / "DONE").read_text())


def engine_kwargs(ck, r=None, *, max_num_seqs: int, kv_gib: int, block_size: int = 32,
                  max_num_batched_tokens=None) -> dict:
    """The tests' engine arguments (tiny_qwen_vl.engine_kwargs), sized for the benchmark; ``r``: num_retain (None:
    stock vLLM)."""
    kw = _qwen_builder().engine_kwargs(ck, FAMILY, stock=r is None, **({} if r is None else {"num_retain": r}))
    kw.update(dtype=ck.dtype, max_model_len=4096, limit_mm_per_prompt={"image": 1, "video": 0},
              max_num_seqs=max_num_seqs, enable_prefix_caching=False, block_size=block_size,
              kv_cache_memory_bytes=kv_gib << 30, disable_log_stats=False)
    if max_num_batched_tokens:
        kw["max_num_batched_tokens"] = max_num_batched_tokens
    return kw


def requests(n: int, size: int, r=None, seed0: int = 0) -> list:
    """n requests, one distinct square image of ``size`` px each; the plugin's get an expression (cycled)."""
    tiny_llava, _compare, _ = tests_vllm()
    return [_compare.request(tiny_llava.image(seed0 + i, (size, size)),
                             None if r is None else EXPRESSIONS[i % len(EXPRESSIONS)], prompt=PROMPT)
            for i in range(n)]


# ------------------------------------------------------------------------------- encoder-step timers

PARTS = ("encoder_step", "tower", "scorer", "scorer_vision", "fold_text")


def install_timers(model) -> None:
    """Wall-clock timers (``vllm_engine.part_timers``): the image path (``embed_multimodal``), vLLM's tower, and for
    the plugin the paired scorer: ``select_images`` (image for the scorer, CLIP vision tower, resampling, selection),
    its CLIP vision run alone (``patch_signals``) and ``fold`` (CLIP text tower + fold, cached by content)."""
    wrap = part_timers(model, PARTS)
    wrap(model, "embed_multimodal", "encoder_step")
    wrap(model.visual, "forward", "tower")
    if hasattr(model, "litelvlm"):
        wrap(model.litelvlm, "select_images", "scorer")
        wrap(model.litelvlm.scorer, "patch_signals", "scorer_vision")
        wrap(model.litelvlm, "fold", "fold_text")
        model._bench_last = {}
        orig = model.litelvlm.select_images

        def keep(pixels, grids, cond, counts):  # the call's first image, for one_image()
            n = math.prod(grids[0])
            model._bench_last["image"] = (pixels[:n], grids[:1], cond, counts[:1])
            return orig(pixels, grids, cond, counts)
        model.litelvlm.select_images = keep


def one_image(model, rounds: int = 3) -> dict:
    """The tower and the paired scorer on one image of the timed batch, ``rounds`` interleaved rounds (in the
    engine's process and modules): {part: [seconds]} for ``tower``, ``scorer`` (``select_images``) and
    ``fold_text`` (one expression folded afresh: the text tower's cost when the cache misses)."""
    if "image" not in getattr(model, "_bench_last", {}):
        return {}
    pixels, grids, cond, counts = model._bench_last["image"]
    sel = model.litelvlm
    ids = torch.zeros(1, 8, dtype=torch.int64)
    out = {"tower": [], "scorer": [], "fold_text": []}
    raw = pixels.to(model.visual.device)
    with torch.inference_mode():
        for _ in range(rounds):
            for part, fn in (("tower", lambda: model.visual(raw, grid_thw=grids)),
                             ("scorer", lambda: type(sel).select_images(sel, pixels, grids, cond, counts)),
                             ("fold_text", lambda: sel._fold_one(ids, 1))):
                t0 = time.perf_counter()
                fn()
                out[part].append(time.perf_counter() - t0)
    return out
