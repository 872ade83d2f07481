"""What to keep: the settings every front end (``enable_litelvlm``, the vLLM plugin) validates the same way."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .._validate import min_votes_of

__all__ = ["CHOICES", "LiteLVLMSettings", "SIMILARITY_KEEP", "check_similarity_keep", "kept_count"]

SIMILARITY_KEEP = ("lowest", "highest")


def check_similarity_keep(value) -> str:
    if value not in SIMILARITY_KEEP:
        raise ValueError(f"similarity_keep must be one of {SIMILARITY_KEEP}, got {value!r}")
    return value


CHOICES = {"order": ("official", "spatial"), "missing_expressions": ("error", "cls"),
            "similarity_keep": SIMILARITY_KEEP,
            "budget": ("per_tile", "global"), "image_newline": ("kept_rows", "all", "none"),
            "video_budget": ("per_frame", "per_clip")}


def kept_count(n: int, num_retain: int | None = None, retain_ratio: float | None = None) -> int:
    """R': tokens kept of an item of ``n``. ``num_retain``: min(R, n). ``retain_ratio`` (for models whose token count
    varies with the image size: Qwen2.5-VL, Qwen3-VL): min(n, max(1, ceil(ratio n - 1e-9))) (the 1e-9 keeps
    ratio n exact where it is an integer up to rounding, e.g. 0.3 x 10). Exactly one of them is given."""
    if (num_retain is None) == (retain_ratio is None):
        raise ValueError("num_retain / retain_ratio: give exactly one of them")
    if retain_ratio is None:
        return min(num_retain, n)
    return min(n, max(1, math.ceil(retain_ratio * n - 1e-9)))


def _check_patches(value, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")


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
    # Qwen2.5-VL / Qwen3-VL (a paired scorer, docs/design.md section 12): a share of each image's tokens instead of
    # num_retain (then not in effect), and the scorer grid's bounds in patches (None: the scorer's native count, 4x it)
    retain_ratio: float | None = None
    scorer_min_patches: int | None = None
    scorer_max_patches: int | None = None

    def kept(self, n: int) -> int:
        """R' of an item of ``n`` tokens (``kept_count``): by ``retain_ratio`` when set, else ``num_retain``."""
        if self.retain_ratio is not None:
            return kept_count(n, retain_ratio=self.retain_ratio)
        return kept_count(n, num_retain=self.num_retain)

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
        q = self.retain_ratio
        if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1):
            raise ValueError(f"retain_ratio must be None or a number in (0, 1], got {q!r}")
        _check_patches(self.scorer_min_patches, "scorer_min_patches")
        _check_patches(self.scorer_max_patches, "scorer_max_patches")
        lo, hi = self.scorer_min_patches, self.scorer_max_patches
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"scorer_min_patches={lo} exceeds scorer_max_patches={hi}")
        return self
