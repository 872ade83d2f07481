"""Synthetic CLIP-shaped inputs (no weights can be downloaded): the shapes of docs/design.md section 6.

Hidden states get a few large-magnitude outlier channels, as CLIP ViT-L/14's
have, so precision problems of the folded similarity show up in tests and demos.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

CLIP_L14_336 = dict(M=576, Dv=1024, D=1024, P=768)
CLIP_B16_224 = dict(M=196, Dv=768, D=768, P=512)


class ClipInputs(NamedTuple):
    hidden: torch.Tensor       # [B, M, Dv]
    text_embeds: torch.Tensor  # [Bt, T, P]
    proj_weight: torch.Tensor  # [P, Dv]
    ln_weight: torch.Tensor    # [Dv]
    ln_bias: torch.Tensor      # [Dv]
    q_cls: torch.Tensor        # [B, D]
    keys: torch.Tensor         # [B, M, D]
    values: torch.Tensor       # [B, M, D]


def clip_inputs(B=1, T=2, M=576, Dv=1024, D=1024, P=768, *, text_batch=None, dtype=torch.float32,
                device="cpu", outliers=4, outlier_scale=300.0, seed=0) -> ClipInputs:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(device=device, dtype=dtype)

    hidden = torch.randn(B, M, Dv, generator=g)
    if outliers and Dv:
        channels = torch.randperm(Dv, generator=g)[:outliers]
        hidden[:, :, channels] *= outlier_scale
    Bt = B if text_batch is None else text_batch
    ln_weight = (1.0 + 0.1 * torch.randn(Dv, generator=g)).to(device=device, dtype=dtype)
    return ClipInputs(
        hidden=hidden.to(device=device, dtype=dtype),
        # Referring expressions of one image are related: a shared direction plus
        # per-text noise, so their bottom-k sets overlap as real texts' do.
        text_embeds=(torch.randn(Bt, 1, P, generator=g) + 0.6 * torch.randn(Bt, T, P, generator=g)).to(
            device=device, dtype=dtype),
        proj_weight=randn(P, Dv, std=Dv ** -0.5),
        ln_weight=ln_weight,
        ln_bias=randn(Dv, std=0.1),
        q_cls=randn(B, D),
        keys=randn(B, M, D),
        values=randn(B, M, D) * (1.0 + torch.rand(B, M, 1, generator=g).to(device=device, dtype=dtype)),
    )
