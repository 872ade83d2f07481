"""Which scorer a vision tower gets: the one place that asks what kind of tower it is (docs/design.md 11.1).

A CLIP tower has a [CLS] token (``class_embedding``, ``pre_layrnorm``); a SigLIP tower (SigLIP, SigLIP 2)
has neither, and its pooled embedding comes from an attention-pooling head. Recognised by structure, so
SigLIP's first patch is never taken for [CLS].
"""

from __future__ import annotations

from .clip import ClipScorer
from .scorer import Scorer
from .siglip import SiglipScorer, head_source, is_siglip_tower
from .towers import find_tower

__all__ = ["scorer_for"]


def scorer_for(vision_model, text_model=None, tokenizer=None, *, visual_projection=None, vision_head=None,
               head_contribution: str = "exact", projection_from_text_model: bool = False) -> Scorer:
    """The scorer of ``vision_model``'s tower, built and checked (errors name the argument).

    ``text_model`` defaults to ``vision_model`` when that holds a text tower (a CLIPModel, a SiglipModel).
    ``projection_from_text_model``: a CLIP tower without ``visual_projection`` takes the text model's (a
    CLIPModel carries it; what ``enable_litelvlm`` does for LLaVA, whose tower has none).
    """
    tower = find_tower(vision_model, "vision")
    siglip = is_siglip_tower(tower)
    if text_model is None and hasattr(vision_model, "text_model") and (
            hasattr(vision_model, "text_projection") or siglip):
        text_model = vision_model
    if siglip:
        if visual_projection is not None:
            raise ValueError("visual_projection: SigLIP towers have none; the pooling head's value and output maps "
                             "play its part (they come from text_model= / vision_head=)")
        source, name = head_source(vision_model, text_model, vision_head)
        return SiglipScorer(tower, source, text_model, tokenizer, head_contribution=head_contribution,
                            vision_model=vision_model, source_name=name)
    if vision_head is not None:
        raise ValueError("vision_head: only SigLIP towers have an attention-pooling head; this one is CLIP's")
    if visual_projection is None and projection_from_text_model:
        visual_projection = getattr(text_model, "visual_projection", None)
    return ClipScorer.from_model(vision_model, text_model, tokenizer, visual_projection)
