"""One vision forward, run by hand: what the method reads from a CLIP tower.

The selection needs, for every image / tile / frame::

    hidden   hidden_states[select_layer]        (default -2: the INPUT of the
                                                 last layer, no post-layernorm)
    q_cls    last layer q_proj(layer_norm1(x)), [CLS] row
    keys     last layer k_proj(layer_norm1(x)), patch rows
    values   last layer v_proj(layer_norm1(x)), patch rows

where x = hidden_states[-2] is the last layer's input. So the capture runs the
tower's own modules in the order its forward does (embeddings, pre_layrnorm,
layers 0 .. L-2) and then applies the last layer's ``layer_norm1`` and its
three projections to x explicitly. Nothing is hooked and nothing is stored on a
module, so one tower can serve any number of threads at once, a failing call
leaves nothing behind, and ``torch.compile`` sees plain module calls. The last
layer's attention and MLP, ``post_layernorm`` and the projection are never run
(LLaVA never uses them); ``stop_early=False`` runs the last layer anyway, and
``select_layer=-1`` needs it.

Every tensor handed to the ops excludes [CLS] (docs/design.md section 1):
Hugging Face gives M + 1 rows with [CLS] first, we slice ``[:, 1:]``.

``last_layer_qkv`` takes the norm and the projections as callables, so a tower
whose modules are not Hugging Face's (a serving engine's fused QKV linear, a
SigLIP layer) reuses the same arithmetic.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import torch

from .towers import layer_output, vision_tower


@dataclasses.dataclass
class VisionCapture:
    """What the method reads from one vision forward. Patch rows only (no [CLS]).

    hidden [B, M, Dv] (select layer), q_cls [B, D], keys / values [B, M, D]
    (last layer q/k/v projections), cls_hidden [B, Dv] (the select layer's [CLS]
    row, for LLaVA's "full" feature mode). A tower without [CLS] (SigLIP,
    ``siglip.py``) leaves those four None and gives ``contribution`` [B, M]
    instead.
    """

    hidden: torch.Tensor
    q_cls: torch.Tensor | None
    keys: torch.Tensor | None
    values: torch.Tensor | None
    cls_hidden: torch.Tensor | None
    contribution: torch.Tensor | None = None  # [B, M] fp32, computed by the capture (SigLIP: the pooling head's)
    stock_features: torch.Tensor | None = None  # [B, M, Dv] when the stock hidden_states[select_layer] is not
    #                                             ``hidden`` (see ``features``)
    # The tower's own outputs, as its stock forward gives them (what an LVLM returns as its vision outputs):
    # ``states`` the hidden_states tuple, numbered as the stock forward numbers it (0 = embeddings, i = output of
    # layer i - 1, [CLS] included for CLIP; the last entry only when the tower ran to its end), and
    # ``last_hidden_state`` (CLIP: the last layer's output; SigLIP: its post-layernormed output); None when the
    # capture stopped early. ``pixel_values``: the rows the capture ran on.
    states: tuple | None = None
    last_hidden_state: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None

    @property
    def features(self) -> torch.Tensor:
        """The patch rows of the stock ``hidden_states[select_layer]``, what an LVLM's projector reads.

        ``hidden`` itself, except for a SigLIP tower's last layer under the transformers versions (4.5x) whose
        ``hidden_states[-1]`` is the post-layernormed ``last_hidden_state`` (``siglip.ties_last_hidden_state``):
        the scores keep reading the layer's own state, the LLM gets what the stock model gives it.
        """
        return self.hidden if self.stock_features is None else self.stock_features


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


def last_layer_qkv(x: torch.Tensor, norm: Callable, q_proj: Callable, k_proj: Callable,
                   v_proj: Callable, cls_query_only: bool = False) -> tuple:
    """(q_cls [B, D], keys [B, M, D], values [B, M, D]) of the last layer, from its input ``x`` [B, 1 + M, Dv].

    q is projected for every row and sliced, as the layer itself computes it: a [B, Dv] product
    could take another GEMM path and differ in the last bit (q feeds the contribution ranking).
    ``cls_query_only``: project q for the [CLS] row alone (a third of the cost less; a serving engine, which
    runs its own tower and is not bit-exact with the stock layer anyway, takes it).
    """
    y = norm(x)
    if cls_query_only:
        return q_proj(y[:, 0]), k_proj(y)[:, 1:], v_proj(y)[:, 1:]
    return q_proj(y)[:, 0], k_proj(y)[:, 1:], v_proj(y)[:, 1:]


_TAKES_CAUSAL_MASK: dict = {}  # layer class -> bool (a plain dict: torch.compile traces lookups, not lru_cache)


def _layer_takes_causal_mask(layer_cls: type) -> bool:
    """transformers 4.x CLIP layers take (hidden, attention_mask, causal_attention_mask); 5.x drops the last."""
    if layer_cls not in _TAKES_CAUSAL_MASK:
        _TAKES_CAUSAL_MASK[layer_cls] = "causal_attention_mask" in inspect.signature(layer_cls.forward).parameters
    return _TAKES_CAUSAL_MASK[layer_cls]


def run_layer(layer: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One encoder layer without a mask, as the tower's encoder calls it (vision towers use none)."""
    if _layer_takes_causal_mask(type(layer)):
        return layer_output(layer(h, None, None))
    return layer_output(layer(h, None))


def embed(tower: torch.nn.Module, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
    """The tower's patch (+ position) embeddings, as its forward computes them (CLIP and SigLIP alike)."""
    # transformers < 4.47 embeddings take no interpolate_pos_encoding: pass it only when asked for
    if interpolate_pos_encoding:
        return tower.embeddings(pixel_values, interpolate_pos_encoding=True)
    return tower.embeddings(pixel_values)


def check_pixels(pixel_values, vision_config, name: str, dims: tuple = (4,)) -> None:
    """A floating [..., C, H, W] tensor with C = the tower's channels and at least one image, or a named error."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(pixel_values).__name__} "
                        "(convert with torch.as_tensor, or use the processor's return_tensors='pt')")
    if pixel_values.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        layout = "[num_images, channels, height, width]" + (", or with views / frames" if max(dims) > 4 else "")
        raise ValueError(f"{name}: expected a {want} tensor ({layout}), got shape {tuple(pixel_values.shape)}")
    if not pixel_values.is_floating_point():
        raise TypeError(f"{name}: expected floating-point pixels, got {pixel_values.dtype}")
    channels = getattr(vision_config, "num_channels", 3)
    if pixel_values.shape[-3] != channels:
        raise ValueError(f"{name}: expected {channels} channels at dim -3, got shape {tuple(pixel_values.shape)}")
    if pixel_values.numel() == 0:
        raise ValueError(f"{name}: no images (shape {tuple(pixel_values.shape)}); pass at least one")


def capture_vision(vision_model: torch.nn.Module, pixel_values: torch.Tensor, *, select_layer: int = -2,
                   stop_early: bool = True, interpolate_pos_encoding: bool = False) -> VisionCapture:
    """Run the vision tower as far as the method needs and return its inputs.

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
        Skip the last layer's attention and MLP, which nothing uses. Outputs
        are identical either way; it is implied off for ``select_layer=-1``
        (the last layer's output is the feature).
    interpolate_pos_encoding : bool
        As the tower's own argument (images of another size than the tower's).

    Returns
    -------
    VisionCapture
        Patch rows only. Bit for bit the values the stock forward computes.

    Examples
    --------
    >>> cap = capture_vision(clip_vision, pixel_values)  # doctest: +SKIP
    >>> cap.hidden.shape                                  # doctest: +SKIP
    torch.Size([1, 576, 1024])
    """
    tower = vision_tower(vision_model)
    check_pixels(pixel_values, tower.config, "pixel_values")
    layers = tower.encoder.layers
    L = len(layers)
    idx = normalise_layer(select_layer, L)
    h = tower.pre_layrnorm(embed(tower, pixel_values, interpolate_pos_encoding))
    states = [h]
    for i in range(L - 1):
        h = run_layer(layers[i], h)
        states.append(h)
    last = layers[-1]
    attn = last.self_attn
    q_cls, keys, values = last_layer_qkv(h, last.layer_norm1, attn.q_proj, attn.k_proj, attn.v_proj)
    out = None
    if idx == L or not stop_early:
        out = run_layer(last, h)
        states.append(out)
    selected = states[idx]
    return VisionCapture(hidden=selected[:, 1:], q_cls=q_cls, keys=keys, values=values, cls_hidden=selected[:, 0],
                         states=tuple(states), last_hidden_state=out, pixel_values=pixel_values)
