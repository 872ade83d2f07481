"""SigLIP towers: what plays CLIP's [EOS] similarity and [CLS] contribution, read from a SigLIP checkpoint.

SigLIP has no [CLS] token. Its pooled image embedding is a multi-head
attention pooling head (MAP) over y_j = LN_post(x^L_j), the post-layernormed
output of the LAST layer: a learned probe p attends with
``nn.MultiheadAttention`` (q = W_q p + b_q, k_j = W_k y_j + b_k,
v_j = W_v y_j + b_v, out_proj W_o, b_o), then layernorm + MLP. Its text
embedding e_t is ``head(final_layer_norm(h)[:, -1])`` (the last position;
texts padded to ``max_position_embeddings`` as in training, no attention mask).
The method's two signals (docs/design.md section 10):

* similarity: s_tj = e_t . (W_o (W_v LN_post(x_j) + b_v) + b_o), x_j the
  select-layer state (as CLIP's rule uses the select layer): the text against
  what patch j would contribute if the probe attended to it alone. It folds
  like CLIP's with ``proj_weight = W_o W_v`` and ``proj_bias = W_o b_v + b_o``;
* contribution: c_j = || W_o [a_1j v_1j; ...; a_Hj v_Hj] ||, a_hj the probe's
  per-head attention (``litelvlm_kernels.map_contribution``).

LVLM checkpoints drop the head (``vision_use_head=False``) and LLaVA-OneVision's
tower also drops the last layer, so the head, the post-layernorm paired with it,
the layers the LVLM's tower lacks and the text tower come from the original
SigLIP checkpoint (e.g. ``google/siglip-so400m-patch14-384``), as CLIP's text
tower and ``visual_projection`` do for LLaVA-1.5.

Dtypes: the checkpoint may be loaded in another dtype than the LVLM's tower
(a bf16 LVLM with its SigLIP left in fp32, say). The tower's states are then
cast to the checkpoint's dtype where the checkpoint's own layers,
post-layernorm and head take over, so those run in the dtype they were loaded
in; the kept tokens stay the tower's, in the tower's dtype.
"""

from __future__ import annotations

import torch

from .capture import VisionCapture, check_pixels, embed, normalise_layer, run_layer
from .scorer import Scorer
from .text import check_vocab_fits, highest_id
from .towers import find_tower

__all__ = ["SiglipScorer", "capture_siglip", "head_contribution", "is_siglip_tower"]


def is_siglip_tower(tower: torch.nn.Module) -> bool:
    """A vision transformer without [CLS]: no ``class_embedding``, no ``pre_layrnorm`` (SigLIP, SigLIP 2)."""
    return not hasattr(tower, "pre_layrnorm") and not hasattr(getattr(tower, "embeddings", None), "class_embedding")


def _with_head(m) -> torch.nn.Module | None:
    """The SigLIP vision transformer holding ``head`` inside ``m`` (SiglipModel, SiglipVisionModel, 4.x nesting)."""
    for _ in range(3):
        if m is None:
            return None
        if getattr(m, "head", None) is not None and hasattr(m, "post_layernorm") and hasattr(m, "encoder"):
            return m
        m = getattr(m, "vision_model", None)
    return None


def head_source(vision_model, text_model, vision_head) -> tuple[torch.nn.Module, str]:
    """The SigLIP vision transformer whose pooling head, post-layernorm and last layers LiteLVLM reads, and the
    name of the argument it came from (for errors about it: ``check_source``).

    Looked for in ``vision_head`` (if given), then ``text_model`` (a SiglipModel carries both towers), then
    ``vision_model`` itself (a SiglipVisionModel loaded with its head). TypeError naming ``vision_head``.
    """
    for name, cand in (("vision_head", vision_head), ("text_model", text_model), ("vision_model", vision_model)):
        src = _with_head(cand)
        if src is not None:
            return src, name
        if cand is vision_head and vision_head is not None:
            raise TypeError(f"vision_head: {type(vision_head).__name__} holds no SigLIP attention-pooling head "
                            "(load the original SigLIP checkpoint with vision_use_head=True)")
    raise TypeError(
        f"vision_model: {type(vision_model).__name__} is a SigLIP tower without its attention-pooling head (LVLM "
        "checkpoints drop it); pass the original SigLIP checkpoint as text_model= (a SiglipModel, e.g. "
        "google/siglip-so400m-patch14-384) or vision_head= (its SiglipVisionModel)")


def fold_params(source: torch.nn.Module) -> tuple:
    """(proj_weight [P, Dv] = W_o W_v, proj_bias [P] = W_o b_v + b_o) of the head's value and output maps, fp32."""
    attn = source.head.attention
    D = attn.embed_dim
    if getattr(attn, "in_proj_weight", None) is None:
        raise TypeError("vision_head: the pooling head's attention has separate q/k/v weights; expected the "
                        "packed in_proj_weight of SigLIP's nn.MultiheadAttention")
    w_v = attn.in_proj_weight[2 * D:].float()
    b_v = attn.in_proj_bias[2 * D:].float() if attn.in_proj_bias is not None else w_v.new_zeros(D)
    w_o = attn.out_proj.weight.float()
    b_o = attn.out_proj.bias.float() if attn.out_proj.bias is not None else w_o.new_zeros(w_o.shape[0])
    return w_o @ w_v, w_o @ b_v + b_o


def _layers(n: int) -> str:
    return f"{n} layer" if n == 1 else f"{n} layers"


def check_source(tower: torch.nn.Module, source: torch.nn.Module, name: str = "vision_head") -> None:
    """The head's checkpoint must extend the LVLM's tower: same width, at least as many layers. ``name``: the
    argument the checkpoint was passed as (``head_source``'s second value), which the errors name."""
    d_tower, d_src = tower.config.hidden_size, source.config.hidden_size
    if d_tower != d_src:
        raise ValueError(f"{name}: a SigLIP head of width {d_src} does not fit a vision tower of width "
                         f"{d_tower}; pass the SigLIP checkpoint this tower comes from")
    n_tower, n_src = len(tower.encoder.layers), len(source.encoder.layers)
    if n_src < n_tower:
        raise ValueError(f"{name}: the SigLIP checkpoint has {_layers(n_src)}, fewer than the vision tower's "
                         f"{n_tower}; pass the checkpoint this tower comes from")


def head_contribution(source: torch.nn.Module, first: int, h: torch.Tensor, mode: str = "exact") -> torch.Tensor:
    """c [B, M] fp32: each patch's term of the pooling head's attention (docs/design.md 10.1), from ``h`` [B, M, Dv],
    the state after ``first`` layers: ``source``'s layers ``first`` .. L - 1 (those the LVLM's tower dropped), its
    post-layernorm and head run in the checkpoint's own dtype (module docstring)."""
    from ..pooling_head import head_qkv, map_contribution

    h = h.to(source.post_layernorm.weight.dtype)
    # an engine's parts hold only the layers past the LVLM's tower (``siglip_parts``): their first is layer_offset
    for layer in source.encoder.layers[first - getattr(source, "layer_offset", 0):]:
        h = run_layer(layer, h)
    head = source.head
    q, k, v = head_qkv(head, source.post_layernorm(h))
    return map_contribution(q, k, v, head.attention.out_proj.weight, head.attention.num_heads, mode=mode)


def capture_siglip(tower: torch.nn.Module, source: torch.nn.Module, pixel_values: torch.Tensor, *,
                   select_layer: int = -1, contribution: str = "exact", interpolate_pos_encoding: bool = False,
                   tied_last: bool = False) -> VisionCapture:
    """One SigLIP forward, run by hand (no hooks): the select-layer states and each patch's head contribution.

    The LVLM's own tower runs its L' layers (``select_layer`` indexes its hidden_states: 0 = embeddings,
    i = output of layer i - 1); the layers L' .. L - 1 that the LVLM dropped come from ``source`` (the original
    checkpoint), whose post-layernorm and pooling head then give the contribution (``head_contribution``).
    Nothing is stored on a module: thread-safe, and an error leaves nothing behind.

    ``tied_last``: the stock ``hidden_states[-1]`` is the tower's post-layernormed output
    (``ties_last_hidden_state``); then ``features`` at the last layer is that, ``hidden`` stays the layer's state.

    Returns
    -------
    VisionCapture
        ``hidden`` [B, M, Dv] (select layer, before any post-layernorm; M = every patch, there is no [CLS]),
        ``contribution`` [B, M] fp32, ``features`` (the stock hidden_states[select_layer]); ``q_cls`` / ``keys`` /
        ``values`` / ``cls_hidden`` are None.
    """
    check_pixels(pixel_values, tower.config, "pixel_values")
    layers = tower.encoder.layers
    idx = normalise_layer(select_layer, len(layers))
    h = embed(tower, pixel_values, interpolate_pos_encoding)
    states = [h]
    for layer in layers:
        h = run_layer(layer, h)
        states.append(h)
    selected = states[idx]
    norm = getattr(tower, "post_layernorm", None)
    last_hidden = norm(h) if norm is not None else h  # what the tower's own forward returns
    c = head_contribution(source, len(layers), h, contribution)
    stock = None
    if tied_last:  # the stock hidden_states[-1] is last_hidden_state itself
        states[-1] = last_hidden
        stock = last_hidden if idx == len(layers) else None
    return VisionCapture(hidden=selected, q_cls=None, keys=None, values=None, cls_hidden=None, contribution=c,
                         stock_features=stock, states=tuple(states), last_hidden_state=last_hidden,
                         pixel_values=pixel_values)


_TIES: dict = {}  # class of the module the LVLM calls -> bool


def ties_last_hidden_state(vision_model: torch.nn.Module) -> bool:
    """Whether ``vision_model(..., output_hidden_states=True).hidden_states[-1]`` is the post-layernormed
    ``last_hidden_state`` rather than the last layer's output.

    It depends on the installed transformers, not on the weights: 4.5x's ``check_model_inputs`` replaces the
    last collected state by ``last_hidden_state`` (harmless for CLIP, whose last_hidden_state has no norm; for
    SigLIP it is post_layernorm's output), 4.45 and 5.x do not. So a stock LVLM with ``vision_feature_layer=-1``
    (LLaVA-OneVision, LLaVA-Interleave) feeds its LLM one or the other; this asks a 1-layer random instance of
    the same class once, so the LiteLVLM features stay bit for bit the stock ones on either version.
    """
    cls = type(vision_model)
    if cls not in _TIES:
        try:
            cfg = type(vision_model.config)(**{**vision_model.config.to_dict(), **dict(
                image_size=8, patch_size=4, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=1, vision_use_head=False)})
            probe = cls(cfg).eval()
            with torch.no_grad():
                out = probe(torch.randn(1, cfg.num_channels, 8, 8), output_hidden_states=True)
            _TIES[cls] = bool(out.hidden_states is not None and torch.equal(out.hidden_states[-1],
                                                                           out.last_hidden_state))
        except Exception:  # noqa: BLE001 - a class we cannot instantiate small: its forward is the plain loop
            _TIES[cls] = False
    return _TIES[cls]


def siglip_text_tower(text_model: torch.nn.Module) -> torch.nn.Module:
    """The SigLIP text transformer (``final_layer_norm`` + ``head``) inside ``text_model``."""
    tower = find_tower(text_model, "text")
    if getattr(tower, "head", None) is None:
        parent = getattr(text_model, "text_model", None)
        if getattr(parent, "head", None) is not None:  # transformers 4.x: SiglipTextModel.text_model holds it
            return parent
        raise TypeError(f"text_model: {type(text_model).__name__} has no SigLIP text head; pass a SiglipModel "
                        "or SiglipTextModel")
    return tower


def encode_siglip_text(text_model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """[N, P] SigLIP text embeddings: ``head(final_layer_norm(h)[:, -1])``, ids padded to the tower's length.

    No attention mask: SigLIP was trained on texts padded to ``max_position_embeddings`` and pools the last
    position, padding included (the transformers docs: "make sure to set padding='max_length'").
    """
    tower = siglip_text_tower(text_model)
    out = tower(input_ids=input_ids)
    return out.pooler_output if hasattr(out, "pooler_output") else out[1]


def pad_to_length(input_ids: torch.Tensor, length: int, pad_id: int, side: str = "right") -> torch.Tensor:
    """Pad [N, L <= length] ids to ``length`` with ``pad_id`` on ``side`` (what ``padding="max_length"`` does)."""
    extra = length - input_ids.shape[1]
    if extra <= 0:
        return input_ids
    pad = input_ids.new_full((input_ids.shape[0], extra), pad_id)
    return torch.cat([input_ids, pad] if side == "right" else [pad, input_ids], 1)


def check_siglip_tokenizer(tokenizer, text_config) -> None:
    """Every id the tokenizer makes (up to ``text.highest_id``) must be in the SigLIP text tower's vocabulary; it
    must have a pad token."""
    top = highest_id(tokenizer)
    if top is None:
        return  # not a Hugging Face tokenizer: nothing to compare
    check_vocab_fits(top, text_config, "SigLIP")
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise ValueError("tokenizer: has no pad token; SigLIP texts are padded to the text tower's length")


class SiglipScorer(Scorer):
    """The scorer of a SigLIP tower: the original checkpoint's pooling head plays [CLS] (docs/design.md section 10).

    Parameters
    ----------
    tower : torch.nn.Module
        The LVLM's SigLIP vision transformer (its layers run by ``capture``). An engine with its own tower passes
        None and gives ``num_tower_layers``.
    source : torch.nn.Module
        The original SigLIP vision transformer with its head (``head_source``): its post-layernorm, head and the
        layers the LVLM's tower dropped.
    text_model, tokenizer
        SigLIP's text tower (SiglipModel / SiglipTextModel) and tokenizer, or None.
    head_contribution : "exact" or "heads"
        ``map_contribution``'s ``mode``.
    vision_model : torch.nn.Module, optional
        What the caller passed for the tower (4.5x's hidden_states tie is a property of its class).
    source_name : str
        The argument the checkpoint came in as, for errors about it.
    """

    has_cls = False
    end_layer = -1
    kind = "siglip"

    def __init__(self, tower, source, text_model=None, tokenizer=None, *, head_contribution: str = "exact",
                 vision_model=None, num_tower_layers: int | None = None, source_name: str = "vision_head"):
        super().__init__(text_model, tokenizer)
        if head_contribution not in ("exact", "heads"):
            raise ValueError(f"head_contribution must be 'exact' or 'heads', got {head_contribution!r}")
        self.tower, self.source, self.head_contribution = tower, source, head_contribution
        if tower is not None:
            check_source(tower, source, source_name)
            num_tower_layers = len(tower.encoder.layers)
        self.num_tower_layers = num_tower_layers
        self._tied_last = ties_last_hidden_state(vision_model) if vision_model is not None else False
        if text_model is not None:
            text = siglip_text_tower(text_model)
            out = text.head.out_features
            if out != source.config.hidden_size:
                raise ValueError(f"text_model: its text head gives {out}-d embeddings but the SigLIP vision head "
                                 f"{source.config.hidden_size}-d ones; pass the same SigLIP checkpoint")
            if tokenizer is not None:
                check_siglip_tokenizer(tokenizer, text.config)

    def check_layer(self, select_layer: int) -> None:
        normalise_layer(select_layer, self.num_tower_layers)

    # ---- [EOS] side ---------------------------------------------------------------------------

    def projection(self) -> tuple:
        return fold_params(self.source)

    @property
    def post_layernorm(self) -> torch.nn.Module:
        return self.source.post_layernorm

    def fold_weights(self) -> list:
        # the fold is computed from these (a new tensor per call, no stable id)
        return list(self.source.head.attention.parameters()) + [self.ln_weight, self.ln_bias]

    def text_length(self) -> int | None:
        return getattr(siglip_text_tower(self.text_model).config, "max_position_embeddings", None)

    def token_ids(self, enc) -> tuple:
        """As trained: padded to the tower's length, pooled at the last position, no mask."""
        side = getattr(self.tokenizer, "padding_side", "right")
        return pad_to_length(enc["input_ids"], self.text_length(), self.tokenizer.pad_token_id, side), None

    def encode_ids(self, input_ids, attention_mask) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("attention_mask: SigLIP's text tower is used without one (it was trained on "
                             "texts padded to max_position_embeddings); pass input_ids padded that way")
        return encode_siglip_text(self.text_model, input_ids)

    # ---- [CLS] side ---------------------------------------------------------------------------

    def contribution_inputs(self, end_state: torch.Tensor) -> dict:
        """The head's contribution from the LVLM tower's final state ``end_state`` [B, M, Dv]."""
        return dict(contribution=head_contribution(self.source, self.num_tower_layers, end_state,
                                                   self.head_contribution))

    def capture(self, pixel_values, *, select_layer: int, full_tower: bool = False,
                interpolate_pos_encoding: bool = False, stop_early: bool = True) -> VisionCapture:
        return capture_siglip(self.tower, self.source, pixel_values, select_layer=select_layer,
                              contribution=self.head_contribution, tied_last=self._tied_last,
                              interpolate_pos_encoding=interpolate_pos_encoding)

