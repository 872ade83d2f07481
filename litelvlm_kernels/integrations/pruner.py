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

from ._copy import deepcopy_fields
from ._towers import projection_weight, text_tower, vision_tower
from .capture import VisionCapture, capture_vision, normalise_layer
from .text import (
    FoldCache,
    TextCondition,
    TextsArg,
    check_tokenizer,
    encode_text,
    flatten_texts,
    group_counts,
    pad_groups,
    text_for_rows,
    tokenize_texts,
    weights_key,
)


@dataclasses.dataclass
class HFPruneResult:
    """indices [B, R'] int64 (into the M patch tokens), tokens [B, R', Dv] (kept
    select-layer tokens, or None with return_tokens=False), num_similarity [B]
    int32, from_similarity [B, R'] bool, the TextCondition used and, with
    ``return_capture=True``, the VisionCapture."""

    indices: torch.Tensor
    tokens: torch.Tensor | None
    num_similarity: torch.Tensor
    from_similarity: torch.Tensor
    text: TextCondition | None = None
    capture: VisionCapture | None = None
    num_tokens: int | None = None  # M, the patch tokens per row the indices point into (viz draws the grid from it)


class LiteLVLMPruner:
    """Text-guided visual token pruning for a Hugging Face CLIP vision tower.

    Parameters
    ----------
    vision_model : torch.nn.Module
        CLIPModel, CLIPVisionModelWithProjection, or CLIPVisionModel with
        ``visual_projection=`` (LLaVA loads CLIPVisionModel, which has no
        projection: take it from the CLIPModel / CLIPVisionModelWithProjection
        of the same checkpoint).
    text_model : torch.nn.Module, optional
        CLIPModel or CLIPTextModelWithProjection; defaults to ``vision_model``
        when that is a CLIPModel. May be None if you always pass
        ``text_embeds`` / a TextCondition.
    tokenizer : optional
        A CLIP tokenizer, needed only for ``texts=`` (strings).
    select_layer : int
        Hugging Face ``hidden_states`` index of the tokens that are scored and
        kept (LLaVA: -2).
    visual_projection : nn.Linear or torch.Tensor, optional
        The [P, Dv] CLIP visual projection, when ``vision_model`` has none.
    stop_early : bool
        Skip the unused tail of the vision tower (see ``capture_vision``).
    cache_size : int
        Number of folded text conditions kept (0 disables the cache).

    Raises
    ------
    TypeError, ValueError
        At construction, naming the argument: a tower that is not CLIP, a
        projection whose width is not the tower's (``visual_projection``) or
        the text tower's (``text_model``), a tokenizer that does not fit the
        text tower (``tokenizer``: vocabulary larger than its ``vocab_size``, or
        another [EOS] id; e.g. the LLM's tokenizer passed by mistake).

    Examples
    --------
    >>> pruner = LiteLVLMPruner(clip, tokenizer=tok)                                 # doctest: +SKIP
    >>> pruner.prune(pixel_values, texts=["the man on the left"], num_retain=192).tokens.shape  # doctest: +SKIP
    torch.Size([1, 192, 1024])
    """

    def __init__(self, vision_model: torch.nn.Module, text_model: torch.nn.Module | None = None,
                 tokenizer: Any = None, *, select_layer: int = -2, visual_projection: Any = None,
                 stop_early: bool = True, cache_size: int = 64):
        self.vision_model = vision_model
        self.tower = vision_tower(vision_model)
        if text_model is None and hasattr(vision_model, "text_model") and hasattr(vision_model, "text_projection"):
            text_model = vision_model
        self.text_model = text_model
        if text_model is not None:
            text_tower(text_model)  # type check now, not at the first call
        self.tokenizer = tokenizer
        self.select_layer = select_layer
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
        self.stop_early = stop_early
        self._cache = FoldCache(cache_size)
        self._tokenizer_lock = threading.Lock()
        self._warned_truncation = False

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
    @property
    def proj_weight(self) -> torch.Tensor:
        """[P, Dv] visual projection weight."""
        return projection_weight(self._visual_projection, "visual_projection")

    @property
    def ln_weight(self) -> torch.Tensor:
        return self.tower.post_layernorm.weight

    @property
    def ln_bias(self) -> torch.Tensor:
        return self.tower.post_layernorm.bias

    @property
    def ln_eps(self) -> float:
        return float(self.tower.post_layernorm.eps)

    # ---- text ---------------------------------------------------------------

    def clear_cache(self) -> None:
        self._cache.clear()

    def _weights_key(self):
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
        return enc["input_ids"], enc.get("attention_mask")

    def _encode(self, flat_texts, input_ids, attention_mask) -> torch.Tensor:
        """[N, P] text embeddings of strings or token ids (N = 0 gives an empty [0, P])."""
        if self.text_model is None:
            raise ValueError("text_model: needed to encode texts / input_ids (or pass text_embeds=)")
        if flat_texts is not None:
            input_ids, attention_mask = self._tokenize(flat_texts) if flat_texts else (None, None)
        if input_ids is None or input_ids.shape[0] == 0:  # no texts at all: T = 0, pure context selection
            return self.proj_weight.new_zeros(0, self.proj_weight.shape[0])
        dev = next(self.text_model.parameters()).device
        with torch.no_grad():
            return encode_text(self.text_model, input_ids.to(dev),
                               None if attention_mask is None else attention_mask.to(dev))

    def prepare_text(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                     texts: TextsArg | None = None, *, text_embeds: torch.Tensor | None = None,
                     texts_per_image: Any = None) -> TextCondition:
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
            key = key + (self._weights_key(),)
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

        dev = self.proj_weight.device
        grouped = grouped.detach().to(dev)
        folded = fold_text(grouped, self.proj_weight.detach(), self.ln_weight.detach(), self.ln_bias.detach())
        cond = TextCondition(text_embeds=grouped, num_texts=num.to(dev), folded=folded)
        self._cache.put(key if self.cache_size > 0 else None, cond)
        return cond

    # ---- vision -------------------------------------------------------------

    def capture(self, pixel_values: torch.Tensor, *, interpolate_pos_encoding: bool = False) -> VisionCapture:
        """The tower run as far as the method needs (see ``capture_vision``)."""
        return capture_vision(self.vision_model, pixel_values, select_layer=self.select_layer,
                              stop_early=self.stop_early, interpolate_pos_encoding=interpolate_pos_encoding)

    # ---- both ---------------------------------------------------------------

    def prune(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None, texts: TextsArg | None = None, *,
              text: TextCondition | None = None, text_embeds: torch.Tensor | None = None,
              num_retain: int = 192, texts_per_image: Any = None, share_text_across: int | None = None,
              multi_text: str | int = "union", k_per_text: int | None = None,
              order: str = "official", scale: float | None = None, return_tokens: bool = True,
              return_capture: bool = False, interpolate_pos_encoding: bool = False) -> HFPruneResult:
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
            As ``litelvlm_kernels.prune``.
        return_capture : bool
            Attach the VisionCapture to the result.
        interpolate_pos_encoding : bool
            The vision tower's own argument (images of another size).

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
                                     texts_per_image=texts_per_image)
        elif any(x is not None for x in (input_ids, texts, text_embeds)):
            raise ValueError("prune: pass either text= or texts / input_ids / text_embeds, not both")
        cap = self.capture(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        folded, num_texts = text_for_rows(text, cap.hidden.shape[0], share_text_across)
        res = lite_prune(
            cap.hidden, folded, cap.q_cls.detach(), cap.keys.detach(), cap.values.detach(),
            num_retain=num_retain, ln_eps=self.ln_eps, multi_text=multi_text, k_per_text=k_per_text,
            num_texts=num_texts, order=order, scale=scale, return_tokens=return_tokens,
        )
        return HFPruneResult(
            indices=res.indices, tokens=res.tokens, num_similarity=res.num_similarity,
            from_similarity=res.from_similarity, text=text, capture=cap if return_capture else None,
            num_tokens=cap.hidden.shape[1],
        )

    __call__ = prune
