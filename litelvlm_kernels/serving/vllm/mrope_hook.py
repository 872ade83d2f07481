"""Turn on vLLM's multimodal pruning hook for the plugin's Qwen models, in every process (``plugin.register``).

vLLM calls a model's ``recompute_mrope_positions`` (how a pruning model places its kept rows at their M-RoPE
positions, ``qwen_vl.place_kept_rows``) only when its runner's flag says the model prunes, and sets that flag
only for video pruning (``video_pruning_rate > 0``, which also turns EVS on for videos); vLLM 0.32's CPU runner
never sets it. So this wraps each runner's ``load_model`` to set the flag once the loaded model declares
``litelvlm_mrope_hook``, and Model Runner V2's ``maybe_create_mm_pruner`` (GPU) to build its pruner for such a
model. Stock models are untouched. Idempotent; runner modules that do not import on this machine are skipped.
"""

from __future__ import annotations

import functools
import importlib

_MARK = "_litelvlm_mrope_hook"
# (module, class) of the V1 runners whose load_model sets the flag (the CPU runner overrides the GPU one's)
RUNNERS = (("vllm.v1.worker.gpu_model_runner", "GPUModelRunner"), ("vllm.v1.worker.cpu_model_runner", "CPUModelRunner"))
V2_STATES = "vllm.v1.worker.gpu.model_states.default"


def wants_hook(model) -> bool:
    """Whether ``model`` (a runner's model, possibly wrapped) is one of the plugin's pruning models."""
    return bool(getattr(model, "litelvlm_mrope_hook", False))


def _wrap_load_model(cls) -> bool:
    orig = cls.__dict__.get("load_model")
    if orig is None or getattr(orig, _MARK, False):
        return False

    @functools.wraps(orig)
    def load_model(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        if wants_hook(self.get_model()):
            self.is_multimodal_pruning_enabled = True
        return out

    setattr(load_model, _MARK, True)
    cls.load_model = load_model
    return True


def _wrap_v2(module) -> bool:
    orig = getattr(module, "maybe_create_mm_pruner", None)
    if orig is None or getattr(orig, _MARK, False):
        return False
    from vllm.v1.worker.gpu.model_states.mm_pruning import MultiModalPruner

    @functools.wraps(orig)
    def maybe_create_mm_pruner(model_config, model, rope_state, encoder_cache):
        if wants_hook(model) and rope_state is not None and encoder_cache is not None:
            return MultiModalPruner(model, rope_state, encoder_cache, model_config.get_inputs_embeds_size())
        return orig(model_config, model, rope_state, encoder_cache)

    setattr(maybe_create_mm_pruner, _MARK, True)
    module.maybe_create_mm_pruner = maybe_create_mm_pruner
    return True


def enable() -> list:
    """Wrap what is not wrapped yet; returns the names wrapped by this call."""
    done = []
    for module, name in RUNNERS:
        try:
            cls = getattr(importlib.import_module(module), name)
        except Exception:  # not importable on this platform
            continue
        if _wrap_load_model(cls):
            done.append(f"{module}.{name}.load_model")
    try:
        module = importlib.import_module(V2_STATES)
    except Exception:
        module = None
    if module is not None and _wrap_v2(module):
        done.append(f"{V2_STATES}.maybe_create_mm_pruner")
    return done


def is_enabled() -> bool:
    """Whether every importable V1 runner's ``load_model`` is wrapped."""
    for module, name in RUNNERS:
        try:
            cls = getattr(importlib.import_module(module), name)
        except Exception:
            continue
        if not getattr(cls.__dict__.get("load_model"), _MARK, False):
            return False
    return True


__all__ = ["RUNNERS", "enable", "is_enabled", "wants_hook"]
