"""``LiteLVLMPruner``: a Hugging Face vision tower + texts -> kept visual tokens.

A thin composition: a scorer (``selection.kinds.scorer_for``: CLIP or SigLIP, what plays [EOS] and [CLS],
docs/design.md 11.1), a ``selection.folding.TextFolder`` (encode, group, fold, cache) and
``litelvlm_kernels.prune``.

Thread safety: a pruner may be shared by threads for inference. The capture keeps no state; the only
shared mutable parts, the folded-text cache and the tokenizer (a fast tokenizer's padding / truncation
settings live in the tokenizer object), are used under locks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .._copy import deepcopy_fields
from ..selection.capture import VisionCapture
from ..selection.folding import TextFolder
from ..selection.kinds import scorer_for
from ..selection.text import TextCondition, TextsArg, text_for_rows


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


def _from_scorer(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.scorer, name), doc=doc)


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
    projection_from_text_model : bool
        CLIP only: without ``visual_projection``, take ``text_model``'s (a
        CLIPModel carries it; what ``enable_litelvlm`` does).

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
                 head_contribution: str = "exact", projection_from_text_model: bool = False):
        self.vision_model = vision_model
        self.scorer = scorer_for(vision_model, text_model, tokenizer, visual_projection=visual_projection,
                                 vision_head=vision_head, head_contribution=head_contribution,
                                 projection_from_text_model=projection_from_text_model)
        self.scorer.check_layer(select_layer)
        self.select_layer = select_layer
        self.stop_early = stop_early
        self.folder = TextFolder(self.scorer, cache_size)

    def __deepcopy__(self, memo):
        """A pruner on the copied modules (through ``memo``, so a copied LVLM's pruner reads the copy's tower).

        The tokenizer is shared (it holds no weights), the locks are new and the cache starts empty (its
        entries are keyed by the original weights' identities and would never hit).
        """
        return deepcopy_fields(self, memo)

    # Read through the scorer's modules at every use, so .to(), .half() or load_state_dict(assign=True) after
    # construction are seen.
    text_model = _from_scorer("text_model", "The text tower (or None).")
    tokenizer = _from_scorer("tokenizer", "The text tower's tokenizer (or None).")
    tower = _from_scorer("tower", "The vision transformer the capture runs.")
    has_cls = _from_scorer("has_cls", "Whether the tower has a [CLS] token (CLIP) or not (SigLIP: every row a patch).")
    ln_weight = _from_scorer("ln_weight", "The similarity's layernorm weight.")
    ln_bias = _from_scorer("ln_bias", "The similarity's layernorm bias.")
    ln_eps = _from_scorer("ln_eps", "The similarity's layernorm eps.")
    proj_weight = property(lambda self: self.scorer.projection()[0],
                           doc="[P, Dv] visual projection weight (SigLIP: W_o W_v of the pooling head, fp32).")
    proj_bias = property(lambda self: self.scorer.projection()[1],
                         doc="[P] bias of the projection: None for CLIP, W_o b_v + b_o for SigLIP (fp32).")
    cache_size = property(lambda self: self.folder.cache_size, doc="Folded text conditions kept.")

    # ---- text ---------------------------------------------------------------

    def clear_cache(self) -> None:
        self.folder.clear()

    def prepare_text(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                     texts: TextsArg | None = None, *, text_embeds: torch.Tensor | None = None,
                     texts_per_image: Any = None, similarity_keep: str = "lowest") -> TextCondition:
        """Encode, group, pad and fold texts once, cached by content (``selection.folding.TextFolder.prepare``
        documents the arguments; ``similarity_keep="highest"`` keeps the top of each ranking instead).

        >>> pruner.prepare_text(texts=[["the cat"], ["a dog", "the red car"]]).num_texts.tolist()  # doctest: +SKIP
        [1, 2]
        """
        return self.folder.prepare(input_ids, attention_mask, texts, text_embeds=text_embeds,
                                   texts_per_image=texts_per_image, similarity_keep=similarity_keep)

    # ---- vision -------------------------------------------------------------

    def capture(self, pixel_values: torch.Tensor, *, interpolate_pos_encoding: bool = False,
                full_tower: bool = False) -> VisionCapture:
        """The tower run as far as the method needs (see ``capture_vision`` and ``selection.siglip.capture_siglip``);
        ``full_tower=True`` runs it to its end whatever ``stop_early`` says (the LVLM patch returns the tower's
        outputs as the stock model does)."""
        return self.scorer.capture(pixel_values, select_layer=self.select_layer, full_tower=full_tower,
                                   interpolate_pos_encoding=interpolate_pos_encoding, stop_early=self.stop_early)

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
        if not self.has_cls and scale is not None:
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
