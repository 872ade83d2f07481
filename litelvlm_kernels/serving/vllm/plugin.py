"""The ``vllm.general_plugins`` entry point (setup.py: ``litelvlm = ...plugin:register``).

vLLM calls every general plugin once in each process it starts (the API server, the engine core,
every worker), so ``register`` must be cheap and idempotent: it registers the architecture lazily
(``"module:Class"``: the model module, which imports vLLM's LLaVA, is imported only when a model of
this architecture is resolved) and does nothing when the name is already registered to it.
"""

from __future__ import annotations

from . import ARCHITECTURE, MODEL_CLASS


def register() -> None:
    """Register ``LiteLVLMLlavaForConditionalGeneration`` with vLLM's ModelRegistry (idempotent)."""
    from vllm import ModelRegistry

    if is_registered():
        return
    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


def is_registered() -> bool:
    """True when the architecture is registered (by this plugin: the lazy class or the class itself)."""
    from vllm import ModelRegistry

    entry = ModelRegistry.models.get(ARCHITECTURE)
    if entry is None:
        return False
    module, cls = MODEL_CLASS.split(":")
    # _LazyRegisteredModel(module_name, class_name) or _RegisteredModel(..., model_cls)
    if getattr(entry, "module_name", None) == module and getattr(entry, "class_name", None) == cls:
        return True
    model_cls = getattr(entry, "model_cls", None)
    return model_cls is not None and f"{model_cls.__module__}:{model_cls.__name__}" == MODEL_CLASS
