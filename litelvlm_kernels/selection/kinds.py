"""Which scorer a vision tower gets: the one place that asks what kind of tower it is (docs/design.md 11.1).

A CLIP tower has a [CLS] token (``class_embedding``, ``pre_layrnorm``); a SigLIP tower (SigLIP, SigLIP 2)
has neither, and its pooled embedding comes from an attention-pooling head. Recognised by structure, so
SigLIP's first patch is never taken for [CLS].
"""

from __future__ import annotations

import torch

from .clip import ClipScorer
from .scorer import Scorer
from .siglip import SiglipScorer, head_source, is_siglip_tower
from .towers import find_tower

__all__ = ["check_scorer_tokenizer", "engine_parts_for", "is_siglip_config", "paired_scorer_for", "scorer_for"]


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


def paired_scorer_for(scorer_model, tokenizer=None, *, image_mean, image_std, patch: int, merge: int,
                      temporal: int, scorer_image_mean=None, scorer_image_std=None,
                      head_contribution: str = "exact") -> Scorer:
    """A paired scorer (``paired.PairedScorer``, docs/design.md section 12) for an LVLM whose tower has neither
    [CLS] nor a pooling head: ``scorer_model`` (a CLIPModel, or a SiglipModel with its head) is the checkpoint
    that scores the image, of the kind ``scorer_for`` finds; the other arguments describe the LVLM's pixels."""
    from .paired import PairedScorer

    inner = scorer_for(scorer_model, None, tokenizer, head_contribution=head_contribution)
    return PairedScorer(inner, image_mean=image_mean, image_std=image_std, patch=patch, merge=merge,
                        temporal=temporal, scorer_image_mean=scorer_image_mean, scorer_image_std=scorer_image_std)


# ---- engines that run their own tower (vLLM): the kind from the configs -----------------------------------

def is_siglip_config(vision_config) -> bool:
    """Whether an LVLM's vision config is a SigLIP tower's (no [CLS]); else a CLIP tower's."""
    return "siglip" in str(getattr(vision_config, "model_type", ""))


def engine_parts_for(vision_config, scorer_config) -> torch.nn.Module:
    """The scorer's modules for an engine's tower of ``vision_config``, to be loaded from the checkpoint whose
    config is ``scorer_config`` (``.scorer()`` builds the scorer on them; ``.checkpoint_names()`` names them)."""
    siglip = is_siglip_config(vision_config)
    want = "siglip" if siglip else "clip"
    if scorer_config.model_type != want:
        kind = "SigLIP" if siglip else "CLIP"
        raise ValueError(f"litelvlm.scorer: a {scorer_config.model_type!r} checkpoint for a {kind} tower; name the "
                         f"{kind} checkpoint the LVLM's tower comes from")
    if siglip:
        from .siglip_parts import SiglipEngineParts

        return SiglipEngineParts(vision_config, scorer_config)
    from .clip import ClipEngineParts

    return ClipEngineParts(vision_config, scorer_config)


def check_scorer_tokenizer(tokenizer, scorer_config) -> None:
    """The scorer checkpoint's tokenizer against its text tower (CLIP's or SigLIP's rules)."""
    from .clip import check_tokenizer
    from .siglip import check_siglip_tokenizer

    check = check_siglip_tokenizer if scorer_config.model_type == "siglip" else check_tokenizer
    check(tokenizer, scorer_config.text_config)


def engine_token_ids(scorer_config, tokenizer, texts, lock) -> torch.Tensor:
    """[N, L] int64 ids of ``texts`` as the scorer's text tower takes them, for an engine that tokenises apart
    from the model (vLLM's processor): CLIP's padded on the right and cut to its length; SigLIP's padded to its
    length, as trained (the same rules as ``Scorer.tokenize``)."""
    from .text import tokenize_texts

    max_len = getattr(scorer_config.text_config, "max_position_embeddings", None)
    if scorer_config.model_type == "siglip":
        from .siglip import pad_to_length

        enc, _ = tokenize_texts(tokenizer, texts, max_len, lock)
        side = getattr(tokenizer, "padding_side", "right")
        return pad_to_length(enc["input_ids"], max_len, tokenizer.pad_token_id, side).to(torch.int64)
    enc, _ = tokenize_texts(tokenizer, texts, max_len, lock, padding_side="right")
    return enc["input_ids"].to(torch.int64)
