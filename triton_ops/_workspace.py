"""Device memory of the launches: per-call scratch in one allocation, and the row
counters, cached per (device, stream) and already zero (no fill kernel per call).

Counters. A kernel's row counter goes 0 -> NSPLIT (one atomic per program) and the row's
last program resets it to 0 before the kernel ends, so a buffer that starts at zero is
zero again after every launch. Launches on one stream run in order, hence one buffer per
(device, stream) is safe, and two streams never share one. Growing a buffer drops the
old one: the caching allocator gives its memory back to the same stream only, in order.

CUDA graphs. A captured kernel bakes in the counter address, and its replays may run on
any stream, so a capture never uses a stream's buffer: it takes a zeroed spare made
before the capture (an eager call or ``warmup`` leaves one per device) and keeps it for
the life of the process; each replay leaves it at zero again. With no spare ready, the
capture allocates zeros itself (a memset node in the graph, still correct).
"""

from __future__ import annotations

import threading

import torch

_LOCK = threading.Lock()
_BY_STREAM: dict = {}  # (device, stream handle) -> int32 buffer, zero between launches
_SPARES: dict = {}  # device -> zeroed int32 buffer for the next graph capture
_GRAPH_OWNED: list = []  # buffers baked into captured graphs: never freed
_MIN = 256  # counters allocated at least: B <= 256 never reallocates


def _default_stream_key(device: torch.device):
    if device.type != "cuda":
        return 0  # the interpreter (CPU) and meta tensors: launches are synchronous
    return torch.cuda.current_stream(device).cuda_stream


def _default_capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def row_counters(device: torch.device, n: int, *, stream_key=None, capturing=None) -> torch.Tensor:
    """[n] int32 counters, zero on entry, for a kernel that resets them before it ends.

    Parameters
    ----------
    device : torch.device
        Device of the launch.
    n : int
        Number of counters (rows).
    stream_key : hashable, optional
        Identity of the launch stream; defaults to the current CUDA stream's handle.
    capturing : bool, optional
        Whether a CUDA graph is being captured; defaults to torch's answer.

    Returns
    -------
    torch.Tensor
        A view of a cached buffer (eager) or a buffer owned by the graph (capture).

    Examples
    --------
    >>> c = row_counters(torch.device("cpu"), 4)
    >>> c.tolist()
    [0, 0, 0, 0]
    """
    key = str(device)
    if capturing is None:
        capturing = _default_capturing(device)
    with _LOCK:
        if capturing:
            spare = _SPARES.get(key)
            if spare is not None and spare.numel() >= n:
                del _SPARES[key]
            else:  # inside the capture: the zero fill becomes a node of the graph
                spare = torch.zeros(max(n, _MIN), dtype=torch.int32, device=device)
            _GRAPH_OWNED.append(spare)
            return spare[:n]
        sk = (key, _default_stream_key(device) if stream_key is None else stream_key)
        buf = _BY_STREAM.get(sk)
        if buf is None or buf.numel() < n:  # first launch on this stream (or a larger B): the only fill
            buf = torch.zeros(max(n, _MIN), dtype=torch.int32, device=device)
            _BY_STREAM[sk] = buf
        spare = _SPARES.get(key)
        if spare is None or spare.numel() < n:  # keep one ready for a later graph capture
            _SPARES[key] = torch.zeros(max(n, _MIN), dtype=torch.int32, device=device)
        return buf[:n]


def scratch(device: torch.device, parts):
    """Views of ONE uninitialised allocation, one per (shape, dtype) in parts, each
    starting on a 16-byte boundary (so triton sees the same pointer alignment as for
    separate allocations)."""
    sizes = []
    for shape, dtype in parts:
        n = 1
        for s in shape:
            n *= int(s)
        nbytes = n * torch.empty((), dtype=dtype).element_size()
        sizes.append((nbytes + 15) // 16 * 16)
    buf = torch.empty(max(16, sum(sizes)), dtype=torch.uint8, device=device)
    out, o = [], 0
    for (shape, dtype), nb in zip(parts, sizes):
        esz = torch.empty((), dtype=dtype).element_size()
        n = 1
        for s in shape:
            n *= int(s)
        out.append(buf[o:o + n * esz].view(dtype).view(tuple(shape)))
        o += nb
    return out
