"""The torch.ops.litelvlm CUDA kernels registered by litelvlm_kernels/ops/triton_cuda.py.

Here (interpreter) the registered functions are called directly on CPU tensors, which
checks their argument plumbing and validation; on a GPU the ops themselves are checked:
dispatch to the Triton kernels, torch.compile, CUDA-graph capture and replay.
"""

import _tri
import pytest
import torch
from _tri import tops

import litelvlm_kernels.ops  # noqa: F401  (registers the ops)
from litelvlm_kernels.ops import triton_cuda

cuda_only = pytest.mark.skipif(not torch.cuda.is_available() or _tri.tops.interpret_mode(),
                               reason="needs a GPU (without TRITON_INTERPRET)")


def test_registered_kernels_call_the_launchers(device):
    x, w, b = _tri.inputs(2, 2, 40, 32, 16, device=device, seed=1)
    s = triton_cuda._text_similarity_cuda(x.hidden, w, b, 1e-5)
    assert torch.equal(s, tops.text_similarity(x.hidden, w, b, 1e-5))
    c = triton_cuda._cls_contribution_cuda(x.q_cls, x.keys, x.values, None)
    assert torch.equal(c, tops.cls_contribution(x.q_cls, x.keys, x.values))
    args = (x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 12)
    _tri.assert_same(triton_cuda._fused_select_cuda(*args, 1, 0, "spatial"), tops.fused_select(*args, order="spatial"))


def test_registered_kernels_validate(device):
    x, w, b = _tri.inputs(2, 2, 40, 32, 16, device=device, seed=1)
    with pytest.raises(ValueError):  # B mismatch between hidden and keys
        triton_cuda._fused_select_cuda(x.hidden, w, b, 1e-5, x.q_cls[:1], x.keys[:1], x.values[:1], 12)
    with pytest.raises(ValueError):  # T > R'
        triton_cuda._fused_select_cuda(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 1)
    with pytest.raises((TypeError, ValueError)):
        triton_cuda._text_similarity_cuda(x.hidden.to(torch.int32), w, b, 1e-5)


@cuda_only
def test_ops_dispatch_to_triton_on_cuda():
    x, w, b = _tri.inputs(3, 2, 577, 1000, 72, 40, device="cuda", dtype=torch.float16, seed=2)
    out = torch.ops.litelvlm.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 64)
    _tri.assert_same(out, tops.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 64))
    _tri.assert_matches_reference(out, *_tri.ref_scores(x), 64)
    s = torch.ops.litelvlm.text_similarity(x.hidden, w, b, 1e-5)
    assert torch.equal(s, tops.text_similarity(x.hidden, w, b, 1e-5))


@cuda_only
def test_compile_fullgraph_on_cuda():
    x, w, b = _tri.inputs(2, 2, 200, 256, 64, device="cuda", seed=3)
    f = torch.compile(lambda *a: torch.ops.litelvlm.fused_select(*a, 32, 1, 0, "official"), fullgraph=True)
    args = (x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values)
    _tri.assert_same(f(*args), torch.ops.litelvlm.fused_select(*args, 32))


@cuda_only
@pytest.mark.parametrize("B", [1, 8])
def test_cuda_graph_capture_replay(B):
    x, w, b = _tri.inputs(B, 2, 576, 1024, 1024, 768, device="cuda", dtype=torch.float16, seed=4)
    args = (x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 192)
    expected = tops.fused_select(*args)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (compile) outside the capture
        tops.fused_select(*args)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = tops.fused_select(*args)
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        _tri.assert_same(out, expected, "graph replay")
    # new data through the captured buffers
    x2, _, _ = _tri.inputs(B, 2, 576, 1024, 1024, 768, device="cuda", dtype=torch.float16, seed=5)
    for dst, src in ((x.hidden, x2.hidden), (x.keys, x2.keys), (x.values, x2.values), (x.q_cls, x2.q_cls)):
        dst.copy_(src)
    g.replay()
    torch.cuda.synchronize()
    _tri.assert_same(out, tops.fused_select(*args), "graph replay, new inputs")


@cuda_only
def test_concurrent_streams():
    """Per-call counters: two streams running the kernel at once do not interfere."""
    xs = [_tri.inputs(4, 2, 576, 512, 256, device="cuda", dtype=torch.float16, seed=10 + i) for i in range(2)]
    expected = [tops.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 64) for x, w, b in xs]
    streams = [torch.cuda.Stream() for _ in xs]
    outs = [[], []]
    torch.cuda.synchronize()
    for _ in range(20):
        for i, ((x, w, b), st) in enumerate(zip(xs, streams)):
            with torch.cuda.stream(st):
                outs[i].append(tops.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 64))
    torch.cuda.synchronize()
    for i in range(2):
        for o in outs[i]:
            _tri.assert_same(o, expected[i], f"stream {i}")
