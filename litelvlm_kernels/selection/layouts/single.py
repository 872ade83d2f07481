"""One view per image, tokens 1:1 with the tower's patches (LLaVA-1.5, LLaVA with a SigLIP tower, PaliGemma).

An image takes M placeholders (+1 when a CLIP tower's [CLS] row goes to the LLM too: LLaVA's "full"); with
LiteLVLM it keeps R' = min(R, M) patch rows, chosen by the fused op in one call per batch
(``litelvlm_kernels.prune``), in the order ``order`` says, the [CLS] row (if any) first as in the
tower's own output.
"""

from __future__ import annotations

import dataclasses

import torch

from ... import ops

__all__ = ["Single"]


@dataclasses.dataclass(frozen=True)
class Single:
    """``num_patches``: M; ``extra``: rows in front of the patches that always go to the LLM (1: a [CLS] row)."""

    num_patches: int
    extra: int = 0

    def stock_count(self) -> int:
        return self.num_patches + self.extra

    def kept_count(self, num_retain: int) -> int:
        return min(num_retain, self.num_patches) + self.extra

    def assemble(self, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """[N, extra + R', C]: the front rows of ``features`` [N, extra + M, C], then the kept patch rows
        ``indices`` [N, R'] (into the M patches)."""
        kept = ops.gather_tokens(features[:, self.extra:], indices)
        return torch.cat([features[:, :self.extra], kept], 1) if self.extra else kept
