"""Locating the parts of a Hugging Face model (CLIP towers, LVLM submodules, config fields) across versions.

One walk for both towers: a CLIP tower is the module that holds ``embeddings``,
``encoder`` and its final norm (``post_layernorm`` for vision,
``final_layer_norm`` for text); wrappers hold it in ``vision_model`` /
``text_model`` (CLIPModel, CLIP*ModelWithProjection; in transformers 4.x
``CLIPVisionModel.vision_model`` is the CLIPVisionTransformer, in 5.x the
layers may sit one level up). Three levels of wrapping is the deepest seen.
"""

from __future__ import annotations

from typing import Any

import torch

# kind -> (attribute of a wrapper, the final norm that marks the tower, accepted classes for the message)
_KINDS = {
    "vision": ("vision_model", "post_layernorm",
               "CLIPModel, CLIPVisionModelWithProjection, CLIPVisionModel"),
    "text": ("text_model", "final_layer_norm", "CLIPModel, CLIPTextModelWithProjection"),
}


def find_tower(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """The CLIP ``kind`` ("vision" or "text") transformer inside ``model`` (or ``model`` itself).

    Raises TypeError naming ``vision_model`` / ``text_model`` when none is found.
    """
    wrapper_attr, norm, accepted = _KINDS[kind]
    m = model
    for _ in range(3):
        if hasattr(m, "encoder") and hasattr(m, norm) and hasattr(m, "embeddings"):
            return m
        if not hasattr(m, wrapper_attr):
            break
        m = getattr(m, wrapper_attr)
    raise TypeError(f"{wrapper_attr}: expected a Hugging Face CLIP {kind} model ({accepted}), "
                    f"got {type(model).__name__}")


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding ``embeddings, pre_layrnorm, encoder, post_layernorm``.

    Only CLIP towers are supported: the method reads [CLS] (row 0) and its last-layer query. A tower
    of the same shape without a [CLS] token (SigLIP: no ``class_embedding``, no ``pre_layrnorm``; its
    pooled embedding comes from an attention-pooling head) is refused by its class name rather than
    having its first real patch silently taken for [CLS].
    """
    tower = find_tower(model, "vision")
    if not (hasattr(tower, "pre_layrnorm") and hasattr(getattr(tower, "embeddings", None), "class_embedding")):
        # the class the caller passed (in transformers 4.x the tower is nested one level down, another class)
        raise TypeError(f"vision_model: {type(model).__name__} is not supported: its tower has no [CLS] token "
                        "(LiteLVLM reads CLIP's [CLS]; supported: CLIP vision towers, e.g. CLIPVisionModel)")
    return tower


def text_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The CLIP text transformer (``embeddings, encoder, final_layer_norm``)."""
    return find_tower(model, "text")


def projection_weight(proj: Any, name: str) -> torch.Tensor:
    """[P, D] weight of a bias-free ``nn.Linear`` projection, or the tensor itself."""
    if isinstance(proj, torch.nn.Linear):
        if proj.bias is not None:
            raise ValueError(f"{name}: CLIP's projection has no bias; got an nn.Linear with one")
        return proj.weight
    if isinstance(proj, torch.Tensor):
        if proj.dim() != 2:
            raise ValueError(f"{name}: expected a [P, D] weight, got shape {tuple(proj.shape)}")
        return proj
    raise TypeError(f"{name}: expected nn.Linear or a [P, D] tensor, got {type(proj).__name__}")


def layer_output(out: Any) -> torch.Tensor:
    """transformers 5 layers return a tensor, 4.x a tuple (hidden_states, [attn])."""
    return out[0] if isinstance(out, (tuple, list)) else out


def tensor_version(t: torch.Tensor) -> int:
    """The in-place version counter, -1 for inference tensors (they have none and cannot change in place)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def config_get(config, *names, default=None):
    """The first attribute of ``config`` among ``names`` (transformers renamed several across versions)."""
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def model_part(model, name: str):
    """``model.<name>`` (transformers < 4.52) or ``model.model.<name>`` (the inner model of later versions)."""
    for owner in (model, getattr(model, "model", None)):
        if owner is not None and name in getattr(owner, "_modules", {}) | getattr(owner, "_parameters", {}):
            return getattr(owner, name)
    raise TypeError(f"model: {type(model).__name__} has no {name}")
