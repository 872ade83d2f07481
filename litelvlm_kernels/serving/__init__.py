"""Serving-engine integrations of LiteLVLM (docs/serving.md).

``litelvlm_kernels.serving.vllm``: a vLLM plugin (entry point ``vllm.general_plugins``) that
registers ``LiteLVLMLlavaForConditionalGeneration``, a LLaVA-1.5 whose processor emits R'
placeholders per image and whose image path runs the selection with this library's ops.
Nothing here is imported by ``litelvlm_kernels`` itself; vLLM is needed only to use it.
"""
