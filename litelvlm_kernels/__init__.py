"""litelvlm-kernels: fused kernels for LiteLVLM text-guided visual token pruning.

    import litelvlm_kernels as lk
    text = lk.fold_text(text_embeds, proj_weight, ln_weight, ln_bias)   # once per text
    out = lk.prune(hidden, text, q_cls, keys, values, num_retain=192)   # per image / tile / frame
    out.indices, out.tokens, out.num_similarity, out.from_similarity

The operators live under ``torch.ops.litelvlm`` (see ``litelvlm_kernels.ops``);
``litelvlm_kernels.reference`` is the plain-PyTorch oracle.
"""

from . import (
    ops,  # noqa: F401  (registers torch.ops.litelvlm.*)
    reference,  # noqa: F401
)
from .api import FoldedText, PruneResult, fold_text, prune, select_scores
from .pooling_head import head_qkv, map_contribution

__version__ = "0.1.0"
__all__ = ["fold_text", "prune", "select_scores", "FoldedText", "PruneResult", "map_contribution", "head_qkv", "ops",
           "reference", "__version__"]
