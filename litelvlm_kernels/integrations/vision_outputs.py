"""The vision outputs a stock LVLM returns beside its logits, rebuilt from the capture and the kept features.

The stock forward returns what its vision tower gave (transformers 5.2x:
``image_outputs`` / ``video_outputs``, a ``BaseModelOutputWithPooling`` whose
``pooler_output`` is the features merged into the prompt; 4.x:
``image_hidden_states`` / ``video_hidden_states``, the features alone). The
patched forward calls the stock one with ``inputs_embeds``, so it would return
none: they are rebuilt here, field for field:

* ``pooler_output``: the kept features of each item, in the stock container
  (a list per image; one tensor for the families that stack them, when every
  item kept as many rows, else a list). With every token kept: the stock value;
* ``last_hidden_state``, ``hidden_states``: the tower's own, from the capture
  (which runs the whole tower for this); ``hidden_states`` holds every layer when
  ``output_hidden_states`` is asked for, else only the feature layers (the
  others None), as transformers 5 captures them;
* ``attentions`` (only when ``output_attentions`` is asked for): from a second,
  stock pass of the vision tower over the same rows; its cost is that of the
  tower, paid only in that debugging mode.
"""

from __future__ import annotations

import torch

from ..selection.towers import model_part


def _asked(adapter, kwargs: dict, name: str) -> bool:
    value = kwargs.get(name)
    if value is None:
        value = getattr(adapter.model.config, name, False)
    return bool(value)


def pooled(mod, feats: list):
    """The stock container of the per-item features: a list, or one stacked tensor for ``mod.stacked``."""
    if mod.stacked and len({tuple(f.shape) for f in feats}) == 1:
        return torch.stack(feats)
    return list(feats)


def vision_output(adapter, mod, feats: list, cap, kwargs: dict):
    """A ``BaseModelOutputWithPooling`` as the stock forward's vision output (see the module docstring)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    features = pooled(mod, feats)
    if cap is None or cap.states is None:
        return BaseModelOutputWithPooling(pooler_output=features)
    states = cap.states
    layers = adapter.feature_layers(kwargs)
    # whether the call's output_* flags reach the tower: LLaVA's forward passes its kwargs on to it, the other
    # families' do not (their tower then returns only the feature layers, and no attentions)
    flags = adapter.tower_sees_output_flags
    if flags and _asked(adapter, kwargs, "output_hidden_states"):
        hidden = states
    elif layers is not None:
        picked = {i % len(states) for i in layers}
        hidden = tuple(h if i in picked else None for i, h in enumerate(states))
    else:
        hidden = None
    attentions = None
    if flags and _asked(adapter, kwargs, "output_attentions"):
        tower = model_part(adapter.model, "vision_tower")
        attentions = tower(cap.pixel_values, output_attentions=True, return_dict=True).attentions
    # the field order of the stock object (it matters to to_tuple()): a tower that pools ([CLS]) creates its
    # output with pooler_output in second place; one that does not (SigLIP without its head) gets it appended
    pools = adapter.pruner.has_cls
    out = BaseModelOutputWithPooling(last_hidden_state=cap.last_hidden_state,
                                     pooler_output=features if pools else None, hidden_states=hidden,
                                     attentions=attentions)
    if not pools:
        out["pooler_output"] = features
    return out


def legacy(mod, feats: list) -> torch.Tensor:
    """transformers 4.x's ``*_hidden_states``: every item's features concatenated row-wise ([sum n_i, H]), or
    stacked ([N, n, H]) for the families that keep them so (PaliGemma)."""
    if mod.legacy_stacked and len({tuple(f.shape) for f in feats}) == 1:
        return torch.stack(feats)
    return torch.cat(feats, 0)


def attach(out, outputs: dict):
    """Put the rebuilt vision outputs ({modality: (5.x output, 4.x value)}) on the stock output ``out``, under the
    field its class has for them."""
    fields = getattr(type(out), "__dataclass_fields__", {})
    for what, (value, old) in outputs.items():
        if f"{what}_outputs" in fields:          # transformers 5.2x
            out[f"{what}_outputs"] = value
        elif f"{what}_hidden_states" in fields:  # 4.x: the features alone
            out[f"{what}_hidden_states"] = old
    return out
