"""One hooked forward of a CLIP vision tower: what the method reads from it.

No model surgery and no attention maps, so any attention implementation works
(sdpa, flash attention, eager)::

    hidden   hidden_states[select_layer]        (default -2: the INPUT of the
                                                 last layer, no post-layernorm)
    q_cls    last layer self_attn.q_proj output, [CLS] row
    keys     last layer self_attn.k_proj output, patch rows
    values   last layer self_attn.v_proj output, patch rows

Every tensor handed to the ops excludes [CLS] (docs/design.md section 1):
Hugging Face gives M + 1 rows with [CLS] first, we slice ``[:, 1:]``.
"""

from __future__ import annotations

import dataclasses

import torch

from ._towers import layer_output, vision_tower


@dataclasses.dataclass
class VisionCapture:
    """What the method reads from one vision forward. Patch rows only (no [CLS]).

    hidden [B, M, Dv] (select layer), q_cls [B, D], keys / values [B, M, D]
    (last layer q/k/v projections), cls_hidden [B, Dv] (the select layer's [CLS]
    row, for LLaVA's "cls_patch" feature mode).
    """

    hidden: torch.Tensor
    q_cls: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    cls_hidden: torch.Tensor


class _CaptureDone(Exception):
    """Raised from a hook to skip the rest of the tower once everything is captured."""


def normalise_layer(select_layer: int, num_layers: int) -> int:
    """hidden_states index in [0, L]: 0 = embeddings after pre_layrnorm, i = output of layer i-1."""
    if not isinstance(select_layer, int) or isinstance(select_layer, bool):
        raise TypeError(f"select_layer: expected an int, got {type(select_layer).__name__}")
    idx = select_layer + num_layers + 1 if select_layer < 0 else select_layer
    if not 0 <= idx <= num_layers:
        raise ValueError(
            f"select_layer={select_layer} is outside hidden_states of a {num_layers}-layer tower "
            f"(valid: {-(num_layers + 1)} .. {num_layers})"
        )
    return idx


def capture_vision(vision_model: torch.nn.Module, pixel_values: torch.Tensor, *,
                   select_layer: int = -2, stop_early: bool = True,
                   **forward_kwargs) -> VisionCapture:
    """Run the vision tower once and capture the method's inputs with forward hooks.

    Parameters
    ----------
    vision_model : torch.nn.Module
        A CLIP vision model or anything holding one (see ``find_tower``).
    pixel_values : torch.Tensor
        [B, 3, H, W] images, tiles or frames.
    select_layer : int
        Hugging Face ``hidden_states`` index (0 = embeddings after
        pre_layrnorm, i = output of layer i - 1, so -2 is the input of the last
        layer). q/k/v always come from the LAST layer.
    stop_early : bool
        Once the last layer's v_proj has run (and the select layer is not the
        last one) skip the rest of the tower (last attention, MLP,
        post-layernorm, projection): nothing of it is used. Outputs are
        identical either way.
    **forward_kwargs
        Passed to the tower (e.g. ``interpolate_pos_encoding=True``).

    Returns
    -------
    VisionCapture
        Patch rows only; the hooks are removed even if the forward fails.

    Examples
    --------
    >>> cap = capture_vision(clip_vision, pixel_values)  # doctest: +SKIP
    >>> cap.hidden.shape                                  # doctest: +SKIP
    torch.Size([1, 576, 1024])
    """
    tower = vision_tower(vision_model)
    layers = tower.encoder.layers
    L = len(layers)
    idx = normalise_layer(select_layer, L)
    attn = layers[-1].self_attn
    got: dict = {}
    need = ("hidden", "q", "k", "v")
    can_stop = stop_early and idx < L  # idx == L needs the last layer's output

    def keep(name, transform):
        def hook(module, args, output):
            got[name] = transform(output)
            if can_stop and all(n in got for n in need):
                raise _CaptureDone
        return hook

    hidden_module = tower.pre_layrnorm if idx == 0 else layers[idx - 1]
    handles = [
        hidden_module.register_forward_hook(keep("hidden", layer_output)),
        attn.q_proj.register_forward_hook(keep("q", lambda o: o[:, 0])),
        attn.k_proj.register_forward_hook(keep("k", lambda o: o[:, 1:])),
        attn.v_proj.register_forward_hook(keep("v", lambda o: o[:, 1:])),
    ]
    try:
        tower(pixel_values=pixel_values, **forward_kwargs)
    except _CaptureDone:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in need if n not in got]
    if missing:  # pragma: no cover - a model whose forward skips these modules
        raise RuntimeError(f"capture_vision: hooks did not fire for {missing}; is this a CLIP tower?")
    h = got["hidden"]
    return VisionCapture(hidden=h[:, 1:], q_cls=got["q"], keys=got["k"], values=got["v"], cls_hidden=h[:, 0])
