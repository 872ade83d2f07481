"""The cached row counters (no fill kernel per call) and the warm-up.

Under the interpreter the caching logic runs on CPU tensors (stream and capture state are
passed explicitly); on a GPU the same properties are checked with real streams and a
CUDA-graph capture.
"""

import importlib

import _tri
import pytest
import torch
from _tri import tops

W = importlib.import_module("litelvlm_kernels.triton_ops._workspace")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available() or tops.interpret_mode(),
                               reason="needs a GPU (without TRITON_INTERPRET)")


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(W, "_BY_STREAM", {})
    monkeypatch.setattr(W, "_SPARES", {})
    monkeypatch.setattr(W, "_GRAPH_OWNED", [])
    return W


def test_one_buffer_per_stream(fresh_cache):
    dev = torch.device("cpu")
    a = W.row_counters(dev, 4, stream_key=1, capturing=False)
    b = W.row_counters(dev, 8, stream_key=1, capturing=False)
    other = W.row_counters(dev, 4, stream_key=2, capturing=False)
    assert a.data_ptr() == b.data_ptr(), "same stream: the cached buffer is reused"
    assert other.data_ptr() != a.data_ptr(), "two streams never share counters"
    assert a.tolist() == [0] * 4 and b.tolist() == [0] * 8
    big = W.row_counters(dev, 1000, stream_key=1, capturing=False)  # larger B: a new zeroed buffer
    assert big.numel() == 1000 and int(big.abs().sum()) == 0 and big.data_ptr() != a.data_ptr()


def test_capture_takes_a_dedicated_zeroed_buffer(fresh_cache):
    dev = torch.device("cpu")
    eager = W.row_counters(dev, 4, stream_key=7, capturing=False)  # leaves a spare for captures
    spare = W._SPARES[str(dev)]
    g1 = W.row_counters(dev, 4, stream_key=7, capturing=True)
    assert g1.data_ptr() == spare.data_ptr() and g1.data_ptr() != eager.data_ptr()
    assert str(dev) not in W._SPARES, "a spare serves one capture only"
    g2 = W.row_counters(dev, 4, capturing=True)  # no spare left: allocated in the capture
    assert g2.data_ptr() not in (g1.data_ptr(), eager.data_ptr()) and g2.tolist() == [0] * 4
    assert len(W._GRAPH_OWNED) == 2, "graph buffers are kept alive for the graphs"
    assert W.row_counters(dev, 4, stream_key=7, capturing=False).data_ptr() == eager.data_ptr()


def test_kernels_leave_the_counters_at_zero(fresh_cache, device):
    """fused_select and cls_contribution reuse the cached counters across calls: each call's
    finalisers reset them, so results stay correct and the buffer stays zero."""
    _tri.force_blocks(dict(BLOCK_M=16, BLOCK_D=32, BLOCK_F=64))
    x, w, b = _tri.inputs(3, 2, 50, 40, 24, device=device, seed=4)
    first = _tri.fused(x, w, b, 20)
    buf = W.row_counters(torch.device(device), 3)
    assert buf.cpu().tolist() == [0, 0, 0]
    for _ in range(2):
        _tri.assert_same(_tri.fused(x, w, b, 20), first, "repeated call")
        tops.cls_contribution(x.q_cls, x.keys, x.values)
        assert W.row_counters(torch.device(device), 3).data_ptr() == buf.data_ptr()
        assert buf.cpu().tolist() == [0, 0, 0]


def test_warmup_launches_each_variant_once(device, monkeypatch):
    calls = []
    FS = _tri.FS
    monkeypatch.setattr(FS, "_fused_select_kernel", _Recorder(FS._fused_select_kernel, calls))
    W_ = importlib.import_module("litelvlm_kernels.triton_ops.warmup")
    n = W_.warmup(device, hidden_dim=16, qk_dim=8, num_patches=(20, 30), num_texts=(1, 2), batch_sizes=(1, 2))
    # M = 20 and 30 share BLOCK_F = 256 and every block size but TB: T = 1, 2 -> 2 variants
    assert n == 2 and len(calls) == 2


class _Recorder:
    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append(kwargs)
            return self.kernel[grid](*args, **kwargs)

        return launch


@cuda_only
def test_cuda_two_streams_and_graph_counters():
    """Real streams: each has its own cached counters, zero after the kernels; a graph
    capture gets a dedicated buffer and its replays leave it at zero."""
    x, w, b = _tri.inputs(4, 2, 576, 256, 128, device="cuda", dtype=torch.float16, seed=3)
    args = (x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, 64)
    expected = tops.fused_select(*args)
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    bufs = []
    for st in (s1, s2):
        with torch.cuda.stream(st):
            _tri.assert_same(tops.fused_select(*args), expected)
            bufs.append(W.row_counters(torch.device("cuda"), 4))
    torch.cuda.synchronize()
    assert bufs[0].data_ptr() != bufs[1].data_ptr()
    assert all(int(bb.abs().sum()) == 0 for bb in bufs)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = tops.fused_select(*args)
    graph_buf = W._GRAPH_OWNED[-1]
    assert graph_buf.data_ptr() not in [bb.data_ptr() for bb in bufs]
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        _tri.assert_same(out, expected, "replay")
        assert int(graph_buf.abs().sum()) == 0
