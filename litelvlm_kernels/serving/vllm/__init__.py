"""The vLLM plugin: LiteLVLM architectures for vLLM (docs/serving.md), one model file per family.

Files, one job each:

* ``plugin.py``: ``register()``, the ``vllm.general_plugins`` entry point (idempotent);
* ``settings.py``: the ``litelvlm`` settings in the model config (``--hf-overrides`` or config.json) and
  the per-request options (``mm_processor_kwargs``), validated with named errors;
* ``checkpoint.py``: the scorer checkpoint's tokenizer, config and the tensors the plugin needs;
* ``processing.py``: what every family's multimodal processor adds: counts from the family's layout at the
  request's budget (prompt and memory profile), the expression as per-item fields;
* ``selector.py``: the scorer's modules inside the engine, folded texts cached by content, the fused
  selection; ``engine.py``: what every model file shares (fields, row checks, weight loading);
* ``tower_cache.py``: the tower's states per image across expressions, the tower in chunks of stock's encoder
  batch; ``report.py``: the per-request kept-index records (``mm_processor_kwargs.report``);
* ``llava.py`` ...: one model file per family: vLLM's model with the selection in its image path;
* ``qwen_vl.py`` (+ ``qwen2_5_vl.py``, ``qwen3_vl.py``): Qwen's counts, positions and hook; ``paired.py`` the
  paired scorer inside the engine; ``mrope_hook.py`` turns vLLM's pruning hook on for them in every process;
* ``cpu_torchvision_shim.py``: a workaround for CPU machines only (see its docstring).

Importing this package imports neither vLLM nor torch.
"""

# architecture name -> "module:class", registered lazily by plugin.register()
_PKG = "litelvlm_kernels.serving.vllm"
ARCHITECTURES = {
    "LiteLVLMLlavaForConditionalGeneration": f"{_PKG}.llava:LiteLVLMLlavaForConditionalGeneration",
    "LiteLVLMPaliGemmaForConditionalGeneration": f"{_PKG}.paligemma:LiteLVLMPaliGemmaForConditionalGeneration",
    "LiteLVLMLlavaNextForConditionalGeneration": f"{_PKG}.llava_next:LiteLVLMLlavaNextForConditionalGeneration",
    "LiteLVLMLlavaOnevisionForConditionalGeneration":
        f"{_PKG}.llava_onevision:LiteLVLMLlavaOnevisionForConditionalGeneration",
    "LiteLVLMQwen2_5_VLForConditionalGeneration": f"{_PKG}.qwen2_5_vl:LiteLVLMQwen2_5_VLForConditionalGeneration",
    "LiteLVLMQwen3VLForConditionalGeneration": f"{_PKG}.qwen3_vl:LiteLVLMQwen3VLForConditionalGeneration",
}
ARCHITECTURE = "LiteLVLMLlavaForConditionalGeneration"  # the first one (LLaVA-1.5); kept for existing callers
MODEL_CLASS = ARCHITECTURES[ARCHITECTURE]

__all__ = ["ARCHITECTURE", "ARCHITECTURES", "MODEL_CLASS"]
