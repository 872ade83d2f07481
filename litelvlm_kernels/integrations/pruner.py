"""``LiteLVLMPruner``: a Hugging Face CLIP tower + texts -> kept visual tokens.

Composes the three other jobs: ``_towers`` (where the parts are), ``capture``
(one vision forward run by hand), ``text`` (encode, group, fold, cache), then
calls ``litelvlm_kernels.prune``.

Thread safety: a pruner may be shared by threads for inference. The capture
keeps no state; the only shared mutable parts, the folded-text cache and the
tokenizer (a fast tokenizer's padding / truncation settings live in the
tokenizer object), are used under locks.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from typing import Any

import torch

from . import siglip as SG
from ._copy import deepcopy_fields
from ._towers import find_tower, projection_weight, text_tower, vision_tower
from .capture import VisionCapture, capture_vision, normalise_layer
from .text import (
    FoldCache,
    TextCondition,
    TextsArg,
    check_similarity_keep,
    check_tokenizer,
    encode_text,
    flatten_texts,
    group_counts,
    oriented,
    pad_groups,
    text_for_rows,
    tokenize_texts,
    weights_key,
)


@dataclasses.dataclass
class HFPruneResult:
    """indices [B, R'] int64 (into the M patch tokens), tokens [B, R', Dv] (kept
    rows of the stock select-layer features ``VisionCapture.features``, or None
    with return_tokens=False), num_similarity [B] int32, from_similarity [B, R']
    bool, the TextCondition used and, with ``return_capture=True``, the
    VisionCapture."""

    indices: torch.Tensor
    tokens: torch.Tensor | None
    num_similarity: torch.Tensor
    from_similarity: torch.Tensor
    text: TextCondition | None = None
    capture: VisionCapture | None = None
    num_tokens: int | None = None  # M, the patch tokens per row the indices point into (viz draws the grid from it)


class LiteLVLMPruner:
    """Text-guided visual token pruning for a Hugging Face CLIP or SigLIP vision tower.

    Parameters
    ----------
    vision_model : torch.nn.Module
        CLIP: CLIPModel, CLIPVisionModelWithProjection, or CLIPVisionModel with
        ``visual_projection=`` (LLaVA loads CLIPVisionModel, which has no
        projection: take it from the CLIPModel / CLIPVisionModelWithProjection
        of the same checkpoint). SigLIP (no [CLS]; ``siglip.py`` says what
        plays [EOS] and [CLS]): a SiglipVisionModel / SiglipModel, or an
        LVLM's SigLIP tower (its pooling head then comes from ``text_model``
        or ``vision_head``).
    text_model : torch.nn.Module, optional
        CLIPModel or CLIPTextModelWithProjection; SiglipModel (which also
        carries the vision head) or SiglipTextModel. Defaults to
        ``vision_model`` when that holds a text tower. May be None if you
        always pass ``text_embeds`` / a TextCondition.
    tokenizer : optional
        The tower's own tokenizer (CLIP's, SigLIP's), needed only for
        ``texts=`` (strings). SigLIP texts are padded to the text tower's
        ``max_position_embeddings`` and encoded without a mask, as trained.
    select_layer : int
        Hugging Face ``hidden_states`` index of the tokens that are scored and
        kept (LLaVA: -2).
    visual_projection : nn.Linear or torch.Tensor, optional
        The [P, Dv] CLIP visual projection, when ``vision_model`` has none.
    stop_early : bool
        Skip the unused tail of the vision tower (see ``capture_vision``; CLIP
        only: SigLIP's head reads the last layer's output).
    cache_size : int
        Number of folded text conditions kept (0 disables the cache).
    vision_head : torch.nn.Module, optional
        SigLIP only: the original SigLIP vision model with its attention-pooling
        head (``vision_use_head=True``), when neither ``text_model`` (a
        SiglipModel) nor ``vision_model`` holds it. Its post-layernorm, head and
        any layers the LVLM's tower dropped are used.
    head_contribution : "exact" or "heads"
        SigLIP only: the contribution to the pooled embedding,
        ``map_contribution``'s ``mode`` (``"heads"`` skips the output map).

    Raises
    ------
    TypeError, ValueError
        At construction, naming the argument: a tower that is not CLIP, a
        projection whose width is not the tower's (``visual_projection``) or
        the text tower's (``text_model``), a tokenizer that does not fit the
        text tower (``tokenizer``: an id beyond its ``vocab_size``, or another
        [EOS] id; e.g. the LLM's tokenizer passed by mistake), a SigLIP
        checkpoint of another width or fewer layers than the tower (named as
        the argument it came in: ``text_model`` or ``vision_head``).

    Examples
    --------
    >>> pruner = LiteLVLMPruner(clip, tokenizer=tok)                                 # doctest: +SKIP
    >>> pruner.prune(pixel_values, texts=["the man on the left"], num_retain=192).tokens.shape  # doctest: +SKIP
    torch.Size([1, 192, 1024])
    """

    def __init__(self, vision_model: torch.nn.Module, text_model: torch.nn.Module | None = None,
                 tokenizer: Any = None, *, select_layer: int = -2, visual_projection: Any = None,
                 stop_early: bool = True, cache_size: int = 64, vision_head: torch.nn.Module | None = None,
                 head_contribution: str = "exact"):
        self.vision_model = vision_model
        tower = find_tower(vision_model, "vision")
        if text_model is None and hasattr(vision_model, "text_model") and (
                hasattr(vision_model, "text_projection") or SG.is_siglip_tower(tower)):
            text_model = vision_model
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.select_layer = select_layer
        self.stop_early = stop_early
        self._cache = FoldCache(cache_size)
        self._tokenizer_lock = threading.Lock()
        self._warned_truncation = False
        if SG.is_siglip_tower(tower):
            self._init_siglip(tower, visual_projection, vision_head, head_contribution)
            return
        if vision_head is not None:
            raise ValueError("vision_head: only SigLIP towers have an attention-pooling head; this one is CLIP's")
        self._siglip = None
        self.tower = vision_tower(vision_model)
        if text_model is not None:
            text_tower(text_model)  # type check now, not at the first call
        normalise_layer(select_layer, len(self.tower.encoder.layers))
        if visual_projection is None:
            visual_projection = getattr(vision_model, "visual_projection", None)
        if visual_projection is None:
            raise ValueError(
                f"visual_projection: {type(vision_model).__name__} has no visual_projection; pass "
                "visual_projection= (the nn.Linear or [P, Dv] weight of CLIPModel / "
                "CLIPVisionModelWithProjection for the same checkpoint)"
            )
        self._visual_projection = visual_projection
        self._check_widths()
        if tokenizer is not None and text_model is not None:
            check_tokenizer(tokenizer, text_tower(text_model).config)

    def _init_siglip(self, tower, visual_projection, vision_head, head_contribution) -> None:
        """A SigLIP tower: the head's checkpoint (``siglip.head_source``) plays CLIP's projection and [CLS]."""
        if visual_projection is not None:
            raise ValueError("visual_projection: SigLIP towers have none; the pooling head's value and output maps "
                             "play its part (they come from text_model= / vision_head=)")
        if head_contribution not in ("exact", "heads"):
            raise ValueError(f"head_contribution must be 'exact' or 'heads', got {head_contribution!r}")
        self.tower = tower
        self._siglip, where = SG.head_source(self.vision_model, self.text_model, vision_head)
        SG.check_source(tower, self._siglip, where)
        self.head_contribution = head_contribution
        self._tied_last = SG.ties_last_hidden_state(self.vision_model)
        normalise_layer(self.select_layer, len(tower.encoder.layers))
        if self.text_model is not None:
            text = SG.siglip_text_tower(self.text_model)
            out = text.head.out_features
            if out != self._siglip.config.hidden_size:
                raise ValueError(f"text_model: its text head gives {out}-d embeddings but the SigLIP vision head "
                                 f"{self._siglip.config.hidden_size}-d ones; pass the same SigLIP checkpoint")
            if self.tokenizer is not None:
                SG.check_siglip_tokenizer(self.tokenizer, text.config)

    @property
    def has_cls(self) -> bool:
        """Whether the tower has a [CLS] token (CLIP) or not (SigLIP: every row is a patch)."""
        return self._siglip is None

    def _check_widths(self) -> None:
        """The projection joins the vision tower's width Dv to the text tower's output P: check both ends now."""
        proj = projection_weight(self._visual_projection, "visual_projection")
        dv = self.tower.config.hidden_size
        if proj.shape[1] != dv:
            raise ValueError(f"visual_projection: a [P, {proj.shape[1]}] projection does not fit a vision tower of "
                             f"width {dv}; pass the projection of the CLIP checkpoint this tower comes from")
        text_proj = getattr(self.text_model, "text_projection", None)
        out = getattr(text_proj, "out_features", None)
        if out is not None and out != proj.shape[0]:
            raise ValueError(f"text_model: its text_projection gives {out}-d embeddings but visual_projection gives "
                             f"{proj.shape[0]}-d ones; pass the text tower of the same CLIP checkpoint")

    def __deepcopy__(self, memo):
        """A pruner on the copied modules (through ``memo``, so a copied LVLM's pruner reads the copy's tower).

        The tokenizer is shared (it holds no weights), the locks are new and the cache starts empty (its
        entries are keyed by the original weights' identities and would never hit).
        """
        return deepcopy_fields(self, memo, keep=("tokenizer",),
                               fresh={"_tokenizer_lock": lambda _: threading.Lock(),
                                      "_cache": lambda cache: FoldCache(cache.size)})

    @property
    def cache_size(self) -> int:
        return self._cache.size

    # Read through the modules at every use, so .to(), .half() or
    # load_state_dict(assign=True) after construction are seen.
    def _projection(self) -> tuple:
        """(proj_weight, proj_bias) of the similarity, in one pass."""
        if self._siglip is not None:
            return SG.fold_params(self._siglip)
        return projection_weight(self._visual_projection, "visual_projection"), None

    @property
    def proj_weight(self) -> torch.Tensor:
        """[P, Dv] visual projection weight (SigLIP: W_o W_v of the pooling head, fp32)."""
        return self._projection()[0]

    @property
    def proj_bias(self) -> torch.Tensor | None:
        """[P] bias of the projection: None for CLIP, W_o b_v + b_o for SigLIP (fp32)."""
        return self._projection()[1]

    @property
    def _post_layernorm(self) -> torch.nn.Module:
        """The norm of the similarity: CLIP's post-layernorm, or the one the SigLIP head was trained behind."""
        return (self._siglip or self.tower).post_layernorm

    @property
    def ln_weight(self) -> torch.Tensor:
        return self._post_layernorm.weight

    @property
    def ln_bias(self) -> torch.Tensor:
        return self._post_layernorm.bias

    @property
    def ln_eps(self) -> float:
        return float(self._post_layernorm.eps)

    # ---- text ---------------------------------------------------------------

    def clear_cache(self) -> None:
        self._cache.clear()

    def _weights_key(self):
        if self._siglip is not None:  # the fold is computed from these (a new tensor per call, no stable id)
            ws = list(self._siglip.head.attention.parameters()) + [self.ln_weight, self.ln_bias]
        else:
            ws = [self.proj_weight, self.ln_weight, self.ln_bias]
        if self.text_model is not None:
            ws += list(self.text_model.parameters())
        return weights_key(ws)

    def _tokenize(self, texts):
        if self.tokenizer is None:
            raise ValueError("texts: strings need a tokenizer; pass tokenizer= or input_ids=")
        max_len = getattr(text_tower(self.text_model).config, "max_position_embeddings", None)
        enc, longest = tokenize_texts(self.tokenizer, texts, max_len, self._tokenizer_lock)
        if longest is not None and not self._warned_truncation:
            self._warned_truncation = True  # once per pruner: a server would repeat it per request
            warnings.warn(f"texts: an expression of {longest} tokens is truncated to the text tower's "
                          f"{max_len} positions (this warning is shown once)", stacklevel=4)
        if self._siglip is not None:  # as trained: padded to the tower's length, pooled at the last position
            side = getattr(self.tokenizer, "padding_side", "right")
            return SG.pad_to_length(enc["input_ids"], max_len, self.tokenizer.pad_token_id, side), None
        return enc["input_ids"], enc.get("attention_mask")

    def _encode(self, flat_texts, input_ids, attention_mask) -> torch.Tensor:
        """[N, P] text embeddings of strings or token ids (N = 0 gives an empty [0, P])."""
        if self.text_model is None:
            raise ValueError("text_model: needed to encode texts / input_ids (or pass text_embeds=)")
        if flat_texts is not None:
            input_ids, attention_mask = self._tokenize(flat_texts) if flat_texts else (None, None)
        if input_ids is None or input_ids.shape[0] == 0:  # no texts at all: T = 0, pure context selection
            proj = self.proj_weight  # SigLIP: a D^3 product, formed once
            return proj.new_zeros(0, proj.shape[0])
        dev = next(self.text_model.parameters()).device
        with torch.no_grad():
            if self._siglip is not None:
                if attention_mask is not None:
                    raise ValueError("attention_mask: SigLIP's text tower is used without one (it was trained on "
                                     "texts padded to max_position_embeddings); pass input_ids padded that way")
                return SG.encode_siglip_text(self.text_model, input_ids.to(dev))
            return encode_text(self.text_model, input_ids.to(dev),
                               None if attention_mask is None else attention_mask.to(dev))

    def prepare_text(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                     texts: TextsArg | None = None, *, text_embeds: torch.Tensor | None = None,
                     texts_per_image: Any = None, similarity_keep: str = "lowest") -> TextCondition:
        """Encode, group, pad and fold texts once. Cached for ``texts`` and ``input_ids``.

        Parameters
        ----------
        input_ids, attention_mask : torch.Tensor, optional
            [N, L] CLIP token ids.
        texts : str, list of str, or list of lists of str, optional
            One list per image for the nested form.
        text_embeds : torch.Tensor, optional
            [N, P], or [G, T, P] already grouped with every slot real.
        texts_per_image : None, int or sequence of int
            None (one group), an int (groups of that size) or one count per
            group; ignored for nested ``texts``.
        similarity_keep : "lowest" or "highest"
            Which end of each text's similarity ranking is kept: "lowest" is
            the paper's finding for CLIP (the referent scores LOW against
            [EOS]); "highest" the opposite, e.g. to test SigLIP, where the
            direction is unverified (docs/design.md section 10). Folded into
            the condition (w, b negated: s' = -s exactly).

        Returns
        -------
        TextCondition

        Examples
        --------
        >>> cond = pruner.prepare_text(texts=[["the cat"], ["a dog", "the red car"]])  # doctest: +SKIP
        >>> cond.num_texts.tolist()                                                      # doctest: +SKIP
        [1, 2]
        """
        from .. import fold_text

        if sum(x is not None for x in (input_ids, texts, text_embeds)) != 1:
            raise ValueError("prepare_text: pass exactly one of texts, input_ids, text_embeds")
        check_similarity_keep(similarity_keep)
        key, flat_texts = None, None
        if texts is not None:
            flat_texts, counts = flatten_texts(texts, texts_per_image)
            key = ("texts", tuple(flat_texts), tuple(counts))
        elif input_ids is not None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
                raise ValueError(f"input_ids: expected an [N, L] tensor, got "
                                 f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids!r}")
            if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
                raise TypeError(f"input_ids: expected integer token ids, got {input_ids.dtype}")
            counts = group_counts(input_ids.shape[0], texts_per_image)
            mask_key = None if attention_mask is None else tuple(attention_mask.flatten().tolist())
            key = ("ids", tuple(input_ids.shape), tuple(input_ids.flatten().tolist()), mask_key, tuple(counts))
        if key is not None and self.cache_size > 0:
            key = key + (similarity_keep, self._weights_key())
            hit = self._cache.get(key)
            if hit is not None:
                return hit

        if text_embeds is not None:
            if text_embeds.dim() == 3:
                grouped = text_embeds
                num = torch.full((grouped.shape[0],), grouped.shape[1], dtype=torch.int64)
            elif text_embeds.dim() == 2:
                counts = group_counts(text_embeds.shape[0], texts_per_image)
                grouped = pad_groups(text_embeds, counts)
                num = torch.tensor(counts, dtype=torch.int64)
            else:
                raise ValueError(f"text_embeds: expected [N, P] or [G, T, P], got shape {tuple(text_embeds.shape)}")
        else:
            flat = self._encode(flat_texts, input_ids, attention_mask)
            grouped = pad_groups(flat, counts) if max(counts) > 0 else flat.new_zeros(len(counts), 0, flat.shape[-1])
            num = torch.tensor(counts, dtype=torch.int64)

        proj, bias = self._projection()  # SigLIP's W_o W_v is a D^3 product: formed once per fold
        grouped = grouped.detach().to(proj.device)
        folded = fold_text(grouped, proj.detach(), self.ln_weight.detach(), self.ln_bias.detach(),
                           proj_bias=None if bias is None else bias.detach())
        dev = proj.device
        cond = TextCondition(text_embeds=grouped, num_texts=num.to(dev), folded=oriented(folded, similarity_keep),
                             similarity_keep=similarity_keep)
        self._cache.put(key if self.cache_size > 0 else None, cond)
        return cond

    # ---- vision -------------------------------------------------------------

    def capture(self, pixel_values: torch.Tensor, *, interpolate_pos_encoding: bool = False,
                full_tower: bool = False) -> VisionCapture:
        """The tower run as far as the method needs (see ``capture_vision`` and ``siglip.capture_siglip``);
        ``full_tower=True`` runs it to its end whatever ``stop_early`` says (the LVLM patch returns the tower's
        outputs as the stock model does)."""
        if self._siglip is not None:
            return SG.capture_siglip(self.tower, self._siglip, pixel_values, select_layer=self.select_layer,
                                     contribution=self.head_contribution, tied_last=self._tied_last,
                                     interpolate_pos_encoding=interpolate_pos_encoding)
        return capture_vision(self.vision_model, pixel_values, select_layer=self.select_layer,
                              stop_early=self.stop_early and not full_tower,
                              interpolate_pos_encoding=interpolate_pos_encoding)

    # ---- both ---------------------------------------------------------------

    def prune(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None, texts: TextsArg | None = None, *,
              text: TextCondition | None = None, text_embeds: torch.Tensor | None = None,
              num_retain: int = 192, texts_per_image: Any = None, share_text_across: int | None = None,
              multi_text: str | int = "union", k_per_text: int | None = None,
              order: str = "official", scale: float | None = None, return_tokens: bool = True,
              return_capture: bool = False, interpolate_pos_encoding: bool = False,
              similarity_keep: str = "lowest", full_tower: bool = False) -> HFPruneResult:
        """Images + texts -> kept indices and kept select-layer tokens.

        Parameters
        ----------
        pixel_values : torch.Tensor
            [B, 3, H, W]: images, tiles or video frames (one row each, each
            with its own budget).
        input_ids, attention_mask, texts, text_embeds, texts_per_image
            The texts, as ``prepare_text``; or a prepared ``text=TextCondition``.
        share_text_across : int, optional
            Rows per text group (default B // G).
        num_retain, multi_text, k_per_text, order, scale, return_tokens
            As ``litelvlm_kernels.prune`` (``scale``: CLIP only).
        similarity_keep : "lowest" or "highest"
            As ``prepare_text`` (ignored with ``text=``, which carries its own).
        return_capture : bool
            Attach the VisionCapture to the result.
        interpolate_pos_encoding : bool
            The vision tower's own argument (images of another size).
        full_tower : bool
            Run the tower to its end (``capture``).

        Returns
        -------
        HFPruneResult

        Examples
        --------
        >>> out = pruner.prune(pixel_values, texts=["the man on the left"], num_retain=192)  # doctest: +SKIP
        """
        from .. import prune as lite_prune

        if text is None:
            text = self.prepare_text(input_ids, attention_mask, texts, text_embeds=text_embeds,
                                     texts_per_image=texts_per_image, similarity_keep=similarity_keep)
        elif any(x is not None for x in (input_ids, texts, text_embeds)):
            raise ValueError("prune: pass either text= or texts / input_ids / text_embeds, not both")
        if self._siglip is not None and scale is not None:
            raise ValueError("scale: the [CLS] softmax scale has no meaning for a SigLIP tower (its head's "
                             "attention uses its own 1/sqrt(head_dim))")
        cap = self.capture(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, full_tower=full_tower)
        folded, num_texts = text_for_rows(text, cap.hidden.shape[0], share_text_across)
        if cap.contribution is not None:
            scores = dict(contribution=cap.contribution.detach())
        else:
            scores = dict(q_cls=cap.q_cls.detach(), keys=cap.keys.detach(), values=cap.values.detach())
        res = lite_prune(
            cap.hidden, folded, **scores,
            num_retain=num_retain, ln_eps=self.ln_eps, multi_text=multi_text, k_per_text=k_per_text,
            num_texts=num_texts, order=order, scale=scale,
            return_tokens=return_tokens and cap.stock_features is None,
        )
        tokens = res.tokens
        if return_tokens and cap.stock_features is not None:  # what the stock model feeds on (see features)
            tokens = torch.ops.litelvlm.gather_tokens(cap.stock_features, res.indices)
        return HFPruneResult(
            indices=res.indices, tokens=tokens, num_similarity=res.num_similarity,
            from_similarity=res.from_similarity, text=text, capture=cap if return_capture else None,
            num_tokens=cap.hidden.shape[1],
        )

    __call__ = prune
