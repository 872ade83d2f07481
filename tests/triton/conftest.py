"""Triton kernel tests: on CUDA when a GPU is present, else on CPU tensors under the
interpreter. Run in their own process (TRITON_INTERPRET is read when triton is imported):

    TRITON_INTERPRET=1 pytest tests/triton

Without TRITON_INTERPRET=1 and without CUDA (or without triton) every test here is skipped.
"""

import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/_inputs.py
sys.path.insert(0, HERE)  # tests/triton/_tri.py

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
try:
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover
    HAS_TRITON = False
ON_CUDA = torch.cuda.is_available() and not INTERPRET

if not HAS_TRITON:
    _SKIP = "triton is not installed"
    collect_ignore_glob = ["test_*.py"]  # their imports need triton
elif not (INTERPRET or ON_CUDA):
    _SKIP = "needs a GPU or TRITON_INTERPRET=1 (run: TRITON_INTERPRET=1 pytest tests/triton)"
else:
    _SKIP = None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).startswith(HERE):
            item.add_marker(pytest.mark.interpret)
            if _SKIP:
                item.add_marker(pytest.mark.skip(reason=_SKIP))


@pytest.fixture
def device():
    """cuda on a GPU machine (real kernels), else cpu (interpreted kernels)."""
    return "cuda" if ON_CUDA else "cpu"


@pytest.fixture(autouse=True)
def _reset_block_overrides():
    """Tests force block sizes through the launchers' `_blocks` argument (via _tri.force_blocks): reset after each."""
    yield
    if HAS_TRITON and not _SKIP:
        import _tri

        _tri.force_blocks(None)
