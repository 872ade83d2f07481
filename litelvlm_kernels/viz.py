"""Draw which visual tokens a pruning kept, over the image, to a PNG.

Each of the M patch tokens is a cell of a ``rows x cols`` grid laid over the
image (24 x 24 for CLIP ViT-L/14-336's 576 tokens; row-major, as CLIP orders
patches). Kept tokens that came from the text-similarity set S are tinted
magenta, kept context tokens (recovered by [CLS] contribution) cyan, each kept
cell outlined in its colour at full opacity, and dropped cells are dimmed.
Magenta and cyan are hues photographs rarely have, so the marks stay legible
over red, green, blue, white, black and grey regions alike::

    import litelvlm_kernels as lk
    from litelvlm_kernels import viz
    out = lk.prune(hidden, text, q_cls, keys, values, num_retain=192)
    viz.save_kept_tokens("kept.png", image, out, grid=(24, 24))        # row 0; row=b for others
    # or explicitly: viz.save_kept_tokens("kept.png", image, out.indices[0], out.from_similarity[0], grid=(24, 24))
    # one view of an LVLM call ({"indices", "from_similarity", "grid"}):
    viz.save_kept_tokens("view.png", image, **patch.last_report["image"]["views"][0][0])

The grid is never guessed: pass ``grid=(rows, cols)`` (or an int for a
square), or ``num_tokens=M`` for a square grid of M cells; a result object with
a ``num_tokens`` attribute (HFPruneResult) supplies M itself. Plain index
arrays and a ``PruneResult`` do not say M, so they need one of the two. A
grid is checked before anything is drawn: against M when M is known, else
against the indices of every row (a grid too large for them goes unnoticed:
pass ``num_tokens=M`` to have it checked). ``row`` outside the batch is an
error naming ``row`` and the batch size (``_viz_args``).

``image`` is what the tower saw (after CLIP's resize and centre crop):
an [H, W, 3] or [3, H, W] array or tensor, uint8 or float in [0, 1] (an
[H, W] array is taken as grey), or None for a plain grey canvas. The PNG has
the image's pixel size (times ``scale``), plus a caption strip of
``CAPTION_PX`` rows at the bottom when ``caption=True``.

PNG writing needs matplotlib (the ``plot`` extra: ``pip install
"litelvlm_kernels[plot]"``); without it, Pillow is used if installed (no
caption). ``render`` (the RGB array) needs only numpy.

CLI demo on a synthetic image (uses ``litelvlm_kernels.prune``)::

    python -m litelvlm_kernels.viz --out demo.png [--retain 144] [--texts 2] [--grid 24 24]
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ._viz_args import _grid, _known_num_tokens, _one_row, _to_numpy, _unknown_grid_error

__all__ = ["SIMILARITY_COLOR", "CONTEXT_COLOR", "CAPTION_PX", "token_states", "render", "save_png",
           "save_kept_tokens", "demo", "main"]

# Not orange / blue: those are common image hues (orange vanished over red). Magenta and cyan are far in RGB
# from every primary, white, black and grey, and differ in lightness too, so they stay apart under red-green
# colour blindness.
SIMILARITY_COLOR = (255, 0, 255)   # magenta: kept by text similarity (the set S)
CONTEXT_COLOR = (0, 255, 255)      # cyan: kept by [CLS] contribution (context recovery)
_COLOR_NAMES = {"similarity": "magenta", "context": "cyan"}
CAPTION_PX = 28                    # height of the caption strip

DROPPED, CONTEXT, SIMILARITY = 0, 1, 2


def token_states(indices, from_similarity=None, num_tokens: Optional[int] = None, *, row: int = 0) -> np.ndarray:
    """[num_tokens] int8: 0 dropped, 1 kept context token, 2 kept similarity token.

    indices: kept token indices, [R] or [B, R] (then row ``row`` is drawn), or a
    PruneResult / HFPruneResult (its indices and from_similarity); from_similarity:
    the matching bool (None: every kept token counts as context); num_tokens: M
    (None: the result's ``num_tokens``; a ValueError if it has none).
    """
    M = _known_num_tokens(indices, num_tokens)
    if M is None:
        raise _unknown_grid_error()
    indices, from_similarity = _one_row(indices, from_similarity, row)
    idx = indices.reshape(-1).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= M):
        raise ValueError(f"indices must lie in [0, {M}), got values in [{idx.min()}, {idx.max()}]")
    states = np.zeros(M, dtype=np.int8)
    if from_similarity is None:
        states[idx] = CONTEXT
    else:
        fs = _to_numpy(from_similarity).reshape(-1).astype(bool)
        if fs.shape != idx.shape:
            raise ValueError(f"from_similarity must match indices: {fs.shape} vs {idx.shape}")
        states[idx] = np.where(fs, SIMILARITY, CONTEXT)
    return states


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


def _cell_of_pixel(n_px: int, n_cells: int) -> np.ndarray:
    """[n_px] cell index of each pixel along one axis: the grid is stretched over the image."""
    return np.minimum((np.arange(n_px) * n_cells) // n_px, n_cells - 1)


def _first_px_of_cell(cell: np.ndarray) -> np.ndarray:
    """[n_px] bool: the pixel starts a cell other than the first (where a grid line goes)."""
    first = np.zeros(cell.size, dtype=bool)
    first[1:] = cell[1:] != cell[:-1]
    return first


def _px_to_cell_edge(cell: np.ndarray) -> np.ndarray:
    """[n_px] distance of each pixel to the nearer edge of its cell (0 on the first and last pixel)."""
    first = np.searchsorted(cell, cell, side="left")
    last = np.searchsorted(cell, cell, side="right") - 1
    pos = np.arange(cell.size)
    return np.minimum(pos - first, last - pos)


def render(image, indices, from_similarity=None, *, grid=None, num_tokens: Optional[int] = None, row: int = 0,
           dim: float = 0.3, alpha: float = 0.45, border: Optional[int] = None, scale: int = 1,
           grid_lines: bool = True) -> np.ndarray:
    """The overlay as an [H * scale, W * scale, 3] uint8 array.

    Dropped cells: the image times ``dim``. Kept cells: the image blended with
    their colour (``alpha`` of the colour) and outlined in it, ``border`` pixels
    wide at full opacity (None: a seventh of the smaller cell side, at least 1;
    0: no outline). ``grid``: (rows, cols) or an int for a square grid; None
    takes a square of ``num_tokens`` (or of the result's ``num_tokens``) and is
    an error when neither is known.
    """
    rows, cols = _grid(grid, num_tokens, indices)
    states = token_states(indices, from_similarity, rows * cols, row=row).reshape(rows, cols)
    img = _as_rgb_float(image, rows, cols)
    if scale > 1:
        img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    H, W, _ = img.shape
    if H < rows or W < cols:
        raise ValueError(f"image {H}x{W} is smaller than the {rows}x{cols} grid; pass scale=")
    cell_r, cell_c = _cell_of_pixel(H, rows), _cell_of_pixel(W, cols)
    st = states[cell_r[:, None], cell_c[None, :]]  # [H, W]
    colours = np.array([[0, 0, 0], CONTEXT_COLOR, SIMILARITY_COLOR], dtype=np.float64) / 255.0
    tint = colours[st]
    kept = (st != DROPPED)[:, :, None]
    out = np.where(kept, (1 - alpha) * img + alpha * tint, dim * img)
    if grid_lines:  # darken the first pixel row / column of every cell but the first
        lines = _first_px_of_cell(cell_r)[:, None] | _first_px_of_cell(cell_c)[None, :]
        out = np.where(lines[:, :, None], 0.85 * out, out)
    if border is None:
        border = max(1, min(H // rows, W // cols) // 7)  # 2 px on CLIP's 14 px cells
    if border > 0:  # full-opacity outline: the category reads even where the tinted image is close to its colour
        rim = (_px_to_cell_edge(cell_r) < border)[:, None] | (_px_to_cell_edge(cell_c) < border)[None, :]
        out = np.where(kept & rim[:, :, None], tint, out)
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


def _legend(states: np.ndarray) -> str:
    return (f"{int((states == SIMILARITY).sum())} similarity ({_COLOR_NAMES['similarity']}), "
            f"{int((states == CONTEXT).sum())} context ({_COLOR_NAMES['context']}), "
            f"{int((states == DROPPED).sum())} dropped")


def save_kept_tokens(path, image, indices, from_similarity=None, *, grid=None, num_tokens: Optional[int] = None,
                     row: int = 0, caption: Union[bool, str] = False, **render_kwargs) -> str:
    """Render (see ``render``) and write a PNG. ``caption=True`` adds a legend line
    (counts of similarity / context / dropped tokens and their colours); a string
    is used as the caption instead. Returns the path.

    The keywords match one view of an LVLM call's report, so
    ``save_kept_tokens(path, image, **view)`` draws a view
    ``{"indices": [k], "from_similarity": [k], "grid": (rows, cols)}``."""
    rgb = render(image, indices, from_similarity, grid=grid, num_tokens=num_tokens, row=row, **render_kwargs)
    text = None
    if caption:
        rows, cols = _grid(grid, num_tokens, indices)
        text = caption if isinstance(caption, str) else _legend(
            token_states(indices, from_similarity, rows * cols, row=row))
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


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad values as usage errors (exit 2, one line), not tracebacks from deep inside prune or render."""
    rows, cols = args.grid
    if rows <= 0 or cols <= 0:
        p.error(f"--grid must be two positive ints, got {rows} {cols}")
    if not 1 <= args.retain <= rows * cols:
        p.error(f"--retain must be in 1..{rows * cols} (rows x cols), got {args.retain}")
    if not 0 <= args.texts <= args.retain:  # 0: context recovery only; more texts than tokens leaves some none
        p.error(f"--texts must be in 0..{args.retain} (--retain), got {args.texts}")
    if args.size < max(rows, cols):
        p.error(f"--size must be at least the grid's larger side ({max(rows, cols)} px), got {args.size}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m litelvlm_kernels.viz",
                                description="Render LiteLVLM's kept tokens over a synthetic image to a PNG.")
    p.add_argument("--out", default="litelvlm_viz_demo.png", help="PNG path")
    p.add_argument("--retain", type=int, default=144, help="tokens kept (1..rows x cols)")
    p.add_argument("--texts", type=int, default=2, help="referring expressions (0: context tokens only)")
    p.add_argument("--grid", type=int, nargs=2, default=(24, 24), metavar=("ROWS", "COLS"))
    p.add_argument("--size", type=int, default=336, help="image side in pixels (at least the grid's larger side)")
    p.add_argument("--order", default="official", choices=["official", "spatial"])
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    _check_args(p, args)
    path, res = demo(args.out, retain=args.retain, texts=args.texts, grid=tuple(args.grid), size=args.size,
                     order=args.order, seed=args.seed)
    n_sim = int(res.num_similarity[0])
    print(f"wrote {path}: {res.indices.shape[1]} of {args.grid[0] * args.grid[1]} tokens kept "
          f"({n_sim} similarity in {_COLOR_NAMES['similarity']}, {res.indices.shape[1] - n_sim} context in "
          f"{_COLOR_NAMES['context']}, dropped dimmed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
