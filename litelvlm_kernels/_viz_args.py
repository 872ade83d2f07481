"""Argument handling of ``viz``: which row of which indices, and the grid they are drawn on.

Each check names the argument it refuses (``row`` with the batch size, ``grid`` with its cells and the tokens
it must hold, ``num_tokens``), before anything is drawn.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import numpy as np


def _to_numpy(x):
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _unpack(indices, from_similarity):
    """(indices, from_similarity) of a PruneResult / HFPruneResult, or the arguments as given."""
    if hasattr(indices, "indices") and hasattr(indices, "from_similarity"):
        if from_similarity is None:
            from_similarity = indices.from_similarity
        indices = indices.indices
    return indices, from_similarity


def _check_row(row, idx: np.ndarray) -> None:
    """``row`` must pick a row of [B, R] indices (0 for [R]): a named error, not numpy's bare IndexError."""
    if isinstance(row, bool) or not isinstance(row, numbers.Integral):
        raise TypeError(f"row must be an int, got {type(row).__name__} ({row!r})")
    if idx.ndim == 2 and not 0 <= row < idx.shape[0]:
        raise ValueError(f"row={row} is out of range: the indices hold a batch of B={idx.shape[0]} rows "
                         f"(row must be in 0..{idx.shape[0] - 1})")
    if idx.ndim == 1 and row != 0:
        raise ValueError(f"row={row}: the indices are a single row [R] (a batch of B=1), so row must be 0")


def _one_row(indices, from_similarity, row: int):
    """Accept a PruneResult / HFPruneResult, or [R] / [B, R] arrays; return one row of each."""
    indices, from_similarity = _unpack(indices, from_similarity)
    idx = _to_numpy(indices)
    if idx.ndim not in (1, 2):
        raise ValueError(f"indices must be [R] or [B, R], got shape {idx.shape}")
    _check_row(row, idx)
    if idx.ndim == 2:
        idx = idx[row]
    fs = _to_numpy(from_similarity)
    if fs is not None and fs.ndim == 2:
        fs = fs[row]
    return idx, fs


def _known_num_tokens(indices, num_tokens: Optional[int]) -> Optional[int]:
    """M from ``num_tokens=``, else from a result's ``num_tokens`` attribute (HFPruneResult), else None."""
    if num_tokens is None:
        num_tokens = getattr(indices, "num_tokens", None)
    if num_tokens is None:
        return None
    if not isinstance(num_tokens, numbers.Integral) or num_tokens <= 0:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    return int(num_tokens)


def _unknown_grid_error() -> ValueError:
    # A silent 24 x 24 default put a 64-token result into the top 3 rows: refuse to guess instead.
    return ValueError("grid: the number of tokens M is unknown (plain indices and PruneResult do not carry it); "
                      "pass grid=(rows, cols) or num_tokens=M")


def _parse_grid(grid) -> Tuple[int, int]:
    if isinstance(grid, numbers.Integral):
        rows = cols = int(grid)
    else:
        try:
            rows, cols = (int(g) for g in grid)
        except (TypeError, ValueError):
            raise ValueError(f"grid must be (rows, cols) or an int, got {grid!r}") from None
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be positive (rows, cols), got {grid}")
    return rows, cols


def _grid(grid, num_tokens: Optional[int], indices=None) -> Tuple[int, int]:
    """(rows, cols): ``grid`` if given, else the square of M tokens.

    A given grid is checked against M when M is known; when it is not (plain indices, PruneResult), against every
    index of every row, so a grid too small is named as such rather than reported as an index out of range.
    """
    M = _known_num_tokens(indices, num_tokens)
    if grid is not None:
        rows, cols = _parse_grid(grid)
        if M is not None and rows * cols != M:
            raise ValueError(f"grid {rows}x{cols} has {rows * cols} cells but there are num_tokens={M} tokens")
        if M is None and indices is not None:
            idx = _to_numpy(_unpack(indices, None)[0])
            top = int(idx.max()) if idx is not None and idx.size else -1
            if top >= rows * cols:
                raise ValueError(f"grid {rows}x{cols} has {rows * cols} cells but the indices reach {top} (at least "
                                 f"{top + 1} tokens); pass the tower's grid, or num_tokens=M to have it checked")
        return rows, cols
    if M is None:
        raise _unknown_grid_error()
    side = math.isqrt(M)
    if side * side != M:
        raise ValueError(f"grid: {M} tokens are not a square; pass grid=(rows, cols)")
    return side, side
