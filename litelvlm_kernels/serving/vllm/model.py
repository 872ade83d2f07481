"""``LiteLVLMLlavaForConditionalGeneration``: vLLM's LLaVA-1.5 with LiteLVLM in its image path.

Chosen with ``--hf-overrides '{"architectures": ["LiteLVLMLlavaForConditionalGeneration"],
"litelvlm": {"clip": ..., "num_retain": 192}}'`` (or the same keys in config.json) on a stock
LLaVA-1.5 checkpoint. Everything but the image path is vLLM's own LLaVA: the language model,
the projector, the placeholder merge, weight loading of the LLaVA checkpoint.

Image path (``embed_multimodal``): vLLM's CLIP tower up to the select layer (-2) with [CLS]
kept, then ``LiteLVLMSelector.select`` (the last layer's q/k/v, the expression folded with
``post_layernorm`` and ``visual_projection``, ``litelvlm_kernels.prune``: one fused select + gather
per batch of images, no host sync), then vLLM's projector on the R' kept rows only. The processor
(``processing.py``) has already given each image exactly as many placeholders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from transformers import CLIPVisionConfig
from vllm.config import VllmConfig
from vllm.model_executor.models.llava import LlavaForConditionalGeneration, _get_num_hidden_layers
from vllm.multimodal import MULTIMODAL_REGISTRY

from . import clip_checkpoint
from .processing import (
    META,
    TEXT_IDS,
    LiteLVLMLlavaDummyInputsBuilder,
    LiteLVLMLlavaMultiModalProcessor,
    LiteLVLMLlavaProcessingInfo,
)
from .selector import LiteLVLMSelector
from .settings import CONFIG_KEY, settings_from_config

# a LLaVA checkpoint's vision-tower tensors, in the old (hub) and the transformers >= 4.52 layouts
_TOWER = re.compile(r"^(?:model\.)?vision_tower\.vision_model\.(.+)$")


def _per_image(x) -> list:
    """A batched field: a stacked tensor [N, ...] or a list of per-image tensors -> list of tensors."""
    if isinstance(x, torch.Tensor):
        return list(x.unbind(0))
    return [t for t in x]


@MULTIMODAL_REGISTRY.register_processor(
    LiteLVLMLlavaMultiModalProcessor,
    info=LiteLVLMLlavaProcessingInfo,
    dummy_inputs=LiteLVLMLlavaDummyInputsBuilder,
)
class LiteLVLMLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA-1.5 whose images keep R' = min(R, M) tokens chosen by LiteLVLM (see the module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        self.litelvlm_settings = settings_from_config(config)
        vc = config.vision_config
        if not isinstance(vc, CLIPVisionConfig):
            raise ValueError(f"vision_config: LiteLVLM needs a CLIP vision tower, got {type(vc).__name__}")
        layer = config.vision_feature_layer
        built = _get_num_hidden_layers(config) if isinstance(layer, int) else None
        if built != vc.num_hidden_layers - 1:
            raise ValueError(f"vision_feature_layer={layer!r}: LiteLVLM needs the select layer to be the last layer's "
                             f"input (-2, as LLaVA-1.5), whose q/k/v it reads")
        if config.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: "
                             "default or full")
        self.litelvlm_last_layer = vc.num_hidden_layers - 1
        clip_cfg = clip_checkpoint.clip_config(self.litelvlm_settings.clip)
        if clip_cfg.vision_config.hidden_size != vc.hidden_size:
            raise ValueError(f"{CONFIG_KEY}.clip: its vision width {clip_cfg.vision_config.hidden_size} is not the "
                             f"LLaVA tower's {vc.hidden_size}; name the CLIP checkpoint the LLaVA was built on")
        self.litelvlm = LiteLVLMSelector(vc, clip_cfg, self.litelvlm_settings)

    # ---- image path -----------------------------------------------------------------------

    def embed_multimodal(self, **kwargs: object):
        if kwargs.get("image_embeds") is not None:
            raise ValueError("image_embeds: LiteLVLM needs the images (it selects from the tower's own states)")
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        pixels = image_input["pixel_values"]
        if isinstance(pixels, (list, tuple)):
            pixels = torch.stack(list(pixels))
        # the select layer's states with [CLS]: the last layer's input
        states = self.vision_tower(pixels, feature_select_strategy="full")
        meta = [tuple(int(v) for v in m.tolist()) for m in _per_image(kwargs[META])]  # a CPU field: no sync
        kept = self.litelvlm.select(states, _per_image(kwargs[TEXT_IDS]), meta,
                                    keep_cls=self.config.vision_feature_select_strategy == "full")
        sizes = [k.shape[0] for k in kept]
        if len(set(sizes)) == 1:
            return tuple(self.multi_modal_projector(torch.stack(kept)).unbind(0))
        return torch.split(self.multi_modal_projector(torch.cat(kept)), sizes)

    # ---- weights --------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        tower_names = self.litelvlm.tower_names(self.litelvlm_last_layer)
        wanted_from_tower = {v: k for k, v in tower_names.items()}
        from_llava: dict = {}

        def tap(ws):
            for name, w in ws:
                m = _TOWER.match(name)
                if m and m.group(1) in wanted_from_tower:
                    from_llava[wanted_from_tower[m.group(1)]] = w
                yield name, w

        loaded = set(super().load_weights(tap(weights)))
        # the rest from the CLIP checkpoint: text tower, projections, and any tower tensor the LLaVA lacked
        need = dict(self.litelvlm.clip_names())
        need.update({k: f"vision_model.{v}" for k, v in tower_names.items() if k not in from_llava})
        by_ckpt = {v: k for k, v in need.items()}
        clip = clip_checkpoint.read_tensors(self.litelvlm_settings.clip, lambda n: n in by_ckpt)
        missing = sorted(n for n in by_ckpt if n not in clip)
        if missing:
            raise ValueError(f"{CONFIG_KEY}.clip={self.litelvlm_settings.clip!r}: the checkpoint lacks {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''} (is it the CLIPModel the LLaVA was built on?)")
        tensors = {k: from_llava[k] for k in from_llava}
        tensors.update({by_ckpt[n]: t for n, t in clip.items()})
        loaded |= {f"litelvlm.{n}" for n in self.litelvlm.load(tensors)}
        return loaded
