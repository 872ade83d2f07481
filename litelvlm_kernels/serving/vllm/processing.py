"""What every LiteLVLM family adds to vLLM's multimodal processing: counts from the layout, the expression as fields.

vLLM fixes a prompt's length when it processes it (the scheduler budgets tokens and KV blocks from it,
prefix caching hashes it), so the processor, not the model, decides how many visual tokens each image gets.
Every family's count is its layout's ``kept_count`` (docs/design.md 11.4) at the request's budget; vLLM asks
``get_num_image_tokens(image_width=, image_height=)`` for it from inside ``_get_prompt_updates``, for the
prompt and for the memory profile. That method has no room for the request's options, so
``_get_mm_prompt_updates`` publishes the request's budget in a context variable around vLLM's own code
(the closures it builds are resolved there, synchronously: another request on another thread never sees
it); without one (the memory profile, the dummy inputs) the configured budget counts.

The referring expression reaches the model only as tensors: ``_apply_hf_processor_main`` (every family's
path, also OneVision's video path, which skips ``_call_hf_processor``) validates and strips the request's
keys, calls vLLM's own processing, then adds per item of each modality::

    <prefix>text_ids   [T', L] int64   the scorer's token ids, padded (T' = max(T, 1); one zero row when T = 0)
    <prefix>meta       [3]     int64   (num_retain, T, placeholders of the item)

both kept on the CPU: the model reads the numbers and keys its fold cache by the ids' content without a
device sync, and checks that it built exactly as many rows as the prompt has placeholders. Two more CPU fields
per item: ``<prefix>key`` (the image alone, hashed on the host: the model's tower cache, ``tower_cache.py``)
and ``<prefix>report`` (the request's report id and the item's index, ``report.py``).

vLLM's multimodal hash (the key of its processor cache, encoder cache and, through the placeholder tokens,
prefix cache) covers each item and the request's flat ``mm_processor_kwargs``, so the expression and budget
are part of it: two requests with the same image and different expressions never share a selection.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping, Sequence

import torch
from vllm.multimodal.inputs import MultiModalFieldConfig

from ...selection.kinds import engine_token_ids
from . import checkpoint
from .settings import (
    CONFIG_KEY,
    EXPRESSION_KEY,
    REQUEST_KEYS,
    RequestOptions,
    request_options,
    request_report,
    settings_from_config,
)

# per modality: (prefix of our fields, the vLLM modality)
FIELDS = {"image": "litelvlm_", "video": "litelvlm_video_"}
DUMMY_EXPRESSION = "a photo"  # the memory profile runs the text tower too, on this expression
_BUDGET: contextvars.ContextVar = contextvars.ContextVar("litelvlm_num_retain", default=None)
# A fast tokenizer called with padding / truncation changes its own state: one call at a time per process
# (vLLM may process requests on several threads), as LiteLVLMPruner does.
_TOKENIZER_LOCK = threading.Lock()


def field_names(modality: str) -> tuple:
    prefix = FIELDS[modality]
    return f"{prefix}text_ids", f"{prefix}meta"


def extra_field_names(modality: str) -> tuple:
    """(the image key field, the report field) of a modality (``tower_cache.py``, ``report.py``)."""
    prefix = FIELDS[modality]
    return f"{prefix}key", f"{prefix}report"


def refuse_embeddings(mm_items) -> None:
    """Precomputed image embeddings cannot be pruned (the scorer reads the tower's own states): a named error."""
    from vllm.multimodal.parse import ImageProcessorItems

    if "image" in mm_items and not isinstance(mm_items["image"], ImageProcessorItems):
        raise ValueError("image_embeds: LiteLVLM selects tokens from the vision tower's own states, so it needs "
                         "the images themselves, not precomputed embeddings")


class LiteLVLMInfoMixin:
    """On a family's ``ProcessingInfo``: the settings, the budget in effect, the scorer's tokenizer. A family
    implements ``kept_count(modality, size, num_retain)`` (its layout's count) and routes vLLM's count methods
    to it with ``self.budget()``."""

    def settings(self):
        return settings_from_config(self.get_hf_config())

    def budget(self) -> int:
        """The request's ``num_retain`` inside ``_get_mm_prompt_updates``, else the configured one."""
        r = _BUDGET.get()
        return self.settings().num_retain if r is None else r

    def num_patches(self) -> int:
        """M: the patch tokens of one view ([CLS] excluded)."""
        vc = self.get_hf_config().vision_config
        return (vc.image_size // vc.patch_size) ** 2

    def request_options(self, kwargs: Mapping[str, object]) -> RequestOptions:
        self.check_engine_kwargs()
        return request_options(self.settings(), kwargs, self.num_patches())

    def check_engine_kwargs(self) -> None:
        """The request keys may not be set for the whole engine: a ValueError naming them."""
        engine_level = self.ctx.get_mm_config().mm_processor_kwargs or {}
        clash = [k for k in REQUEST_KEYS if k in engine_level]
        if clash:  # vLLM would merge them outside the multimodal hash; they belong elsewhere
            raise ValueError(f"mm_processor_kwargs: {clash} set for the whole engine; set num_retain in the "
                             f"{CONFIG_KEY!r} settings (--hf-overrides) and the expression per request")

    def scorer_tokenizer(self):
        return checkpoint.tokenizer(self.settings().scorer)

    def tokenize(self, expressions: Sequence[str]) -> torch.Tensor:
        """[T', L] ids as the scorer's text tower takes them (CLIP: padded on the right, cut to its length;
        SigLIP: padded to its length, as trained); T = 0 gives one zero row."""
        if not expressions:
            return torch.zeros(1, 1, dtype=torch.int64)
        scorer = self.settings().scorer
        return engine_token_ids(checkpoint.config(scorer), checkpoint.tokenizer(scorer), expressions, _TOKENIZER_LOCK)


class LiteLVLMProcessorMixin:
    """On a family's ``BaseMultiModalProcessor`` (see the module docstring). The family's info implements
    ``item_counts(modality, mm_items, num_retain) -> list[int]`` (the placeholders of each item)."""

    def get_dummy_inputs(self, seq_len, mm_counts, mm_options):
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        # profiling must not fail on missing_expressions="error", and should run the text tower
        inputs.hf_processor_mm_kwargs = {**inputs.hf_processor_mm_kwargs, EXPRESSION_KEY: DUMMY_EXPRESSION}
        return inputs

    def _get_mm_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        token = _BUDGET.set(self.info.request_options(hf_processor_mm_kwargs).num_retain)
        try:
            return super()._get_mm_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        finally:
            _BUDGET.reset(token)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        refuse_embeddings(mm_items)  # every family selects from the tower's own states: it needs the images
        return super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)

    def _apply_hf_processor_main(self, mm_items, hf_kwargs: Mapping[str, object]):
        opts = self.info.request_options(hf_kwargs)
        report = request_report(self.info.settings(), hf_kwargs)  # every family's model writes the records
        out = super()._apply_hf_processor_main(mm_items, {k: v for k, v in hf_kwargs.items()
                                                          if k not in REQUEST_KEYS})
        ids = None
        for modality in FIELDS:
            n = mm_items.get_count(modality, strict=False)
            if not n:
                continue
            if ids is None:
                ids = self.info.tokenize(opts.expressions)
            counts = self.litelvlm_counts(modality, mm_items, opts, out)
            text_key, meta_key = field_names(modality)
            out[text_key] = ids.unsqueeze(0).repeat(n, 1, 1)
            out[meta_key] = torch.tensor([[opts.num_retain, len(opts.expressions), c] for c in counts],
                                         dtype=torch.int64)
            self.litelvlm_item_fields(out, modality, mm_items, hf_kwargs, report)
        return out

    def litelvlm_item_fields(self, out, modality: str, mm_items, hf_kwargs: Mapping[str, object], report) -> None:
        """Per item: the key of the image alone (vLLM's hash of the item and the processor kwargs but ours) and the
        report field, both CPU-resident."""
        from .report import report_fields
        from .tower_cache import image_keys

        key_name, report_name = extra_field_names(modality)
        algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm
        kwargs = {k: v for k, v in hf_kwargs.items() if k not in REQUEST_KEYS}
        out[key_name] = image_keys(mm_items[modality].get_all_items_for_hash(), modality, kwargs, algorithm)
        out[report_name] = report_fields(report, mm_items.get_count(modality, strict=False))

    def litelvlm_counts(self, modality: str, mm_items, opts: RequestOptions, processed) -> list:
        """The placeholders of each item: the info's ``item_counts``; a family whose count needs the processed
        items (Qwen: the grid of each image) overrides this."""
        return self.info.item_counts(modality, mm_items, opts.num_retain)

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs: Mapping[str, object]):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        for modality in FIELDS:
            text_key, meta_key = field_names(modality)
            if text_key in hf_inputs:
                fields[text_key] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
                fields[meta_key] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
            for name in extra_field_names(modality):
                if name in hf_inputs:
                    fields[name] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
        return fields


__all__ = ["FIELDS", "LiteLVLMInfoMixin", "LiteLVLMProcessorMixin", "RequestOptions", "extra_field_names",
           "field_names", "refuse_embeddings"]
