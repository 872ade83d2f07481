"""What a model family tells the patch: its settings, its visual inputs (``Modality``) and its adapter base.

A family file (``llava.py`` ...) subclasses ``FamilyAdapter``, registers it for
its ``config.model_type`` values and lists its modalities; ``lvlm.py`` patches a
model with the adapter of its type.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import torch

from ..selection.capture import normalise_layer
from ..selection.settings import LiteLVLMSettings
from ..selection.towers import config_get, model_part

__all__ = ["FamilyAdapter", "LiteLVLMSettings", "Modality", "PAIRED_OPTIONS", "PAIRED_SETTINGS", "adapter_for",
           "register_adapter"]

# model_type -> adapter class; filled by the family modules listed below (imported on first use).
_ADAPTERS: dict = {}
_FAMILY_MODULES = ("llava", "llava_next", "llava_next_video", "llava_onevision", "paligemma", "qwen2_5_vl",
                   "qwen3_vl")
# enable_litelvlm's settings for a paired scorer only (docs/design.md section 12): refused by the other families
PAIRED_SETTINGS = ("retain_ratio", "scorer_min_patches", "scorer_max_patches")
PAIRED_OPTIONS = ("image_mean", "image_std", "scorer_image_mean", "scorer_image_std")


def register_adapter(cls):
    """Class decorator: handle every ``config.model_type`` in ``cls.model_types``."""
    for t in cls.model_types:
        _ADAPTERS[t] = cls
    return cls


def adapter_for(model) -> type:
    for name in _FAMILY_MODULES:
        importlib.import_module(f".{name}", __package__)
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in _ADAPTERS:
        raise TypeError(f"model: {type(model).__name__} (model_type={mt!r}) is not supported; supported "
                        f"model types: {', '.join(sorted(_ADAPTERS))}")
    return _ADAPTERS[mt]


@dataclasses.dataclass
class Modality:
    """One kind of visual input of a family: its pixels argument, placeholder id and the family's two functions."""

    pixel_key: str
    token_id: int
    extra_keys: tuple            # forward arguments that only describe the pixels (image_sizes): dropped
    stock_counts: Any            # (kwargs) -> list[int]: placeholders per item in the stock model
    features: Any                # (kwargs, text_condition) -> (list[Tensor [n_i, H]] in placeholder order,
    #                              list (per item) of lists (per view) of view_reports dicts, the VisionCapture)
    pixel_dims: tuple = (4,)     # accepted pixel tensor ranks ([N, C, H, W]; 5 for views / frames)
    stacked: bool = False        # the stock vision output stacks the items' features in one tensor (else a list)
    legacy_stacked: bool = False  # transformers 4.x's *_hidden_states keep them stacked (else: concatenated rows)
    check: Any = None            # (kwargs) -> None: the pixel arguments' own check (default: [..., C, H, W] images)
    # (features, the VisionCapture slot of ``features``) -> a ModelOutput: when set, the kept features reach the
    # stock forward as ``mm_encoder_outputs[modality]`` (transformers 5.2x) instead of being written into
    # ``inputs_embeds``; the stock forward scatters them itself and builds what it derives from the placeholders
    # (Qwen3-VL's DeepStack rows), and the object is also the vision output returned (``image_outputs``)
    encoder_output: Any = None
    # (the VisionCapture slot of ``features``) -> per item, the positions within its placeholder run that its kept
    # features take (ascending); the other columns are dropped. Default None: the first ones (the run's tail is
    # dropped), which is all that matters where positions are renumbered; a family whose ``stock_positions`` are
    # gathered with the tokens names the kept tokens' own columns
    run_columns: Any = None
    # features takes generate= too (True for generate()'s prefill, where the stock model encodes the items with
    # their own arguments only, not the call's output_* flags)
    features_take_generate: bool = False


def as_layers(layer) -> list:
    """``vision_feature_layer`` (an int, or a list of ints whose states are concatenated) as a list."""
    layers = [layer] if isinstance(layer, int) and not isinstance(layer, bool) else layer
    if not isinstance(layers, (list, tuple)) or not layers or any(
            isinstance(x, bool) or not isinstance(x, int) for x in layers):
        raise TypeError(f"vision_feature_layer={layer!r}: expected an int or a non-empty list of ints")
    return list(layers)


class FamilyAdapter:
    """Base of the family files. Subclasses set ``model_types`` and implement ``modalities``."""

    model_types: tuple = ()
    per_call_strategy = False  # whether a call may override the config's vision_feature_select_strategy
    tower_sees_output_flags = False  # whether the stock forward passes output_attentions / _hidden_states to the tower

    paired_scorer = False  # the tower has neither [CLS] nor a pooling head: a paired CLIP / SigLIP scores it

    def __init__(self, model, pruner, settings: LiteLVLMSettings):
        self.model, self.pruner, self.settings = model, pruner, settings
        if not self.paired_scorer:
            for name in PAIRED_SETTINGS:
                if getattr(settings, name) is not None:
                    raise ValueError(f"{name}: a setting of the paired scorer (Qwen2.5-VL, Qwen3-VL); "
                                     f"{type(self).__name__} scores with its own tower: use num_retain")
        self.check_model()

    @classmethod
    def build_pruner(cls, model, text_model, tokenizer, options: dict):
        """The pruner ``enable_litelvlm`` builds from its arguments (``options``: ``visual_projection``,
        ``vision_head``, ``head_contribution`` and the ``PAIRED_OPTIONS``, None when not given): a
        ``LiteLVLMPruner`` on the model's own CLIP / SigLIP tower. A family scored otherwise overrides it."""
        from .pruner import LiteLVLMPruner

        for name in PAIRED_OPTIONS:
            if options.get(name) is not None:
                raise ValueError(f"{name}: only for models with a paired scorer (Qwen2.5-VL, Qwen3-VL), whose "
                                 f"scorer sees re-normalised pixels; {cls.__name__} scores with its own tower")
        # a CLIPModel as text_model carries the visual projection LLaVA's tower lacks
        return LiteLVLMPruner(model_part(model, "vision_tower"), text_model, tokenizer,
                              visual_projection=options.get("visual_projection"),
                              select_layer=cls.select_layer_of(model), vision_head=options.get("vision_head"),
                              head_contribution=options.get("head_contribution") or "exact",
                              projection_from_text_model=True)

    def check_model(self) -> None:
        """Raise ValueError naming the config field this adapter cannot handle."""

    def modalities(self) -> list:
        raise NotImplementedError

    def check_call(self, kwargs: dict) -> None:
        """A call's own ``vision_feature_select_strategy`` that this family cannot honour, refused by name."""
        st = kwargs.get("vision_feature_select_strategy")
        if st is not None and not self.per_call_strategy and st != self.strategy():
            raise ValueError(f"vision_feature_select_strategy={st!r}: differs from the config's {self.strategy()!r}, "
                             "which LiteLVLM was enabled with; change the config and enable again")
        if kwargs.get("vision_feature_layer") is not None:
            as_layers(kwargs["vision_feature_layer"])

    def text_condition(self, expressions: list):
        """One text group per item: [[str, ...], ...] -> TextCondition (cached by content)."""
        return self.pruner.prepare_text(texts=[list(e) for e in expressions],
                                        similarity_keep=self.settings.similarity_keep)

    @staticmethod
    def select_layer_of(model) -> int:
        """The layer the selection scores on: the config's ``vision_feature_layer`` (LLaVA: -2); for a list of
        layers (their states concatenated as the features), the deepest of them, the one closest to the layers
        the method reads (docs/integrations.md)."""
        layers = as_layers(config_get(model.config, "vision_feature_layer", default=-2))
        n = model.config.vision_config.num_hidden_layers
        return max(layers, key=lambda x: normalise_layer(x, n))

    def feature_layers(self, kwargs: dict) -> list | None:
        """The tower layers whose states the stock model projects in this call (the call's
        ``vision_feature_layer``, else the config's); None for a family that takes the tower's last_hidden_state."""
        layer = kwargs.get("vision_feature_layer")
        if layer is None:
            layer = config_get(self.model.config, "vision_feature_layer", default=-2)
        return as_layers(layer)

    def strategy(self, kwargs: dict | None = None) -> str:
        """``vision_feature_select_strategy`` (the call's, else the config's): "default" drops [CLS], "full" keeps
        it as a token."""
        st = (kwargs or {}).get("vision_feature_select_strategy")
        if st is None:
            st = config_get(self.model.config, "vision_feature_select_strategy", default="default")
        if st not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy={st!r} is not supported (default or full)")
        return st

    # ---- hooks of the families whose positions are not 1-D (Qwen's M-RoPE); the defaults change nothing --------

    def stock_positions(self, kwargs: dict, generate: bool):
        """None (the default: the caller's ``position_ids``, if any, are renumbered so each row's positions stay
        consecutive, ``prompt.shrink``), or (positions [B, L, K], info): the positions the stock model gives the
        caller's FULL prompt, which every kept token keeps (gathered with it, never renumbered), and whatever
        ``kept_positions`` needs to know of how they were made. ``generate``: the call is generate()'s prefill
        (some models derive positions differently there)."""
        return None

    def kept_positions(self, kept: torch.Tensor, attention_mask, info, generate: bool) -> dict:
        """The stock call's position arguments from the kept tokens' positions [B, L', K] (``stock_positions``
        gathered; the shrunk ``attention_mask`` or None), after any model state the stock prefill would have set
        from them (Qwen's ``rope_deltas``, which a later cached turn reads)."""
        raise NotImplementedError

    def prefix_state(self) -> dict:
        """Model state a cache filled by a pruned prefill needs at its next turn (stored with the cache)."""
        return {}

    def restore_prefix_state(self, state: dict) -> None:
        """Set ``prefix_state``'s values again before a turn continues that cache (another call may have
        changed them since)."""

    def features_of(self, cap, kwargs: dict) -> torch.Tensor:
        """What the stock ``get_image_features`` feeds the projector, from the capture: the feature layers' states
        (concatenated along the width for a list), [CLS] dropped with "default" (a tower with one)."""
        # cap.states numbers the layers as the installed version's hidden_states (siglip's 4.5x tie included)
        states = [cap.states[i] for i in self.feature_layers(kwargs)]
        out = states[0] if len(states) == 1 else torch.cat(states, -1)
        if self.pruner.has_cls and self.strategy(kwargs) == "default":
            out = out[:, 1:]
        return out
