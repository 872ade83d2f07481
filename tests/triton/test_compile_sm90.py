"""Ahead-of-time compile of every kernel variant for sm_90, without a GPU (see aot_compile.py).

The interpreter proves the logic but not that the GPU compiler accepts the code: this
does, in a subprocess (TRITON_INTERPRET must be unset when triton is imported).
"""

import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _nvidia_backend():
    try:
        import triton

        return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))
    except Exception:
        return False


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU compiles the kernels for real in the other tests")
@pytest.mark.skipif(not _nvidia_backend(), reason="triton's NVIDIA backend (ptxas) is not installed")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.join(HERE, "aot_compile.py"), "90"], env=env,
                       capture_output=True, text=True, timeout=900)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert r.stdout.count("ok ") == 7
