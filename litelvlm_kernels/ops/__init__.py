"""The ``torch.ops.litelvlm`` operators and their Python wrappers.

Importing this package registers every op: the C++ extension
(``litelvlm_kernels._C``) defines every schema and the CPU kernels; Python adds the
fake impls, gather's wrapper, the selection ops' device-agnostic default kernels
(``selection.py``) and, when Triton is importable, their CUDA kernels (``triton_cuda.py``).
"""

from .gather_tokens import gather_tokens  # noqa: F401  (loads _C, registers fake/autograd)
from .selection import cls_contribution, fold_text, fused_select, select_tokens, text_similarity  # noqa: F401

try:  # Triton CUDA kernels: optional (no triton on this platform, or an old one)
    from . import triton_cuda  # noqa: F401
except ImportError:  # pragma: no cover - depends on the platform
    triton_cuda = None

__all__ = ["gather_tokens", "fold_text", "text_similarity", "cls_contribution", "select_tokens", "fused_select"]
