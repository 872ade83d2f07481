"""Inputs and the reference of the gather_tokens tests (tests/test_gather_tokens*.py).

Reference: advanced indexing ``tokens[arange(B)[:, None], indices]``, i.e. the
same bytes torch.gather / index_select produce. A gather moves bytes, so every
comparison is exact (torch.equal), whatever the dtype.
"""

from __future__ import annotations

import pytest
import torch

import litelvlm_kernels.ops.gather_tokens  # noqa: F401  (loads _C: registers litelvlm::gather_tokens)

OP = torch.ops.litelvlm.gather_tokens

HAS_CUDA = torch.cuda.is_available()
CUDA_KERNEL = torch._C._dispatch_has_kernel_for_dispatch_key("litelvlm::gather_tokens", "CUDA")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8,
          torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128]
INDEX_DTYPES = [torch.int32, torch.int64]


@pytest.fixture(autouse=True)
def cuda_kernel_built(request):
    """Imported by the test modules: skips CUDA cases when _C has no CUDA kernel."""
    if "cuda" in request.node.name and HAS_CUDA and not CUDA_KERNEL:
        pytest.skip("litelvlm_kernels._C was built without CUDA kernels (see setup.py's message)")


def make_tokens(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        t = torch.randint(0, 2, shape, generator=g).bool()
    elif dtype.is_complex:
        t = torch.randn(shape, dtype=dtype, generator=g)
    elif dtype.is_floating_point:
        t = (torch.randn(shape, generator=g) * 100).to(dtype)
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g).to(dtype)
    return t.to(device)


def make_indices(B, M, R, dtype=torch.int64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    if M == 0:
        return torch.empty(B, R, dtype=dtype, device=device)
    return torch.randint(0, M, (B, R), generator=g).to(dtype).to(device)  # duplicates likely


def reference(tokens, indices):
    B = tokens.shape[0]
    rows = torch.arange(B, device=tokens.device)[:, None]
    return tokens[rows, indices.long()]
