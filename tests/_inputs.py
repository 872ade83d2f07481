"""Random inputs with the hazards the ops must survive: ties, NaN/inf, outliers, odd strides."""

import torch

NAN, INF = float("nan"), float("inf")


def noncontig(x: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous layout (every dimension strided)."""
    y = torch.empty(*[2 * d for d in x.shape], dtype=x.dtype, device=x.device)
    view = y[tuple(slice(None, None, 2) for _ in x.shape)]
    view.copy_(x)
    return view


def scores(B, T, M, *, dtype=torch.float32, device="cpu", hazards=True, seed=0):
    """s [B, T, M], c [B, M] with exact ties, -0.0, and (if hazards) NaN/inf sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, M, generator=g)
    c = torch.rand(B, M, generator=g)
    if M:
        s[..., ::7] = 0.5  # exact ties in the similarity ranking
        c[..., ::5] = 0.25  # and in the contribution ranking
        s[..., ::11] = -0.0
    if hazards and B and M > 4:
        c[0, 4] = NAN
        c[-1, 2] = INF
        c[-1, 3] = -INF
        if T:
            s[0, 0, 3] = NAN
            s[-1, -1, 1:3] = -INF
            s[0, -1, 4] = INF
    return s.to(device=device, dtype=dtype), c.to(device=device, dtype=dtype)
