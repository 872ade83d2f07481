"""CLIP towers: their own [CLS] and the paired CLIP text tower (docs/design.md sections 1 and 3).

[EOS] side: the CLIP text tower's projected [EOS] embedding, folded with ``visual_projection`` and the
tower's ``post_layernorm``. [CLS] side: the last layer's [CLS] query against the patch keys and values
(``cls_contribution``), computed from that layer's *input* (``end_layer = -2``) with the layer's own
``layer_norm1`` and q / k / v projections, so the layer's attention and MLP never run.
"""

from __future__ import annotations

import torch

from .capture import VisionCapture, capture_vision, last_layer_qkv, normalise_layer
from .scorer import Scorer
from .text import check_vocab_fits, highest_id
from .towers import projection_weight, text_tower, vision_tower

__all__ = ["ClipScorer", "check_tokenizer", "encode_text"]


def encode_text(text_model: torch.nn.Module, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[EOS] embeddings after the text projection: ``text_embeds`` [N, P].

    Parameters
    ----------
    text_model : torch.nn.Module
        CLIPTextModelWithProjection or CLIPModel (both hold ``text_model`` and
        ``text_projection``).
    input_ids, attention_mask : torch.Tensor
        [N, L] token ids; each row needs an ``eos_token_id`` (tokenizers add
        it): the tower pools at the first one.

    Returns
    -------
    torch.Tensor
        [N, P] ``text_embeds``.

    Examples
    --------
    >>> e = encode_text(clip, tok(["a cat"], return_tensors="pt").input_ids)  # doctest: +SKIP
    """
    tower = text_tower(text_model)
    if not hasattr(text_model, "text_projection"):
        raise TypeError(
            f"text_model: {type(text_model).__name__} has no text_projection; pass a "
            "CLIPTextModelWithProjection or a CLIPModel"
        )
    out = tower(input_ids=input_ids, attention_mask=attention_mask)
    pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]  # return_dict=False configs
    return text_model.text_projection(pooled)


def check_tokenizer(tokenizer, text_config) -> None:
    """Refuse a tokenizer that cannot be the text tower's own (say, the LLM's): every id it makes must be in the
    tower's vocabulary, and its [EOS] must be the token the tower pools at.

    The tower pools at the first ``eos_token_id`` of each row, except configs that keep the legacy
    ``eos_token_id = 2`` (the original OpenAI checkpoints), which pool at the highest id of the row: the
    tokenizer's [EOS] must then be the highest id it can produce (``highest_id``: ids may have gaps).
    """
    top = highest_id(tokenizer)
    if top is None:
        return  # not a Hugging Face tokenizer: nothing to compare
    check_vocab_fits(top, text_config, "CLIP")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("tokenizer: has no eos_token_id; the CLIP text tower pools at [EOS]")
    tower_eos = getattr(text_config, "eos_token_id", None)
    if tower_eos == 2:
        if eos != top:
            raise ValueError(f"tokenizer: [EOS] is id {eos}, but this CLIP text tower (legacy eos_token_id=2) pools "
                             f"at the highest id ({top}); pass the CLIP tokenizer of the same checkpoint")
    elif tower_eos is not None and eos != tower_eos:
        raise ValueError(f"tokenizer: [EOS] is id {eos}, but the CLIP text tower pools at eos_token_id={tower_eos}; "
                         "pass the CLIP tokenizer of the same checkpoint (not the LLM's)")


class ClipScorer(Scorer):
    """The scorer of a CLIP tower (see the module docstring).

    Parameters
    ----------
    tower : torch.nn.Module
        The CLIP vision transformer (``vision_tower``): its last layer's ``layer_norm1`` / q / k / v and its
        ``post_layernorm`` are read at every use. An engine with its own tower passes a module holding just
        ``encoder.layers[-1]`` and ``post_layernorm`` (loaded from the checkpoint).
    visual_projection : nn.Linear or torch.Tensor
        The [P, Dv] CLIP visual projection.
    text_model, tokenizer
        The CLIP text tower (CLIPModel / CLIPTextModelWithProjection) and its tokenizer, or None.
    vision_model : torch.nn.Module, optional
        What the caller passed for the tower (a CLIPModel, CLIPVisionModel ...), which ``capture`` runs.
    """

    has_cls = True
    end_layer = -2
    kind = "clip"
    # q of the last layer for the [CLS] row only (``last_layer_qkv``); off: every row, bit for bit the stock layer
    cls_query_only = False

    def __init__(self, tower, visual_projection, text_model=None, tokenizer=None, *, vision_model=None):
        super().__init__(text_model, tokenizer)
        self.tower = tower
        self.vision_model = tower if vision_model is None else vision_model
        self._visual_projection = visual_projection
        if text_model is not None:
            text_tower(text_model)  # type check now, not at the first call
        self._check_widths()
        if tokenizer is not None and text_model is not None:
            check_tokenizer(tokenizer, text_tower(text_model).config)

    @classmethod
    def from_model(cls, vision_model, text_model=None, tokenizer=None, visual_projection=None) -> ClipScorer:
        """From what a user holds: a CLIPModel / CLIPVisionModel[WithProjection] (+ ``visual_projection=``)."""
        tower = vision_tower(vision_model)
        if visual_projection is None:
            visual_projection = getattr(vision_model, "visual_projection", None)
        if visual_projection is None:
            raise ValueError(
                f"visual_projection: {type(vision_model).__name__} has no visual_projection; pass "
                "visual_projection= (the nn.Linear or [P, Dv] weight of CLIPModel / "
                "CLIPVisionModelWithProjection for the same checkpoint)")
        return cls(tower, visual_projection, text_model, tokenizer, vision_model=vision_model)

    def _check_widths(self) -> None:
        """The projection joins the vision tower's width Dv to the text tower's output P: check both ends now."""
        proj = projection_weight(self._visual_projection, "visual_projection")
        dv = self.post_layernorm.normalized_shape[0]
        if proj.shape[1] != dv:
            raise ValueError(f"visual_projection: a [P, {proj.shape[1]}] projection does not fit a vision tower of "
                             f"width {dv}; pass the projection of the CLIP checkpoint this tower comes from")
        text_proj = getattr(self.text_model, "text_projection", None)
        out = getattr(text_proj, "out_features", None)
        if out is not None and out != proj.shape[0]:
            raise ValueError(f"text_model: its text_projection gives {out}-d embeddings but visual_projection gives "
                             f"{proj.shape[0]}-d ones; pass the text tower of the same CLIP checkpoint")

    def check_layer(self, select_layer: int) -> None:
        normalise_layer(select_layer, len(self.tower.encoder.layers))

    # ---- [EOS] side ---------------------------------------------------------------------------

    def projection(self) -> tuple:
        return projection_weight(self._visual_projection, "visual_projection"), None

    @property
    def post_layernorm(self) -> torch.nn.Module:
        return self.tower.post_layernorm

    def fold_weights(self) -> list:
        return [self.projection()[0], self.ln_weight, self.ln_bias]

    def text_length(self) -> int | None:
        return getattr(text_tower(self.text_model).config, "max_position_embeddings", None)

    def encode_ids(self, input_ids, attention_mask) -> torch.Tensor:
        return encode_text(self.text_model, input_ids, attention_mask)

    # ---- [CLS] side ---------------------------------------------------------------------------

    def contribution_inputs(self, end_state: torch.Tensor) -> dict:
        """q / k / v of the last layer from its input ``end_state`` [B, 1 + M, Dv] ([CLS] first)."""
        last = self.tower.encoder.layers[-1]
        attn = last.self_attn
        q_cls, keys, values = last_layer_qkv(end_state, last.layer_norm1, attn.q_proj, attn.k_proj, attn.v_proj,
                                             cls_query_only=self.cls_query_only)
        return dict(q_cls=q_cls, keys=keys, values=values)

    def capture(self, pixel_values, *, select_layer: int, full_tower: bool = False,
                interpolate_pos_encoding: bool = False, stop_early: bool = True) -> VisionCapture:
        return capture_vision(self.vision_model, pixel_values, select_layer=select_layer,
                              stop_early=stop_early and not full_tower,
                              interpolate_pos_encoding=interpolate_pos_encoding)


class _LastLayerQKV(torch.nn.Module):
    """What the scorer reads of a CLIP tower's last layer: ``layer_norm1`` and the q / k / v projections."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.layer_norm1 = torch.nn.LayerNorm(width, eps=eps)
        self.self_attn = torch.nn.Module()
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self.self_attn, name, torch.nn.Linear(width, width, bias=True))


class ClipEngineParts(torch.nn.Module):
    """A CLIP scorer's modules for an engine that runs its own tower (vLLM): the last layer's ``layer_norm1`` and
    q / k / v, ``post_layernorm``, ``visual_projection`` and the text tower with its projection, built from the
    LVLM tower's vision config and the CLIP checkpoint's config. Loaded by name (``checkpoint_names``); the
    engine's tower runs up to the last layer's input, which ``contribution_inputs`` reads."""

    def __init__(self, vision_config, scorer_config):
        super().__init__()
        import transformers

        dv, eps = vision_config.hidden_size, vision_config.layer_norm_eps
        self.num_tower_layers = vision_config.num_hidden_layers
        self.encoder = torch.nn.Module()
        self.encoder.layers = torch.nn.ModuleList([_LastLayerQKV(dv, eps)])
        self.post_layernorm = torch.nn.LayerNorm(dv, eps=eps)
        self.visual_projection = torch.nn.Linear(dv, scorer_config.projection_dim, bias=False)
        text_config = scorer_config.text_config
        text_config.projection_dim = scorer_config.projection_dim  # CLIPConfig keeps it at the top level
        text_config._attn_implementation = "sdpa"
        self.text = transformers.CLIPTextModelWithProjection(text_config).eval()

    def scorer(self, tokenizer=None, head_contribution: str = "exact") -> ClipScorer:
        """The scorer on these modules (``head_contribution``: SigLIP's setting, nothing to choose for CLIP); q of the
        last layer for the [CLS] row only (the engine's tower is its own, so there is no stock bit to keep)."""
        scorer = ClipScorer(self, self.visual_projection, self.text, tokenizer)
        scorer.cls_query_only = True
        return scorer

    def checkpoint_names(self) -> dict:
        """{our parameter name: (where, its name there)}: "tower" names are relative to a vision tower
        (``vision_model.`` in the CLIP checkpoint; the LVLM checkpoint's own tower has them too, and its are
        used when present), "scorer" names are the CLIP checkpoint's."""
        last = self.num_tower_layers - 1
        names = {f"post_layernorm.{p}": ("tower", f"post_layernorm.{p}") for p in ("weight", "bias")}
        for p in ("weight", "bias"):
            names[f"encoder.layers.0.layer_norm1.{p}"] = ("tower", f"encoder.layers.{last}.layer_norm1.{p}")
            for proj in ("q_proj", "k_proj", "v_proj"):
                ours = f"encoder.layers.0.self_attn.{proj}.{p}"
                names[ours] = ("tower", f"encoder.layers.{last}.self_attn.{proj}.{p}")
        names["visual_projection.weight"] = ("scorer", "visual_projection.weight")
        for name, _ in self.text.named_parameters():
            names[f"text.{name}"] = ("scorer", name)  # text_model.*, text_projection.weight: CLIPModel's names
        return names
