"""What a paired scorer costs next to the LVLM's own vision tower: MACs of ViT forwards (docs/design.md 12.4).

Pure Python (``paired_cost`` imports the grid rule, hence torch). A ViT layer fed ``n`` patches of width ``d``
(MLP width ``f`` with ``mats`` matrices: 2 for GELU, 3 for SwiGLU) costs ``n (4 d^2 + mats d f) + 2 n ctx d``
MACs: q / k / v / o projections, the MLP, and the attention scores and weighted sum over ``ctx`` keys (``n``
with full attention, the window's patches with window attention). Patch embedding (one ``C T p^2 x d``
product per patch) and each merger's MLP per merged token are counted; norms, softmax and activations are not
(as ``litelvlm_kernels.flops``).

The paired scorer (CLIP, [CLS] included) runs its tower up to the last layer's input and only the q / k / v
projections of its last layer (``capture_vision``: the similarity reads layer L - 2's output, the contribution
the last layer's q / k / v); its text tower runs once per expression and is not counted.
"""

from __future__ import annotations

import dataclasses

__all__ = ["TOWERS", "VitConfig", "paired_cost", "tower_macs"]


@dataclasses.dataclass(frozen=True)
class VitConfig:
    """A vision tower's shape: ``merge`` x ``merge`` patches per LLM token, ``mergers`` MLPs (in, hidden, out) run per
    merged token, ``window`` patches per attention window except in ``full_layers`` layers (None: full attention
    everywhere), ``cls``: a [CLS] token is added."""

    depth: int
    width: int
    mlp: int
    mats: int
    patch: int
    channels_in: int = 3
    merge: int = 1
    window: int | None = None
    full_layers: int = 0
    mergers: tuple = ()
    cls: bool = False
    native: int = 0  # the scorer's native patch count (CLIP: (image_size / patch)^2)


TOWERS = {
    # Qwen2.5-VL-7B: 32 layers of 1280, SwiGLU 3420, windows of 8 x 8 patches (112 px) but in 4 full layers,
    # Conv3d patch embed over 2 frames x 14 x 14, merger 5120 -> 5120 -> 3584 per token
    "qwen2.5-vl-7b": VitConfig(32, 1280, 3420, 3, 14, channels_in=3 * 2, merge=2, window=64, full_layers=4,
                               mergers=((5120, 5120, 3584),)),
    # Qwen3-VL-8B: 27 layers of 1152, GELU 4304, full attention, patch 16 over 2 frames, merger + 3 DeepStack
    # mergers, each 4608 -> 4608 -> 4096 per token
    "qwen3-vl-8b": VitConfig(27, 1152, 4304, 2, 16, channels_in=3 * 2, merge=2, mergers=((4608, 4608, 4096),) * 4),
    "clip-vit-b16": VitConfig(12, 768, 3072, 2, 16, cls=True, native=196),
    "clip-vit-l14-336": VitConfig(24, 1024, 4096, 2, 14, cls=True, native=576),
}


def _layer_macs(cfg: VitConfig, n: int, ctx: int) -> int:
    return n * (4 * cfg.width ** 2 + cfg.mats * cfg.width * cfg.mlp) + 2 * n * ctx * cfg.width


def tower_macs(cfg: VitConfig, patches: int, *, scorer: bool = False) -> int:
    """MACs of one image of ``patches`` patches through ``cfg`` (``scorer``: as the paired scorer runs it)."""
    n = patches + (1 if cfg.cls else 0)
    macs = patches * cfg.channels_in * cfg.patch ** 2 * cfg.width
    layers = cfg.depth - 1 if scorer else cfg.depth
    windowed = 0 if cfg.window is None else layers - cfg.full_layers
    macs += windowed * _layer_macs(cfg, n, min(cfg.window or n, n)) + (layers - windowed) * _layer_macs(cfg, n, n)
    if scorer:
        macs += n * 3 * cfg.width ** 2  # the last layer's q / k / v only
    tokens = patches // cfg.merge ** 2
    return macs + sum(tokens * (a * b + b * c) for a, b, c in cfg.mergers)


def paired_cost(lvlm: str, scorer: str, h: int, w: int, min_patches: int | None = None,
                max_patches: int | None = None) -> dict:
    """The scorer's share of an image of h x w LVLM tokens: ``{"tokens", "scorer_grid", "lvlm_macs",
    "scorer_macs", "share"}``, the grid by the paired scorer's rule (``merged_grid.scorer_grid``; bounds default
    to the scorer's native count and 4x it)."""
    from ..selection.layouts.merged_grid import scorer_grid  # the rule itself (imports torch)

    lv, sc = TOWERS[lvlm], TOWERS[scorer]
    lo = sc.native if min_patches is None else min_patches
    hi = max(4 * sc.native, lo) if max_patches is None else max_patches
    n = h * w
    grid = scorer_grid(h, w, lo, hi)
    lvlm_macs = tower_macs(lv, n * lv.merge ** 2)
    scorer_macs = tower_macs(sc, grid[0] * grid[1], scorer=True)
    return {"tokens": n, "scorer_grid": grid, "lvlm_macs": lvlm_macs, "scorer_macs": scorer_macs,
            "share": scorer_macs / lvlm_macs}
