"""Ahead-of-time compile of every kernel variant the launchers can pick, for sm_90, without
a GPU (tests/triton/aot_compile.py: the launch's real specialisation, triton's bundled
ptxas and cuobjdump).

The interpreter proves the logic but not that the GPU compiler accepts the code, nor that
ptxas fits it in registers: this fails on a compile error, a stack frame (STACK > 0 in
``cuobjdump -res-usage``) or ptxas spill stores > 0 in any variant.
"""

import os
import re
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
def test_kernels_compile_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.join(HERE, "aot_compile.py"), "--sm", "90"], env=env,
                       capture_output=True, text=True, timeout=3000)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-20000:] + r.stderr[-4000:]
    m = re.search(r"summary: (\d+) variants, 0 failed to compile, 0 with stack or spill stores > 0", r.stdout)
    assert m, r.stdout[-4000:]
    # every kernel appears: 4 kernels, several block classes each
    for k in ("_fused_select_kernel", "_select_tokens_kernel", "_cls_contribution_kernel", "_text_similarity_kernel"):
        assert f"ok    {k}" in r.stdout, k
    assert r.stdout.count("ok    ") == int(m.group(1))
