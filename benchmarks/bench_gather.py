"""gather_tokens vs torch.index_select vs torch.gather (issue 5's targets).

``python -m benchmarks.bench_gather [--quick] [--device cpu|cuda] [--threads 2]``

Providers, each producing the same [B, R, C] tensor from tokens [B, M, C] and
indices [B, R]:

- ``litelvlm``: the Python wrapper ``litelvlm_kernels.ops.gather_tokens`` (what
  users call; argument checks included);
- ``litelvlm.op``: ``torch.ops.litelvlm.gather_tokens`` directly;
- ``index_select``: ``tokens.view(B*M, C).index_select(0, flat)`` with the flat
  row indices (``indices + b*M``) precomputed outside the timed region: torch's
  cheapest gather (one memcpy per row), i.e. the strictest baseline;
- ``torch.gather``: ``torch.gather(tokens, 1, index)`` with the [B, R, C]
  expanded index precomputed;
- ``litelvlm.out`` / ``index_select.out``: the same two into a preallocated
  output (no allocation, no page faults: the copy alone).

On the CPU the providers' calls are interleaved one by one (random order,
>= 0.3 s and >= 40 calls each) and p50/p20/p80 are taken over the per-call
times (see ``_interleaved_cpu`` for why not ``common.measure`` here).
On CUDA, ``measure`` uses triton.testing.do_bench, and each row also
carries GB/s (bytes read + written: 2 * B*R*C*itemsize + indices) and the
percentage of a device-to-device copy measured in the same run (docs/design.md
section 7's 100% mark).

Writes ``gather-<device>.json`` (long format, one row per
provider and shape; ``vs_index_select`` = t(index_select) / t(provider), with
index_select's out= for the out= rows, so >= 0.95 meets the CPU target) and
prints a markdown table. Output folder: ``benchmarks/out/`` (git-ignored) by default,
``--out DIR``, or ``--publish`` for ``benchmarks/results/`` (refused with ``--quick``).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from litelvlm_kernels.ops.gather_tokens import gather_tokens

from .common import copy_bandwidth_gbs, make_row, markdown_table, measure, parse_run_args, write_rows

M = 576  # CLIP ViT-L/14-336 patch tokens (docs/design.md section 6)


def shapes(quick: bool, device: str):
    """(B, C, R) grid: B = 1 image, 5 tiles, 64 frames; C = Dv 1024 or an LLM width 4096."""
    if quick:
        return [(1, 1024, 64), (5, 1024, 192), (64, 4096, 192)]
    return [(B, C, R) for B in (1, 5, 64) for C in (1024, 4096) for R in (64, 192)]


def providers(tokens, indices):
    B, Mt, C = tokens.shape
    R = indices.shape[1]
    flat = (indices.long() + torch.arange(B, device=tokens.device)[:, None] * Mt).reshape(-1)
    rows = tokens.view(B * Mt, C)
    index = indices.long()[..., None].expand(B, R, C)
    op = torch.ops.litelvlm.gather_tokens.default
    out = torch.empty(B, R, C, dtype=tokens.dtype, device=tokens.device)
    out2d = out.view(B * R, C)
    return {
        "litelvlm": lambda: gather_tokens(tokens, indices),
        "litelvlm.op": lambda: op(tokens, indices),
        "index_select": lambda: rows.index_select(0, flat),
        "torch.gather": lambda: torch.gather(tokens, 1, index),
        # out= (no allocation): on the CPU a fresh 100 MB output costs ~30 ms of page
        # faults, 10x the copy itself, so these rows show the copy alone.
        "litelvlm.out": lambda: gather_tokens(tokens, indices, out=out),
        "index_select.out": lambda: torch.index_select(rows, 0, flat, out=out2d),
    }


def _interleaved_cpu(fns: Dict[str, Callable[[], object]], min_s: float = 0.3, min_calls: int = 40,
                     max_calls: int = 3000) -> Dict[str, Dict[str, float]]:
    """p50/p20/p80 per provider, the providers' calls interleaved one by one.

    Why not ``common.measure`` per provider on the CPU: this machine is shared,
    and while another process holds the second core every 2-thread parallel
    region (ours and torch's alike) waits a scheduler slice (~8 ms) for its
    second thread, in bursts of seconds to minutes. Timing the providers one
    after another lets such a burst land on one of them (0.35x or 3x "speedups"
    between two calls of the same code were seen). Calling them in turn, in a
    random order, gives every provider the same share of the bursts.
    """
    names = list(fns)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for n in names:  # warm-up
        fns[n]()
    rng = random.Random(0)
    calls = 0
    while calls < max_calls and (calls < min_calls or min(sum(v) for v in times.values()) < min_s):
        # A fresh random order each time: with a fixed cyclic order a provider would
        # always run right after the same one (e.g. after torch.gather's cache and
        # page-table churn), a bias of up to 20% seen here.
        order = rng.sample(names, len(names))
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
        calls += 1
    out = {}
    for n, v in times.items():
        q = torch.quantile(torch.tensor(v, dtype=torch.float64) * 1e3,
                           torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)).tolist()
        out[n] = {"p50_ms": q[0], "p20_ms": q[1], "p80_ms": q[2], "calls": len(v)}
    return out


def run(device: str, quick: bool, dtypes, grid: Optional[List[Tuple[int, int, int]]] = None,
        on_row: Optional[Callable[[dict], object]] = None) -> List[dict]:
    """Rows of every provider at every (B, C, R) of ``grid`` (default ``shapes(quick, device)``).

    ``on_row`` is called with each row as soon as it exists (``common.RowSink.add``
    writes it to disk), so a run cut short keeps the shapes measured before.
    """
    dev = torch.device(device)
    copy_gbs = copy_bandwidth_gbs(dev) if dev.type == "cuda" else None
    rows = []
    for dtype in dtypes:
        for B, C, R in (grid if grid is not None else shapes(quick, device)):
            g = torch.Generator().manual_seed(0)
            tokens = torch.randn(B, M, C, generator=g).to(dtype).to(dev)
            indices = torch.stack([torch.randperm(M, generator=g)[:R] for _ in range(B)]).to(dev)
            fns = providers(tokens, indices)
            expected = fns["index_select"]().view(B, R, C)
            for name, fn in fns.items():
                assert torch.equal(fn().view(B, R, C), expected), name
            del expected
            if dev.type == "cpu":
                t = _interleaved_cpu(fns)
            else:
                t = {name: measure(fn, dev) for name, fn in fns.items()}
            nbytes = 2 * B * R * C * tokens.element_size() + indices.numel() * indices.element_size()
            shape = {"B": B, "M": M, "C": C, "R": R}
            for name in fns:
                p50 = t[name]["p50_ms"]
                extra = {
                    "threads": torch.get_num_threads() if dev.type == "cpu" else None,
                    "index_dtype": "int64",
                    "method": "interleaved per call" if dev.type == "cpu" else "triton.testing.do_bench",
                    "gb_per_s": nbytes / (p50 * 1e-3) / 1e9,
                    # out= rows compare with index_select's out=, the others with index_select.
                    "vs_index_select":
                        t["index_select.out" if name.endswith(".out") else "index_select"]["p50_ms"] / p50,
                    "vs_torch_gather": t["torch.gather"]["p50_ms"] / p50,
                }
                if copy_gbs is not None:
                    extra["copy_gb_per_s"] = copy_gbs
                    extra["pct_of_copy"] = 100.0 * extra["gb_per_s"] / copy_gbs
                rows.append(make_row("gather_tokens", name, shape, dtype, t[name], device=dev, **extra))
                if on_row is not None:
                    on_row(rows[-1])
            del tokens, fns
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: both when CUDA is present)")
    p.add_argument("--quick", action="store_true", help="3 shapes, fp16 only")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the CPU runs (default 2)")
    args, out = parse_run_args(p, argv, "--quick")
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    dtypes = [torch.float16] if args.quick else [torch.float16, torch.float32]
    for device in devices:
        rows = run(device, args.quick, dtypes)
        cols = ["provider", "B", "C", "R", "dtype", "p50_ms", "p20_ms", "p80_ms", "gb_per_s", "vs_index_select",
                "vs_torch_gather"]
        if torch.device(device).type == "cuda":
            cols.append("pct_of_copy")
        print(f"\n## gather_tokens on {rows[0]['device']}, M={M}, int64 indices\n")
        print(markdown_table(rows, cols))
        if not args.no_write:
            print("\nwrote", write_rows(rows, "gather", device=device, directory=out))


if __name__ == "__main__":
    main()
