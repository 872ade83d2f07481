"""Select + gather: eager reference vs torch.compile(reference) vs the ops (issue 4's targets).

``python -m benchmarks.bench_select [--quick] [--device cpu|cuda] [--threads 2]``

Each provider maps the same CLIP-shaped inputs (T = 2 texts, Dv = D = 1024, P = 768:
CLIP ViT-L/14-336) to the kept indices AND the gathered tokens [B, R, Dv]:

- ``reference``: ``litelvlm_kernels.reference.prune`` (direct formulas: projects every
  token, sorts, unique / isin per row) + ``torch.gather``, eager;
- ``reference.compile``: the same function under ``torch.compile`` (default mode; the
  reference's per-row Python loop graph-breaks, which is what a user would get);
- ``release``: the public release's eager rule (``benchmarks/release_rule.py``): one image
  at a time, every token layer-normed and projected, sort, unique / isin, host syncs;
- ``ops``: ``torch.ops.litelvlm.fused_select`` on the folded text + ``gather_tokens``.
  On CUDA that is one Triton launch (plus the row counters' memset) and the gather
  kernel; on the CPU the lead's batched fast path;
- ``api``: ``litelvlm_kernels.prune`` with a FoldedText (the wrapper users call:
  argument checks included);
- ``ops.cudagraph`` (CUDA only): ``ops`` replayed from a CUDA graph, launch overhead out.

``--vs-release`` (issue 13's target): ``release`` vs ``api``, ``api.raw`` (prune on raw text
embeddings, folded inside the call) and ``ops`` at ViT-L/14-336, B in {1, 64}, R = 192 only;
a ``read.floor`` row times one read of hidden + keys + values (a sum each: the memory floor at
that B, same run); rows carry ``speedup_vs_release`` and ``us_per_image``, and go to
``select-vs-release-<device>.json`` with a markdown table beside it (.md);
with ``THP_MEM_ALLOC_ENABLE=1`` in the environment (torch's allocator then uses huge pages) the
CPU files are ``select-vs-release-thp-cpu.*``.

fold_text is done once outside the timed region (a text is folded once and reused).
Grid: B in {1, 8, 64}, M in {576, 2880}, R in {64, 192}; fp16 on CUDA, fp32 on the CPU.
``--quick`` (CPU smoke): B in {1, 8}, M = 576. On the CPU each shape is measured in
``--rounds`` interleaved rounds (every provider once per round; the median of the
rounds' quantiles is kept) so that load from other processes hits every provider alike. On the CPU,
shapes whose inputs exceed ``--max-gb`` are skipped (the reference's projection alone would need GBs).

Every row carries ``gbs`` (bytes of hidden + keys + values, read once, per second),
``speedup_vs_reference``, and on CUDA ``pct_of_copy``: gbs over the bandwidth of a
device-to-device copy measured in the same run (docs/design.md section 7's 100% mark; the
copy counts bytes read + written). Rows go to ``select-<device>.json``.

Output folder (``common.output_dir``): ``benchmarks/out/`` (git-ignored) by default, ``--out DIR``, or
``--publish`` for ``benchmarks/results/`` (the committed rows; refused with ``--quick``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

import litelvlm_kernels as lk
import litelvlm_kernels.ops  # noqa: F401  (registers torch.ops.litelvlm)
from benchmarks.common import (
    add_output_args,
    copy_bandwidth_gbs,
    git_commit,
    make_row,
    markdown_table,
    measure,
    output_dir,
    write_rows,
)
from benchmarks.release_rule import release_prune
from litelvlm_kernels import reference
from litelvlm_kernels.synthetic import CLIP_L14_336, clip_inputs

T_TEXTS = 2
# PyTorch's CPU allocator asks for transparent huge pages when this is set (read once, at the
# first allocation). Without them every call page-faults its fresh outputs 4 KB at a time: at
# B = 64 the 50 MB gathered tokens cost more in page faults than in copying. Rows record it.
THP = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1"


def _reference_fn(x, R):
    def run():
        idx, _, _ = reference.prune(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, x.q_cls,
                                    x.keys, x.values, R)
        tokens = torch.gather(x.hidden, 1, idx.unsqueeze(-1).expand(-1, -1, x.hidden.shape[-1]))
        return idx, tokens

    return run


def _release_fn(x, R):
    """The public release's eager rule (benchmarks/release_rule.py): the baseline of issue 13's 10x target."""
    args = (x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, x.q_cls, x.keys, x.values, R)
    return lambda: release_prune(*args)


def _api_raw_fn(x, R):
    """lk.prune on raw text embeddings: the text is folded inside every call."""
    def run():
        r = lk.prune(x.hidden, x.text_embeds, x.q_cls, x.keys, x.values, num_retain=R, proj_weight=x.proj_weight,
                     ln_weight=x.ln_weight, ln_bias=x.ln_bias)
        return r.indices, r.tokens

    return run


def _compiled_reference_fn(x, R):
    def body(hidden, text_embeds, proj_weight, ln_weight, ln_bias, q_cls, keys, values):
        idx, _, _ = reference.prune(hidden, text_embeds, proj_weight, ln_weight, ln_bias, q_cls, keys, values, R)
        return idx, torch.gather(hidden, 1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    f = torch.compile(body)
    args = (x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, x.q_cls, x.keys, x.values)
    return lambda: f(*args)


def _ops_fn(x, folded, R):
    w, b = folded.w, folded.b

    def run():
        idx, _, _ = torch.ops.litelvlm.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, R)
        return idx, torch.ops.litelvlm.gather_tokens(x.hidden, idx)

    return run


def _api_fn(x, folded, R):
    def run():
        r = lk.prune(x.hidden, folded, x.q_cls, x.keys, x.values, num_retain=R)
        return r.indices, r.tokens

    return run


def _read_floor_fn(x):
    """One read of the bytes a selection must read (hidden + keys + values) and nothing
    else: a sum per tensor. The memory floor of select at this B on this machine (at B = 1
    the 7 MB stay in cache between calls, at B = 64 they stream from DRAM)."""
    def run():
        return x.hidden.sum(), x.keys.sum(), x.values.sum()

    return run


def _median_quantiles(ts):
    return {k: sorted(t[k] for t in ts)[len(ts) // 2] for k in ts[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="CPU smoke grid: B in {1, 8}, M = 576")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--max-gb", type=float, default=1.0, help="CPU: skip shapes with more input GB than this")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile(reference) provider")
    ap.add_argument("--rep-ms", type=float, default=200.0)
    ap.add_argument("--vs-release", action="store_true",
                    help="issue 13's target: the release's eager rule vs prune at ViT-L/14-336, B in {1, 64}, R = 192; "
                         "writes select-vs-release-<device>.json and .md")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds per shape (default 3 on the CPU, 1 on CUDA)")
    add_output_args(ap)
    args = ap.parse_args(argv)
    out = output_dir(ap, args, "--quick" if args.quick else None)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.rounds is None:
        args.rounds = 1 if cuda else 3
    if not cuda:
        torch.set_num_threads(args.threads)
    dtype = torch.float16 if cuda else torch.float32
    Bs = [1, 8] if args.quick else [1, 8, 64]
    Ms = [576] if args.quick else [576, 2880]
    Rs = [64, 192]
    if args.vs_release:
        Bs, Ms, Rs = [1, 64], [576], [192]
    shape0 = dict(CLIP_L14_336)
    Dv, D, P = shape0["Dv"], shape0["D"], shape0["P"]

    copy_gbs = copy_bandwidth_gbs(device) if cuda else None
    if copy_gbs:
        print(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write) on {torch.cuda.get_device_name(device)}")

    rows = []
    for B, M, R in itertools.product(Bs, Ms, Rs):
        itemsize = torch.empty((), dtype=dtype).element_size()
        nbytes = B * M * (Dv + 2 * D) * itemsize  # hidden + keys + values, read once
        shape = dict(B=B, T=T_TEXTS, M=M, Dv=Dv, D=D, P=P, R=R)
        if not cuda and nbytes / 1e9 > args.max_gb:
            print(f"skip {shape}: {nbytes / 1e9:.2f} GB of inputs > --max-gb {args.max_gb}", file=sys.stderr)
            continue
        x = clip_inputs(B, T_TEXTS, M, Dv, D, P, text_batch=1, dtype=dtype, device=device, seed=B + M + R)
        folded = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
        if args.vs_release:
            providers = [("release", _release_fn(x, R)), ("api", _api_fn(x, folded, R)),
                         ("api.raw", _api_raw_fn(x, R)), ("ops", _ops_fn(x, folded, R)),
                         ("read.floor", _read_floor_fn(x))]
        else:
            providers = [("reference", _reference_fn(x, R)), ("release", _release_fn(x, R))]
            if not args.no_compile:
                providers.append(("reference.compile", _compiled_reference_fn(x, R)))
            providers += [("ops", _ops_fn(x, folded, R)), ("api", _api_fn(x, folded, R))]
        # Interleaved rounds (every provider once per round, median of the rounds'
        # quantiles): a burst of load on a shared machine hits every provider alike.
        per_round = {}
        for _ in range(args.rounds):
            for name, fn in providers:
                try:
                    per_round.setdefault(name, []).append(measure(fn, device, rep_ms=args.rep_ms))
                except Exception as e:  # a provider that cannot run here is reported, not fatal
                    print(f"{name} {shape}: {type(e).__name__}: {e}", file=sys.stderr)
        timings = {name: _median_quantiles(ts) for name, ts in per_round.items() if ts}
        if cuda:
            try:
                timings["ops.cudagraph"] = measure(_ops_fn(x, folded, R), device, cuda_graph=True,
                                                   rep_ms=args.rep_ms)
            except Exception as e:
                print(f"ops.cudagraph {shape}: {type(e).__name__}: {e}", file=sys.stderr)
        t_ref = timings.get("reference", {}).get("p50_ms")
        t_release = timings.get("release", {}).get("p50_ms")
        for name, t in timings.items():
            gbs = nbytes / (t["p50_ms"] * 1e-3) / 1e9
            extra = dict(gbs=gbs, bytes=nbytes)
            if t_ref:
                extra["speedup_vs_reference"] = t_ref / t["p50_ms"]
            if t_release:
                extra["speedup_vs_release"] = t_release / t["p50_ms"]
                extra["us_per_image"] = 1e3 * t["p50_ms"] / B
            if copy_gbs:
                extra["copy_gbs"] = copy_gbs
                extra["pct_of_copy"] = 100.0 * gbs / copy_gbs
            if not cuda:
                extra["threads"] = torch.get_num_threads()
                extra["thp_mem_alloc"] = THP
            row = make_row("select+gather", name, shape, dtype, t, device=device, **extra)
            rows.append(row)
            print(f"{name:18s} B={B:<3d} M={M:<5d} R={R:<4d} p50 {t['p50_ms'] * 1e3:10.1f} us  "
                  f"{gbs:8.1f} GB/s  x{extra.get('speedup_vs_reference', float('nan')):.1f} vs reference"
                  + (f"  x{extra['speedup_vs_release']:.1f} vs release" if t_release else "")
                  + (f"  {extra['pct_of_copy']:.0f}% of copy" if copy_gbs else ""))
        del x, folded
        if cuda:
            torch.cuda.empty_cache()

    if args.vs_release:
        path = write_rows(rows, "select-vs-release" + ("-thp" if THP and not cuda else ""), device=device,
                          directory=out)
        table = markdown_table(rows, ["provider", "B", "M", "R", "p50_ms", "p20_ms", "p80_ms", "us_per_image", "gbs",
                                      "speedup_vs_release"])
        with open(path[: -len(".json")] + ".md", "w") as f:
            f.write(f"select + gather, {rows[0]['device'] if rows else device}, {dtype}, torch {torch.__version__}, "
                    f"commit {rows[0]['commit'] if rows else git_commit()}, "
                    f"{args.rounds} interleaved rounds (median); release = benchmarks/release_rule.py"
                    + ("; THP_MEM_ALLOC_ENABLE=1" if THP and not cuda else "") + "\n\n"
                    f"{table}\n")
        print(table)
        print(f"wrote {len(rows)} rows to {path} and its .md table")
        return 0
    path = write_rows(rows, "select", device=device, directory=out)
    print(markdown_table(rows, ["provider", "B", "M", "R", "p50_ms", "gbs", "speedup_vs_reference"]
                         + (["pct_of_copy"] if copy_gbs else [])))
    print(f"wrote {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
