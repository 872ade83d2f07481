"""The vLLM benchmark's checkpoints: random-weight LLaVA-1.5 and LLaVA-NeXT checkpoints of the presets' shapes
(``vllm_engine.TOWERS`` / ``LLMS``) and their CLIP checkpoint, built offline and cached under ``build/bench_vllm/``.

``tiny_llava.build`` (tests/vllm_plugin) writes the tokenizers, the processor and the hub key layout; this swaps
the configs and weights for the given shapes (and for LLaVA-NeXT the processor for LLaVA-NeXT's: 336 px views, the
llava-v1.6 pinpoints, so a 672 x 672 image is a base view + 2 x 2 tiles, 2928 placeholders). The CLIP checkpoint
holds what the plugin reads from it (text tower, ``text_projection``, ``visual_projection``); the vision tower,
its last layer and ``post_layernorm`` are in the LVLM checkpoint, as in llava-hf's.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from .vllm_engine import (
    BUILDER_VERSION,
    CACHE_DIR,
    LLMS,
    TEXT_TOWERS,
    TOWERS,
    VOCAB,
    _meta_shapes,
    _random_state,
    tests_vllm,
)

# llava-v1.6's pinpoints (in units of a 336 px view: 1 x 2, 2 x 1, 2 x 2, 3 x 1, 1 x 3 tiles)
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
FAMILIES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}


def build_checkpoint(tower: str = "vit-l-336", llm: str = "llama-1.8b", dtype: str = "bfloat16", seed: int = 0,
                     cache_dir: Path = CACHE_DIR, log=print, family: str = "llava") -> SimpleNamespace:
    """A ``family`` checkpoint (``TOWERS[tower]`` + ``LLMS[llm]``, random weights) and its CLIP checkpoint, cached
    by shapes, dtype, seed and family. Returns ``ck`` (``llava_dir``, ``clip_dir``, ``image_token_id``, ...)."""
    import transformers
    from safetensors.torch import save_file

    if family not in FAMILIES:
        raise ValueError(f"family: one of {list(FAMILIES)}, got {family!r}")
    tiny_llava, _, _ = tests_vllm()
    spec = dict(tower=TOWERS[tower], text=TEXT_TOWERS[tower], llm=LLMS[llm], vocab=VOCAB, dtype=dtype, seed=seed,
                version=BUILDER_VERSION)
    if family != "llava":  # (the LLaVA-1.5 key as before: its cached checkpoints stay valid)
        spec.update(family=family, pinpoints=NEXT_PINPOINTS)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    name = f"{tower}-{llm}-{dtype}-{key}" if family == "llava" else f"{family}-{tower}-{llm}-{dtype}-{key}"
    folder = Path(cache_dir) / name
    done = folder / "DONE"
    ck = SimpleNamespace(folder=folder, llava_dir=folder / "llava", clip_dir=folder / "clip", tower=tower, llm=llm,
                         dtype=dtype, family=family)
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

    cfg, model_cls = _lvlm_config(family, tiny, tiny_llava, tower, llm)
    cfg.architectures = [FAMILIES[family]]
    cfg.dtype = dtype
    cfg.save_pretrained(tiny.llava_dir)
    if family == "llava_next":
        _next_processor(tiny, tiny_llava, TOWERS[tower]).save_pretrained(tiny.llava_dir)
    shapes = _meta_shapes(lambda: model_cls(cfg))
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


def _lvlm_config(family: str, tiny, tiny_llava, tower: str, llm: str) -> tuple:
    """(the LVLM config of the presets' shapes, its transformers class)."""
    import transformers

    old = tiny.llava.config
    heads = LLMS[llm]["num_attention_heads"]
    text = dict(model_type="llama", vocab_size=VOCAB, num_key_value_heads=heads, max_position_embeddings=4096,
                pad_token_id=old.text_config.pad_token_id, bos_token_id=old.text_config.bos_token_id,
                eos_token_id=old.text_config.eos_token_id, tie_word_embeddings=False, **LLMS[llm])
    common = dict(vision_config=dict(model_type="clip_vision_model", **TOWERS[tower]), text_config=text,
                  image_token_index=old.image_token_index, vision_feature_layer=-2,
                  vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False)
    if family == "llava_next":
        return (transformers.LlavaNextConfig(image_grid_pinpoints=NEXT_PINPOINTS, **common),
                transformers.LlavaNextForConditionalGeneration)
    return (transformers.LlavaConfig(image_seq_length=tiny_llava.M, **common),
            transformers.LlavaForConditionalGeneration)


def _next_processor(tiny, tiny_llava, vision: dict):
    """LLaVA-NeXT's processor at the tower's view size with the llava-v1.6 pinpoints, on the tests' LLM tokenizer."""
    import transformers

    side = vision["image_size"]
    image_processor = transformers.LlavaNextImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, image_grid_pinpoints=NEXT_PINPOINTS)
    return transformers.LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tiny.processor.tokenizer, patch_size=vision["patch_size"],
        vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1,
        chat_template=tiny_llava.CHAT_TEMPLATE)


def checkpoint_params(ck) -> dict:
    return json.loads((ck.folder / "DONE").read_text())


__all__ = ["FAMILIES", "NEXT_PINPOINTS", "build_checkpoint", "checkpoint_params"]
