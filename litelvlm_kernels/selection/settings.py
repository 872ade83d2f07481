"""What to keep: the settings every front end (``enable_litelvlm``, the vLLM plugin) validates the same way."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._validate import min_votes_of

__all__ = ["CHOICES", "LiteLVLMSettings", "SIMILARITY_KEEP", "check_similarity_keep"]

SIMILARITY_KEEP = ("lowest", "highest")


def check_similarity_keep(value) -> str:
    if value not in SIMILARITY_KEEP:
        raise ValueError(f"similarity_keep must be one of {SIMILARITY_KEEP}, got {value!r}")
    return value


CHOICES = {"order": ("official", "spatial"), "missing_expressions": ("error", "cls"),
            "similarity_keep": SIMILARITY_KEEP,
            "budget": ("per_tile", "global"), "image_newline": ("kept_rows", "all", "none"),
            "video_budget": ("per_frame", "per_clip")}


@dataclasses.dataclass
class LiteLVLMSettings:
    """What to keep. ``num_retain``: visual tokens kept per image (LLaVA-1.5), per tile or image
    (LLaVA-NeXT, see ``budget``), per frame or clip (video, see ``video_budget``)."""

    num_retain: int = 192
    multi_text: Any = "union"
    k_per_text: int | None = None
    order: str = "official"
    missing_expressions: str = "error"
    budget: str = "per_tile"
    image_newline: str = "kept_rows"
    video_budget: str = "per_frame"
    similarity_keep: str = "lowest"  # the paper's CLIP finding; unverified for SigLIP (docs/design.md section 10)

    def check(self) -> LiteLVLMSettings:
        r = self.num_retain
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"num_retain must be an int, got {type(r).__name__}")
        if r <= 0:
            raise ValueError(f"num_retain must be > 0, got {r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        min_votes_of(self.multi_text)  # the library's one rule for multi_text
        if self.k_per_text is not None and (isinstance(self.k_per_text, bool) or not isinstance(self.k_per_text, int)
                                            or self.k_per_text <= 0):
            raise ValueError(f"k_per_text must be None or an int > 0, got {self.k_per_text!r}")
        return self
