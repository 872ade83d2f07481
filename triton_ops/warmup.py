"""Compile the fused_select variants a deployment will launch, before serving.

A variant is a set of meta-parameters (block sizes, flags) plus triton's specialisation of
dtypes, widths and strides; sizes that change per request (M, T, R', k_per_text,
min_votes) are not specialised, so a new size class costs a compile (~2 s) only when it
changes a block size: BLOCK_M (16 or 32), TB (next_pow2(T) <= 4), BLOCK_F (256, 1024 or
4096 on registers; 2048-token chunks above 4096). ``warmup`` launches one representative of
each class on zero inputs.
"""

from __future__ import annotations

import torch

from .fused_select import fused_select, pick_blocks


def warmup(device="cuda", *, hidden_dim: int, qk_dim: int, num_patches=(576,), num_texts=(1, 2),
           batch_sizes=(1, 8, 64), dtypes=(torch.float16,), orders=("official",), with_num_texts=(False,)) -> int:
    """Launch fused_select once per distinct kernel variant of the given size classes.

    Parameters
    ----------
    device : str or torch.device
        Where the kernels run (CUDA; CPU only under TRITON_INTERPRET=1).
    hidden_dim, qk_dim : int
        Dv (visual token width) and D (q / k / v width) of the model.
    num_patches, num_texts, batch_sizes : iterable of int
        The M, T and B values to expect.
    dtypes : iterable of torch.dtype
        Input dtypes.
    orders : iterable of str
        "official" and / or "spatial".
    with_num_texts : iterable of bool
        Whether calls pass num_texts.

    Returns
    -------
    int
        The number of variants launched (each compiled on first use).

    Examples
    --------
    >>> warmup("cuda", hidden_dim=1024, qk_dim=1024, num_patches=(576, 2880))  # doctest: +SKIP
    """
    device = torch.device(device)
    seen = set()
    for dtype in dtypes:
        for M in num_patches:
            for T in num_texts:
                for B in batch_sizes:
                    blk = pick_blocks(B, M, T, hidden_dim, qk_dim)
                    # The smallest batch with the same blocks compiles the same variant.
                    b_min = next(b for b in range(1, B + 1) if pick_blocks(b, M, T, hidden_dim, qk_dim) == blk)
                    for order in orders:
                        for has_nt in with_num_texts:
                            key = (dtype, tuple(sorted(blk.items())), order, has_nt)
                            if key in seen:
                                continue
                            seen.add(key)
                            _launch(device, dtype, b_min, M, T, hidden_dim, qk_dim, order, has_nt)
    return len(seen)


def _launch(device, dtype, B, M, T, Dv, D, order, has_nt):
    z = dict(device=device, dtype=dtype)
    hidden = torch.zeros(B, M, Dv, **z)
    w = torch.zeros(B, T, Dv, device=device)
    b = torch.zeros(B, T, device=device)
    q = torch.zeros(B, D, **z)
    kv = torch.zeros(B, M, D, **z)
    nt = torch.full((B,), T, dtype=torch.int64, device=device) if has_nt else None
    R = min(M, max(T, 64))
    fused_select(hidden, w, b, 1e-5, q, kv, kv, R, order=order, num_texts=nt)
