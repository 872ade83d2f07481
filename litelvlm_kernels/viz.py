"""Draw which visual tokens a pruning kept, over the image, to a PNG.

Each of the M patch tokens is a cell of a ``rows x cols`` grid laid over the
image (24 x 24 for CLIP ViT-L/14-336's 576 tokens; row-major, as CLIP orders
patches). Kept tokens that came from the text-similarity set S are tinted
orange, kept context tokens (recovered by [CLS] contribution) blue, and
dropped cells are dimmed::

    import litelvlm_kernels as lk
    from litelvlm_kernels import viz
    out = lk.prune(hidden, text, q_cls, keys, values, num_retain=192)
    viz.save_kept_tokens("kept.png", image, out, grid=(24, 24))        # row 0; row=b for others
    # or explicitly: viz.save_kept_tokens("kept.png", image, out.indices[0], out.from_similarity[0])

``image`` is what the tower saw (after CLIP's resize and centre crop):
an [H, W, 3] or [3, H, W] array or tensor, uint8 or float in [0, 1] (an
[H, W] array is taken as grey), or None for a plain grey canvas. The PNG has
the image's pixel size (times ``scale``), plus a caption strip of
``CAPTION_PX`` rows at the bottom when ``caption=True``.

PNG writing needs matplotlib (the ``plot`` extra: ``pip install
"litelvlm_kernels[plot]"``); without it, Pillow is used if installed (no
caption). ``render`` (the RGB array) needs only numpy.

CLI demo on a synthetic image (uses ``litelvlm_kernels.prune``)::

    python -m litelvlm_kernels.viz --out demo.png [--retain 144] [--texts 2]
"""

from __future__ import annotations

import argparse
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["SIMILARITY_COLOR", "CONTEXT_COLOR", "CAPTION_PX", "token_states", "render", "save_png",
           "save_kept_tokens", "demo", "main"]

SIMILARITY_COLOR = (255, 140, 0)   # orange: kept by text similarity (the set S)
CONTEXT_COLOR = (30, 144, 255)     # blue: kept by [CLS] contribution (context recovery)
CAPTION_PX = 28                    # height of the caption strip

DROPPED, CONTEXT, SIMILARITY = 0, 1, 2


def _to_numpy(x):
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _one_row(indices, from_similarity, row: int):
    """Accept a PruneResult / HFPruneResult, or [R] / [B, R] arrays; return one row of each."""
    if hasattr(indices, "indices") and hasattr(indices, "from_similarity"):
        if from_similarity is None:
            from_similarity = indices.from_similarity
        indices = indices.indices
    idx = _to_numpy(indices)
    if idx.ndim == 2:
        idx = idx[row]
    elif idx.ndim != 1:
        raise ValueError(f"indices must be [R] or [B, R], got shape {idx.shape}")
    fs = _to_numpy(from_similarity)
    if fs is not None and fs.ndim == 2:
        fs = fs[row]
    return idx, fs


def token_states(indices, from_similarity=None, num_tokens: int = 576, *, row: int = 0) -> np.ndarray:
    """[num_tokens] int8: 0 dropped, 1 kept context token, 2 kept similarity token.

    indices: kept token indices, [R] or [B, R] (then row ``row`` is drawn), or a
    PruneResult / HFPruneResult (its indices and from_similarity); from_similarity:
    the matching bool (None: every kept token counts as context).
    """
    indices, from_similarity = _one_row(indices, from_similarity, row)
    idx = indices.reshape(-1).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_tokens):
        raise ValueError(f"indices must lie in [0, {num_tokens}), got values in [{idx.min()}, {idx.max()}]")
    states = np.zeros(num_tokens, dtype=np.int8)
    if from_similarity is None:
        states[idx] = CONTEXT
    else:
        fs = _to_numpy(from_similarity).reshape(-1).astype(bool)
        if fs.shape != idx.shape:
            raise ValueError(f"from_similarity must match indices: {fs.shape} vs {idx.shape}")
        states[idx] = np.where(fs, SIMILARITY, CONTEXT)
    return states


def _grid(grid, num_tokens: Optional[int]) -> Tuple[int, int]:
    if grid is None:
        n = 576 if num_tokens is None else num_tokens
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"grid: {n} tokens are not a square; pass grid=(rows, cols)")
        return side, side
    if isinstance(grid, int):
        return grid, grid
    rows, cols = (int(g) for g in grid)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be positive (rows, cols), got {grid}")
    return rows, cols


def _as_rgb_float(image, rows: int, cols: int) -> np.ndarray:
    """[H, W, 3] float in [0, 1]."""
    img = _to_numpy(image)
    if img is None:
        return np.full((rows * 14, cols * 14, 3), 0.55)  # CLIP's patch size: 14 px per cell
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3, 4):
        img = np.transpose(img, (1, 2, 0))  # CHW -> HWC
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W], [H, W, 3] or [3, H, W], got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[:, :, :3]
    if np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float64) / 255.0
    else:
        img = img.astype(np.float64)
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:  # e.g. CLIP-normalised pixel values: rescale for display
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img


def render(image, indices, from_similarity=None, *, grid=None, num_tokens: Optional[int] = None, row: int = 0,
           dim: float = 0.3, alpha: float = 0.45, scale: int = 1, grid_lines: bool = True) -> np.ndarray:
    """The overlay as an [H * scale, W * scale, 3] uint8 array.

    Dropped cells: the image times ``dim``. Kept cells: the image blended with
    their colour (``alpha`` of the colour). ``grid``: (rows, cols), an int for a
    square grid, or None for a square of ``num_tokens`` (default 576: 24 x 24).
    """
    rows, cols = _grid(grid, num_tokens)
    states = token_states(indices, from_similarity, rows * cols, row=row).reshape(rows, cols)
    img = _as_rgb_float(image, rows, cols)
    if scale > 1:
        img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    H, W, _ = img.shape
    if H < rows or W < cols:
        raise ValueError(f"image {H}x{W} is smaller than the {rows}x{cols} grid; pass scale=")
    # Cell of every pixel: the grid is stretched over the image (cells need not be square).
    cell_r = np.minimum((np.arange(H) * rows) // H, rows - 1)
    cell_c = np.minimum((np.arange(W) * cols) // W, cols - 1)
    st = states[cell_r[:, None], cell_c[None, :]]  # [H, W]
    colours = np.array([[0, 0, 0], CONTEXT_COLOR, SIMILARITY_COLOR], dtype=np.float64) / 255.0
    tint = colours[st]
    kept = (st != DROPPED)[:, :, None]
    out = np.where(kept, (1 - alpha) * img + alpha * tint, dim * img)
    if grid_lines:
        edge_r = np.zeros(H, dtype=bool)
        edge_r[1:] = cell_r[1:] != cell_r[:-1]
        edge_c = np.zeros(W, dtype=bool)
        edge_c[1:] = cell_c[1:] != cell_c[:-1]
        edges = edge_r[:, None] | edge_c[None, :]
        out = np.where(edges[:, :, None], 0.85 * out, out)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def save_png(path, rgb: np.ndarray, *, caption: Optional[str] = None) -> str:
    """Write an [H, W, 3] uint8 array as a PNG of exactly W x H pixels (plus the caption strip)."""
    path = str(path)
    try:
        import matplotlib
    except ImportError:
        matplotlib = None
    if matplotlib is None:
        try:
            from PIL import Image
        except ImportError as exc:
            raise ImportError('litelvlm_kernels.viz needs matplotlib to write PNGs: pip install '
                              '"litelvlm_kernels[plot]" (or pip install matplotlib)') from exc
        Image.fromarray(rgb).save(path)  # no caption without matplotlib
        return path
    if caption is None:
        import matplotlib.image as mpimg
        mpimg.imsave(path, rgb)
        return path
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    H, W, _ = rgb.shape
    dpi = 100
    total = H + CAPTION_PX
    fig = Figure(figsize=(W / dpi, total / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, CAPTION_PX / total, 1, H / total))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    fig.text(0.01, (CAPTION_PX / 2) / total, caption, fontsize=7, va="center", ha="left")
    fig.savefig(path, dpi=dpi)
    return path


def save_kept_tokens(path, image, indices, from_similarity=None, *, grid=None, num_tokens: Optional[int] = None,
                     row: int = 0, caption: Union[bool, str] = False, **render_kwargs) -> str:
    """Render (see ``render``) and write a PNG. ``caption=True`` adds a legend line
    (counts of similarity / context / dropped tokens and their colours); a string
    is used as the caption instead. Returns the path."""
    rgb = render(image, indices, from_similarity, grid=grid, num_tokens=num_tokens, row=row, **render_kwargs)
    text = None
    if caption:
        rows, cols = _grid(grid, num_tokens)
        st = token_states(indices, from_similarity, rows * cols, row=row)
        text = caption if isinstance(caption, str) else (
            f"{int((st == SIMILARITY).sum())} similarity (orange), {int((st == CONTEXT).sum())} context (blue), "
            f"{int((st == DROPPED).sum())} dropped")
    return save_png(path, rgb, caption=text)


# --------------------------------------------------------------------------- demo


def _synthetic_scene(size: int, rows: int, cols: int, seed: int):
    """An image (sky, ground, a red ball, a dark post) and per-cell masks of its objects."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.empty((size, size, 3))
    sky = y < 0.6
    img[sky] = np.stack([0.55 + 0.2 * y, 0.7 + 0.2 * y, 0.95 * np.ones_like(y)], -1)[sky]
    img[~sky] = np.stack([0.3 + 0.1 * x, 0.55 + 0.1 * y, 0.25 * np.ones_like(y)], -1)[~sky]
    ball = (x - 0.3) ** 2 + (y - 0.55) ** 2 < 0.12 ** 2
    img[ball] = (0.85, 0.12, 0.1)
    post = (np.abs(x - 0.75) < 0.03) & (y > 0.25) & (y < 0.85)
    img[post] = (0.2, 0.15, 0.1)
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    cy = (np.arange(rows) + 0.5) / rows
    cx = (np.arange(cols) + 0.5) / cols
    ball_cells = ((cx[None, :] - 0.3) ** 2 + (cy[:, None] - 0.55) ** 2 < 0.13 ** 2).reshape(-1)
    post_cells = ((np.abs(cx[None, :] - 0.75) < 0.05) & (cy[:, None] > 0.25) & (cy[:, None] < 0.85)).reshape(-1)
    horizon = (np.abs(cy[:, None] - 0.6) < 0.05).repeat(cols, 1).reshape(-1)
    return img, ball_cells, post_cells | horizon


def demo(out: str = "litelvlm_viz_demo.png", *, retain: int = 144, texts: int = 2, grid: Tuple[int, int] = (24, 24),
         size: int = 336, order: str = "official", seed: int = 0):
    """Prune synthetic CLIP-like tensors built from a synthetic scene and draw the result.

    The "referring expressions" point at the red ball: its cells get hidden
    states that score LOW against the texts (CLIP's reversed similarity), so S
    covers the ball; cells on the post and the horizon get large value norms,
    so the context recovery picks them. Returns (path, PruneResult).
    """
    import torch

    from . import prune

    rows, cols = grid
    M, Dv, P = rows * cols, 64, 32
    img, ball, salient = _synthetic_scene(size, rows, cols, seed)
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(P, Dv, generator=g) / Dv ** 0.5
    ln_w, ln_b = torch.ones(Dv), torch.zeros(Dv)
    base = torch.randn(1, 1, P, generator=g)
    text_embeds = base + 0.3 * torch.randn(1, texts, P, generator=g)  # related expressions
    u = (base[0, 0] @ proj)
    u = (u - u.mean()) / u.norm()  # the direction LN(x) . u measures
    hidden = torch.randn(1, M, Dv, generator=g)
    hidden[0, torch.from_numpy(ball)] -= 4.0 * u * Dv ** 0.5  # the referent scores low
    q_cls = torch.randn(1, Dv, generator=g)
    keys = torch.randn(1, M, Dv, generator=g)
    values = torch.randn(1, M, Dv, generator=g)
    values[0, torch.from_numpy(salient)] *= 3.0  # [CLS] draws on these
    res = prune(hidden, text_embeds, q_cls, keys, values, num_retain=retain, proj_weight=proj, ln_weight=ln_w,
                ln_bias=ln_b, order=order)
    path = save_kept_tokens(out, img, res, grid=grid, caption=True)  # row 0 of the PruneResult
    return path, res


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m litelvlm_kernels.viz",
                                description="Render LiteLVLM's kept tokens over a synthetic image to a PNG.")
    p.add_argument("--out", default="litelvlm_viz_demo.png", help="PNG path")
    p.add_argument("--retain", type=int, default=144, help="tokens kept (of rows x cols)")
    p.add_argument("--texts", type=int, default=2, help="referring expressions")
    p.add_argument("--grid", type=int, nargs=2, default=(24, 24), metavar=("ROWS", "COLS"))
    p.add_argument("--size", type=int, default=336, help="image side in pixels")
    p.add_argument("--order", default="official", choices=["official", "spatial"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    path, res = demo(args.out, retain=args.retain, texts=args.texts, grid=tuple(args.grid), size=args.size,
                     order=args.order, seed=args.seed)
    n_sim = int(res.num_similarity[0])
    print(f"wrote {path}: {res.indices.shape[1]} of {args.grid[0] * args.grid[1]} tokens kept "
          f"({n_sim} similarity in orange, {res.indices.shape[1] - n_sim} context in blue, dropped dimmed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
