"""Merged token grids (Qwen2.5-VL, Qwen3-VL): pixel rows, token regions and the paired scorer's grid.

Torch only (docs/design.md section 12); the transformers front end and the vLLM plugin call the same functions,
so both give a paired scorer the same image and map its signals to the same tokens.

*The LVLM's grid.* The processor resizes an image to (gh p, gw p) pixels (``smart_resize``: a multiple of
m p per side), cuts it into gh x gw patches of p x p pixels and repeats it ``temporal`` times (the tower's 3-D
patches); every m x m block of patches (m = ``spatial_merge_size`` = 2) becomes ONE LLM token. So an image is
an h x w grid of tokens, h = gh / m, w = gw / m (``image_grid_thw = [1, gh, gw]``), and token (r, c), number
r w + c in raster order, covers the square of m p pixels at row r, column c: 28 x 28 px for Qwen2.5-VL
(p = 14), 32 x 32 px for Qwen3-VL (p = 16). ``pixel_values`` holds the patches block-major (the m^2 patches of
token (r, c) are rows m^2 (r w + c) .. + m^2 - 1), each row C x temporal x p x p values, normalised with the
processor's mean and std; ``unpatchify`` undoes it.

*The scorer's grid* (``scorer_grid``): the scorer (a CLIP or SigLIP of patch q and native grid G x G,
M0 = G^2 patches) sees the same image resized by ONE factor s to (h' q, w' q) pixels, no crop, with
h' w' ~ clamp(N, p_min, p_max) patches, N = h w. Within [p_min, p_max] the grids coincide (h' = h,
w' = w): one scorer patch per token.

*The map* (``axis_overlap``, ``resample``): token (r, c) covers [r/h, (r+1)/h) x [c/w, (c+1)/w) of the unit
image, scorer patch (a, b) covers [a/h', (a+1)/h') x [b/w', (b+1)/w'). A token's signal is the area-weighted
mean of the patches its region overlaps, weight = overlap area / token area. The weights factor per axis:
W = Ky (x) Kx with Ky [h, h'], Kx [w, w'] (rows sum to 1), exact rationals computed on the integer grid of
lcm(h, h'). ``F.interpolate(mode="area")`` / ``adaptive_avg_pool2d`` are not this map when the ratio is not
an integer (they round bin edges to whole patches).
"""

from __future__ import annotations

import math

import torch

__all__ = ["area_matrix", "axis_overlap", "merged_grid", "resample", "scorer_grid", "tokens_per_image",
           "unpatchify"]


def merged_grid(grid_thw, merge: int) -> tuple:
    """(t, h, w): temporal patches and the h x w token grid of one item (``image_grid_thw`` row [t, gh, gw])."""
    t, gh, gw = (int(x) for x in grid_thw)
    if gh % merge or gw % merge:
        raise ValueError(f"image_grid_thw: a {gh} x {gw} patch grid is not a multiple of spatial_merge_size={merge}")
    return t, gh // merge, gw // merge


def tokens_per_image(grid_thw: torch.Tensor, merge: int) -> list:
    """LLM tokens of each image: t h w (the stock placeholder count, ``grid.prod() // merge**2``)."""
    return [int(row.prod()) // merge ** 2 for row in grid_thw]


def unpatchify(rows: torch.Tensor, grid_thw, *, patch: int, merge: int, temporal: int,
               channels: int = 3) -> torch.Tensor:
    """The resized image an LVLM sees, from its pixel rows: [gh gw, C temporal p p] -> [C, gh p, gw p].

    ``rows`` are ONE image's rows of ``pixel_values`` (still normalised with the LVLM processor's mean / std);
    an image repeats its frame ``temporal`` times, frame 0 is returned. Videos (t > 1) are not images: refused.
    """
    t, gh, gw = (int(x) for x in grid_thw)
    if t != 1:
        raise ValueError(f"image_grid_thw: t={t} temporal patches; only still images (t = 1) have one frame to score")
    want = (gh * gw, channels * temporal * patch * patch)
    if tuple(rows.shape) != want:
        raise ValueError(f"pixel_values: {tuple(rows.shape)} rows for a {gh} x {gw} patch grid; expected {want}")
    x = rows.reshape(gh // merge, gw // merge, merge, merge, channels, temporal, patch, patch)[..., 0, :, :]
    return x.permute(4, 0, 2, 5, 1, 3, 6).reshape(channels, gh * patch, gw * patch)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def scorer_grid(h: int, w: int, min_patches: int, max_patches: int) -> tuple:
    """(h', w'): the scorer's patch grid for an h x w token grid (module docstring).

    target = clamp(h w, min_patches, max_patches); s = sqrt(target / (h w)); h' = max(1, floor(h s + 1/2)),
    w' likewise (half up, the same in every engine). s = 1 (the token grid itself) whenever h w is within the
    bounds. One factor for both axes keeps the aspect ratio up to rounding (at most half a patch per side).
    """
    _positive_int(h, "h")
    _positive_int(w, "w")
    lo, hi = _positive_int(min_patches, "scorer_min_patches"), _positive_int(max_patches, "scorer_max_patches")
    if lo > hi:
        raise ValueError(f"scorer_min_patches={lo} exceeds scorer_max_patches={hi}")
    n = h * w
    target = min(max(n, lo), hi)
    if target == n:
        return h, w
    s = math.sqrt(target / n)
    return max(1, math.floor(h * s + 0.5)), max(1, math.floor(w * s + 0.5))


def axis_overlap(n_tok: int, n_pat: int) -> torch.Tensor:
    """[n_tok, n_pat] float64: the length of token cell i's overlap with patch cell a, in units of one token cell
    (rows sum to 1). Exact: lengths are integers on the lcm(n_tok, n_pat) grid, divided once."""
    lcm = n_tok * n_pat // math.gcd(n_tok, n_pat)
    i = torch.arange(n_tok)[:, None]
    a = torch.arange(n_pat)[None, :]
    lo = torch.maximum(i * (lcm // n_tok), a * (lcm // n_pat))
    hi = torch.minimum((i + 1) * (lcm // n_tok), (a + 1) * (lcm // n_pat))
    return (hi - lo).clamp(min=0).double() / (lcm // n_tok)


def area_matrix(h: int, w: int, hp: int, wp: int) -> torch.Tensor:
    """W [h w, h' w'] float64 = kron(Ky, Kx): token r w + c <- patch a w' + b (dense; ``resample`` applies it per
    axis instead). For documentation and tests."""
    return torch.kron(axis_overlap(h, hp), axis_overlap(w, wp))


def _apply_axis(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """sum_a k[i, a] x[..., a] over the (contiguous) nonzeros of each row of k only: [..., n'] -> [..., n].

    Only overlapping patches enter a token's sum, so a NaN or inf patch reaches the tokens it overlaps and no
    other (a dense product would spread it through 0 * NaN); the 1:1 case returns x itself, value for value.
    """
    nz = k > 0
    count = nz.sum(1)
    width = int(count.max())
    start = nz.to(torch.int64).argmax(1)
    offs = torch.arange(width)
    idx = (start[:, None] + offs).clamp(max=k.shape[1] - 1)
    wts = k.gather(1, idx).masked_fill(offs[None] >= count[:, None], 0.0).to(x.device)
    idx = idx.to(x.device)
    picked = x[..., idx]  # [..., n, width]
    return torch.where(wts > 0, picked * wts, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)


def resample(signal: torch.Tensor, h: int, w: int, hp: int, wp: int) -> torch.Tensor:
    """Per-patch signals [..., h' w'] (raster) -> per-token area-weighted means [..., h w] fp32.

    Applied per axis (columns, then rows) in float64 with the exact weights of ``axis_overlap``; the result is
    rounded to fp32 once. (h', w') == (h, w) returns the signal itself (cast to fp32).
    """
    if signal.shape[-1] != hp * wp:
        raise ValueError(f"signal: last dimension {signal.shape[-1]} is not the scorer grid's {hp} x {wp}")
    if (hp, wp) == (h, w):
        return signal.float()
    x = signal.double().reshape(*signal.shape[:-1], hp, wp)
    x = _apply_axis(x, axis_overlap(w, wp))                                  # [..., h', w]
    x = _apply_axis(x.transpose(-1, -2), axis_overlap(h, hp)).transpose(-1, -2)  # [..., h, w]
    return x.reshape(*signal.shape[:-1], h * w).float()
