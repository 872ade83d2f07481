"""The ``vllm.general_plugins`` entry point (setup.py: ``litelvlm = ...plugin:register``).

vLLM calls every general plugin once in each process it starts (the API server, the engine core,
every worker), so ``register`` must be cheap and idempotent: it registers the architecture lazily
(``"module:Class"``: the model module, which imports vLLM's LLaVA, is imported only when a model of
this architecture is resolved) and does nothing when the name is already registered to it. It also turns
vLLM's multimodal pruning hook on for the Qwen models (``mrope_hook.enable``: wraps the model runners, which it
imports; every engine process imports them anyway).
"""

from __future__ import annotations

from . import ARCHITECTURES


def register() -> None:
    """Register every LiteLVLM architecture with vLLM's ModelRegistry (idempotent)."""
    from vllm import ModelRegistry

    from . import mrope_hook

    for name, target in ARCHITECTURES.items():
        if not is_registered(name):
            ModelRegistry.register_model(name, target)
    mrope_hook.enable()  # the Qwen models' pruning hook: vLLM's runners never turn it on for images


def is_registered(name: str = "LiteLVLMLlavaForConditionalGeneration") -> bool:
    """True when ``name`` is registered to this plugin's class (the lazy entry or the class itself)."""
    from vllm import ModelRegistry

    entry = ModelRegistry.models.get(name)
    if entry is None:
        return False
    module, cls = ARCHITECTURES[name].split(":")
    # _LazyRegisteredModel(module_name, class_name) or _RegisteredModel(..., model_cls)
    if getattr(entry, "module_name", None) == module and getattr(entry, "class_name", None) == cls:
        return True
    model_cls = getattr(entry, "model_cls", None)
    return model_cls is not None and f"{model_cls.__module__}:{model_cls.__name__}" == ARCHITECTURES[name]
