"""litelvlm::gather_tokens on CUDA only: vector-width paths, streams and graphs, a large
batch, the device-side assert (skipped without a GPU; the GPU check runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _gather import cuda_kernel_built, make_indices, make_tokens, reference, requires_cuda  # noqa: F401

from litelvlm_kernels.ops.gather_tokens import gather_tokens


@requires_cuda
@pytest.mark.parametrize("offset", [0, 1, 2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.uint8])
def test_cuda_alignment_paths(offset, dtype):
    # Offsets of the base pointer / odd C pick every vector width (16, 8, 4, 2, 1 bytes).
    base = make_tokens((3, 33, 1040), dtype, "cuda")
    tokens = base[:, :, offset:offset + 1024 - offset]
    indices = make_indices(3, 33, 17, torch.int32, "cuda")
    out = gather_tokens(tokens, indices)
    torch.cuda.synchronize()
    assert torch.equal(out, reference(tokens, indices))


@requires_cuda
def test_cuda_side_stream_and_graph():
    tokens = make_tokens((4, 64, 256), torch.float16, "cuda")
    indices = make_indices(4, 64, 16, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = gather_tokens(tokens, indices)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(out, reference(tokens, indices))
    # CUDA graph capture works only without host synchronisation.
    static_out = torch.empty(4, 16, 256, dtype=torch.float16, device="cuda")
    gather_tokens(tokens, indices, out=static_out)  # warm-up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gather_tokens(tokens, indices, out=static_out)
    indices.copy_(make_indices(4, 64, 16, device="cuda", seed=9))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, reference(tokens, indices))


@requires_cuda
def test_cuda_large_batch():
    tokens = make_tokens((64, 576, 4096), torch.float16, "cuda")
    indices = make_indices(64, 576, 192, device="cuda")
    assert torch.equal(gather_tokens(tokens, indices), reference(tokens, indices))


@requires_cuda
@pytest.mark.parametrize("bad", [576, -1])
def test_cuda_out_of_range_device_assert(bad):
    # A device-side assert poisons the CUDA context: run it in a fresh process.
    script = textwrap.dedent(f"""
        import torch
        from litelvlm_kernels.ops.gather_tokens import gather_tokens
        tokens = torch.randn(2, 576, 1024, device="cuda", dtype=torch.float16)
        indices = torch.zeros(2, 192, dtype=torch.int64, device="cuda")
        indices[1, 5] = {bad}
        out = gather_tokens(tokens, indices)
        torch.cuda.synchronize()
        print("NO ERROR")
    """)
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "NO ERROR" not in text, text
    assert "device-side assert" in text or "Assertion" in text, text
    # The kernel printf()s the bad value before asserting; device printf output is
    # flushed with the assert's own message, but we only require one of them.
    named = f"index {bad} out of range [0, 576) at indices[1, 5]" in text
    assert named or "m >= 0 && m < p.M" in text, text
