"""``torch.ops.litelvlm.gather_tokens``: compact the kept tokens, [B, M, C] -> [B, R, C].

The op and its kernels are C++/CUDA (``csrc/``): the schema is defined by
``TORCH_LIBRARY(litelvlm)`` in ``csrc/litelvlm.cpp``, the CPU kernel in
``csrc/gather_tokens.cpp``, the CUDA kernel in ``csrc/cuda/gather_tokens.cu`` and
the autograd kernel in ``csrc/gather_tokens_autograd.cpp``. Importing this module
loads ``litelvlm_kernels._C`` (which runs those registrations) and adds, in Python:

- the fake (meta) implementations of both overloads, for torch.compile and
  FakeTensor tracing;
- :func:`gather_tokens`, the Python wrapper with argument checks that name the
  argument.

Semantics, errors, the backward and why each piece is where it is:
``docs/gather.md``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._validate import INDEX_DTYPES

try:
    from .. import _C  # noqa: F401  (loading the library registers the schema and the kernels)
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "litelvlm_kernels._C (the C++ extension with gather_tokens) is not built: "
        "run `pip install --no-build-isolation -e .` from the repository root"
    ) from e

__all__ = ["gather_tokens"]


# -- fake implementations ----------------------------------------------------------

def _check_fake(tokens: Tensor, indices: Tensor) -> None:
    # Mirrors check_gather_args in csrc/gather_tokens.h (shapes, dtypes, devices only).
    torch._check(tokens.dim() == 3,
                 lambda: f"gather_tokens: tokens must be a 3-D tensor [B, M, C], got shape {tuple(tokens.shape)}")
    torch._check(indices.dim() == 2,
                 lambda: f"gather_tokens: indices must be a 2-D tensor [B, R], got shape {tuple(indices.shape)}")
    torch._check(indices.dtype in INDEX_DTYPES,
                 lambda: f"gather_tokens: indices must be int32 or int64, got {indices.dtype}")
    torch._check(indices.device == tokens.device,
                 lambda: f"gather_tokens: indices must be on the same device as tokens ({tokens.device}), "
                         f"got {indices.device}")
    torch._check(tokens.shape[0] == indices.shape[0],
                 lambda: f"gather_tokens: batch size mismatch: tokens has B={tokens.shape[0]} "
                         f"but indices has B={indices.shape[0]}")


@torch.library.register_fake("litelvlm::gather_tokens")
def _gather_tokens_fake(tokens: Tensor, indices: Tensor) -> Tensor:
    _check_fake(tokens, indices)
    # The kernels always return a new contiguous tensor.
    return tokens.new_empty((tokens.shape[0], indices.shape[1], tokens.shape[2]))


@torch.library.register_fake("litelvlm::gather_tokens.out")
def _gather_tokens_out_fake(tokens: Tensor, indices: Tensor, *, out: Tensor) -> Tensor:
    _check_fake(tokens, indices)
    torch._check(out.dtype == tokens.dtype,
                 lambda: f"gather_tokens: out must have the dtype of tokens ({tokens.dtype}), got {out.dtype}")
    torch._check(out.device == tokens.device,
                 lambda: f"gather_tokens: out must be on the device of tokens ({tokens.device}), got {out.device}")
    shape = (tokens.shape[0], indices.shape[1], tokens.shape[2])
    torch._check(out.numel() == 0 or tuple(out.shape) == shape,
                 lambda: f"gather_tokens: out must have shape [B, R, C] = {list(shape)}, got {list(out.shape)}")
    if tuple(out.shape) != shape:  # an empty out is sized, as the kernels do
        out.resize_(shape)
    return out


# Autograd is registered in C++ (csrc/gather_tokens_autograd.cpp); docs/gather.md says why.


# -- Python wrapper ----------------------------------------------------------------

def _check_args(tokens, indices, out) -> None:
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if not isinstance(indices, Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if tokens.dim() != 3:
        raise ValueError(f"tokens must have 3 dimensions [B, M, C], got shape {tuple(tokens.shape)}")
    if indices.dim() != 2:
        raise ValueError(f"indices must have 2 dimensions [B, R], got shape {tuple(indices.shape)}")
    if indices.dtype not in INDEX_DTYPES:
        raise TypeError(f"indices must have dtype torch.int32 or torch.int64, got {indices.dtype}")
    if indices.device != tokens.device:
        raise ValueError(f"indices is on {indices.device} but tokens is on {tokens.device}: they must share a device")
    if indices.shape[0] != tokens.shape[0]:
        raise ValueError(f"indices has batch size {indices.shape[0]} but tokens has {tokens.shape[0]}: "
                         "indices must be [B, R] for tokens [B, M, C]")
    if out is not None:
        if not isinstance(out, Tensor):
            raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
        if out.dtype != tokens.dtype:
            raise TypeError(f"out must have the dtype of tokens ({tokens.dtype}), got {out.dtype}")
        if out.device != tokens.device:
            raise ValueError(f"out is on {out.device} but tokens is on {tokens.device}: they must share a device")
        shape = (tokens.shape[0], indices.shape[1], tokens.shape[2])
        if out.numel() != 0 and tuple(out.shape) != shape:
            raise ValueError(f"out must have shape [B, R, C] = {list(shape)} (tokens [B, M, C], indices [B, R]), "
                             f"got {list(out.shape)}; pass an empty tensor to have it sized")
        if torch.is_grad_enabled() and (tokens.requires_grad or out.requires_grad):
            raise RuntimeError("gather_tokens(): the out= variant does not support automatic differentiation "
                               "(tokens or out requires grad); call it without out=")


def gather_tokens(tokens: Tensor, indices: Tensor, *, out: Optional[Tensor] = None) -> Tensor:
    """Gather rows of each batch: ``out[b, r, :] = tokens[b, indices[b, r], :]``.

    Parameters
    ----------
    tokens : Tensor
        [B, M, C], any dtype, any strides (CPU or CUDA).
    indices : Tensor
        [B, R], int32 or int64, values in [0, M) (no negative wrapping),
        duplicates allowed, on the device of ``tokens``.
    out : Tensor, optional
        [B, R, C] tensor of ``tokens``' dtype and device, any strides; an
        empty one (0 elements) is sized to [B, R, C]. Any other shape is
        refused (torch's out= ops would resize it with a warning, silently
        replacing a preallocated buffer).

    Returns
    -------
    Tensor
        [B, R, C] of ``tokens``' dtype (contiguous unless ``out`` was given).
        Differentiable with respect to ``tokens`` (not with ``out=``).

    Raises
    ------
    TypeError, ValueError
        Naming the argument, for a wrong type, dtype, rank, device or batch
        size, or an ``out`` of another shape.
    RuntimeError
        Naming the value and position of an out-of-range index on the CPU (a
        device-side assert on CUDA).

    Examples
    --------
    >>> hidden = torch.randn(2, 576, 1024)
    >>> idx = torch.tensor([[0, 5, 7], [1, 2, 575]])
    >>> gather_tokens(hidden, idx).shape
    torch.Size([2, 3, 1024])
    """
    if torch.compiler.is_compiling():
        # Dynamo traces the checks once.
        _check_args(tokens, indices, out)
        return _OP(tokens, indices) if out is None else _OP_OUT(tokens, indices, out=out)
    if out is not None and torch.is_grad_enabled() and (
            getattr(tokens, "requires_grad", False) or getattr(out, "requires_grad", False)):
        _check_args(tokens, indices, out)  # raises (TypeError/ValueError, else the autograd error)
    # Eager: the C++ op checks everything itself, so the Python checks run only
    # after it fails, to re-raise as a ValueError/TypeError naming the argument
    # (on success they would cost about a quarter of a small gather; docs/gather.md).
    # The dispatcher reports every failure as RuntimeError (a non-tensor argument
    # included); TypeError/ValueError come from c10::TypeError/ValueError.
    try:
        if out is None:
            return _OP(tokens, indices)
        return _OP_OUT(tokens, indices, out=out)
    except (RuntimeError, TypeError, ValueError):
        try:
            _check_args(tokens, indices, out)
        except (TypeError, ValueError) as nicer:
            raise nicer from None
        raise  # the op's own error, e.g. an out-of-range index


_OP = torch.ops.litelvlm.gather_tokens.default
_OP_OUT = torch.ops.litelvlm.gather_tokens.out
