"""The vLLM plugin: a LiteLVLM LLaVA-1.5 architecture for vLLM (docs/serving.md).

Files, one job each:

* ``plugin.py``: ``register()``, the ``vllm.general_plugins`` entry point (idempotent);
* ``settings.py``: the ``litelvlm`` settings in the model config (``--hf-overrides`` or
  config.json) and the per-request options (``mm_processor_kwargs``), validated with named errors;
* ``clip_checkpoint.py``: the CLIP checkpoint's tokenizer, configs and the tensors the plugin needs;
* ``processing.py``: the multimodal processor: R' placeholders per image (prompt and memory
  profile) and the expression tokenised into per-image tensor fields;
* ``model.py``: ``LiteLVLMLlavaForConditionalGeneration``, vLLM's LLaVA with the selection in its
  image path (``litelvlm_kernels.prune``: fused select + gather, no host sync);
* ``cpu_torchvision_shim.py``: a workaround for CPU machines only (see its docstring).

Importing this package imports neither vLLM nor torch.
"""

ARCHITECTURE = "LiteLVLMLlavaForConditionalGeneration"
MODEL_CLASS = "litelvlm_kernels.serving.vllm.model:LiteLVLMLlavaForConditionalGeneration"

__all__ = ["ARCHITECTURE", "MODEL_CLASS"]
