"""The multimodal processor: R' placeholders per image, and the expression as per-image tensors.

vLLM fixes a prompt's length when it processes it (the scheduler budgets tokens and KV blocks
from it, prefix caching hashes it), so the processor, not the model, decides how many visual
tokens each image gets: ``get_num_image_tokens`` returns R' = min(R, M) (plus the [CLS] row with
``vision_feature_select_strategy="full"``), and vLLM uses that one function for the prompt
(``_get_prompt_updates``) and for the memory profile (``get_max_image_tokens`` and the dummy
inputs).

The referring expression reaches the model only as tensors: the processor tokenises it with the
CLIP tokenizer of ``litelvlm.clip`` into three per-image fields::

    litelvlm_text_ids   [T', L] int64   CLIP token ids, padded on the right (T' = max(T, 1);
                                        one zero row when T = 0)
    litelvlm_meta       [2]     int64   (num_retain, T), kept on the CPU: the model reads them
                                        without a device sync

No attention mask travels: CLIP's text tower is causal and pools at [EOS], before any right
padding, so the padding cannot change the embedding (see ``selector.py``).

vLLM's multimodal hash (the key of its processor cache, encoder cache and, through the
placeholder tokens, prefix cache) covers each image and the request's flat
``mm_processor_kwargs``, so the expression and budget are part of it: two requests with the same
image and different expressions never share a selection. That is why options are per request,
not per image (a per-image list would not be part of each image's hash).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import torch
from transformers import BatchFeature
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.model_executor.models.vision import get_num_selected_vision_tokens
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, MultiModalDataItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate

from ...selection.text import tokenize_texts
from . import clip_checkpoint
from .settings import (
    CONFIG_KEY,
    EXPRESSION_KEY,
    REQUEST_KEYS,
    RequestOptions,
    ServingSettings,
    request_options,
    settings_from_config,
    strip_request_keys,
)

TEXT_IDS, META = "litelvlm_text_ids", "litelvlm_meta"
# The memory profile runs the text tower too, on this expression.
DUMMY_EXPRESSION = "a photo"
# A fast tokenizer called with padding / truncation changes its own state: one call at a time per process
# (vLLM may process requests on several threads), as LiteLVLMPruner does.
_TOKENIZER_LOCK = threading.Lock()


class LiteLVLMLlavaProcessingInfo(LlavaProcessingInfo):
    """LLaVA-1.5's processing info with R' = min(R, M) tokens per image."""

    def settings(self) -> ServingSettings:
        return settings_from_config(self.get_hf_config())

    def num_patches(self, image_width: int, image_height: int) -> int:
        """M: the patch tokens of one image ([CLS] excluded)."""
        n = self.get_vision_encoder_info().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return get_num_selected_vision_tokens(n, "default")

    def extra_tokens(self) -> int:
        """1 when [CLS] is fed to the LLM too (``vision_feature_select_strategy="full"``)."""
        return 1 if self.get_hf_config().vision_feature_select_strategy == "full" else 0

    def get_num_image_tokens(self, *, image_width: int, image_height: int, num_retain: int | None = None) -> int:
        m = self.num_patches(image_width, image_height)
        r = self.settings().num_retain if num_retain is None else num_retain
        return min(r, m) + self.extra_tokens()

    def request_options(self, kwargs: Mapping[str, object]) -> RequestOptions:
        engine_level = self.ctx.get_mm_config().mm_processor_kwargs or {}
        clash = [k for k in REQUEST_KEYS if k in engine_level]
        if clash:  # vLLM would merge them outside the multimodal hash; they belong elsewhere
            raise ValueError(f"mm_processor_kwargs: {clash} set for the whole engine; set num_retain in the "
                             f"{CONFIG_KEY!r} settings (--hf-overrides) and the expression per request")
        size = self.get_image_size_with_most_features()
        return request_options(self.settings(), kwargs, self.num_patches(size.width, size.height))

    def clip_tokenizer(self):
        return clip_checkpoint.tokenizer(self.settings().clip)

    def tokenize(self, expressions: Sequence[str]) -> torch.Tensor:
        """[T', L] ids, padded on the right and truncated as ``LiteLVLMPruner`` does; T = 0 gives one zero row."""
        if not expressions:
            return torch.zeros(1, 1, dtype=torch.int64)
        max_len = getattr(clip_checkpoint.clip_config(self.settings().clip).text_config, "max_position_embeddings",
                          None)
        enc, _ = tokenize_texts(self.clip_tokenizer(), expressions, max_len, _TOKENIZER_LOCK, padding_side="right")
        return enc["input_ids"].to(torch.int64)


class LiteLVLMLlavaDummyInputsBuilder(LlavaDummyInputsBuilder[LiteLVLMLlavaProcessingInfo]):
    """vLLM's LLaVA dummy inputs (largest image); the processor adds a dummy expression."""


class LiteLVLMLlavaMultiModalProcessor(LlavaMultiModalProcessor):
    """Emits R' placeholders per image and the per-image text fields (see the module docstring)."""

    def get_dummy_inputs(self, seq_len, mm_counts, mm_options):
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        # profiling must not fail on missing_expressions="error", and should run the text tower
        inputs.hf_processor_mm_kwargs = {**inputs.hf_processor_mm_kwargs, EXPRESSION_KEY: DUMMY_EXPRESSION}
        return inputs

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        opts = self.info.request_options(hf_kwargs)
        out = super()._call_hf_processor(hf_data, strip_request_keys(hf_kwargs))
        pixels = out.get("pixel_values")
        if pixels is None:
            return out
        n = len(pixels)
        out[TEXT_IDS] = self.info.tokenize(opts.expressions).unsqueeze(0).repeat(n, 1, 1)
        out[META] = torch.tensor([[opts.num_retain, len(opts.expressions)]] * n, dtype=torch.int64)
        return out

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        fields[TEXT_IDS] = MultiModalFieldConfig.batched("image")
        fields[META] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        image_token_id = self.info.get_hf_config().image_token_index
        if "image" in mm_items and not isinstance(mm_items["image"], ImageProcessorItems):
            raise ValueError("image_embeds: LiteLVLM selects tokens from the vision tower's own states, so it needs "
                             "the images themselves, not precomputed embeddings")
        num_retain = self.info.request_options(hf_processor_mm_kwargs).num_retain

        def get_replacement(item_idx: int):
            size = mm_items.get_items("image", ImageProcessorItems).get_image_size(item_idx)
            n = self.info.get_num_image_tokens(image_width=size.width, image_height=size.height,
                                               num_retain=num_retain)
            return [image_token_id] * n

        return [PromptReplacement(modality="image", target=[image_token_id], replacement=get_replacement)]
