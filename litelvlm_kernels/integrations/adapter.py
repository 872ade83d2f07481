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
from ..selection.towers import config_get

__all__ = ["FamilyAdapter", "LiteLVLMSettings", "Modality", "adapter_for", "register_adapter"]

# model_type -> adapter class; filled by the family modules listed below (imported on first use).
_ADAPTERS: dict = {}
_FAMILY_MODULES = ("llava", "llava_next", "llava_next_video", "llava_onevision", "paligemma")


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

    def __init__(self, model, pruner, settings: LiteLVLMSettings):
        self.model, self.pruner, self.settings = model, pruner, settings
        self.check_model()

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

    def features_of(self, cap, kwargs: dict) -> torch.Tensor:
        """What the stock ``get_image_features`` feeds the projector, from the capture: the feature layers' states
        (concatenated along the width for a list), [CLS] dropped with "default" (a tower with one)."""
        # cap.states numbers the layers as the installed version's hidden_states (siglip's 4.5x tie included)
        states = [cap.states[i] for i in self.feature_layers(kwargs)]
        out = states[0] if len(states) == 1 else torch.cat(states, -1)
        if self.pruner.has_cls and self.strategy(kwargs) == "default":
            out = out[:, 1:]
        return out
