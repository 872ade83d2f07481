"""The GPU benchmarks of ``scripts/gpu_check.sh`` (issue 10, item 4), one part per process.

``python -m benchmarks.gpu_bench {select,select-compile,gather,prefill} --out DIR [--device cuda]``

Each part reuses the provider functions of ``bench_select`` / ``bench_gather`` /
``bench_prefill`` and writes long-format rows (``common.make_row``) to
``DIR/<part>-<card>.json`` (``select-compile`` adds to ``select-<card>.json``) through ``common.RowSink``,
one row at a time, so a part killed by its time box keeps every row measured before. Times are
``triton.testing.do_bench`` medians after its warm-up (CUDA events), except the
``*.wall`` providers: host wall-clock time per eagerly called op (``common.wall_per_call``).

- ``select``: select + gather (fused_select + gather_tokens) at the CLIP ViT-L/14-336
  shapes of docs/design.md section 6 (M = 576, Dv = D = 1024, P = 768, T = 2, R = 192,
  fp16). B = 1: the eager ``reference``, ``ops`` (do_bench), ``ops.cudagraph`` (graph
  replay), ``ops.wall``, ``api`` / ``api.wall`` (``litelvlm_kernels.prune``); at both
  sizes ``release`` (the release's eager rule, ``bench_select._release_fn``) when
  bench_select has it, and ``speedup_vs_release``. B = 64
  (frames): ``ops``, ``ops.cudagraph``, ``ops.wall``, ``api``, ``api.wall`` with GB/s on the bytes that must be
  read (hidden + keys + values once) and % of a device-to-device copy timed in the same process
  (op ``d2d_copy``; docs/design.md section 7's 100% mark counts bytes read + written).
- ``select-compile``: ``reference.compile`` (``torch.compile`` of the reference) at B = 1,
  a part of its own because compiling takes tens of seconds.
- ``gather``: ``bench_gather.run`` at (B, C, R) = (64, 4096, 192), (1, 4096, 192) and
  (1, 1024, 192), fp16: % of the same copy, ratios to torch.gather and index_select.
- ``prefill``: ``bench_prefill.run`` with the LLaMA-7B / Vicuna-7B decoder (hidden 4096,
  32 heads, FFN 11008; random fp16 weights built on the GPU) at 576 + 64 tokens and
  192 / 128 / 64 visual + 64 text tokens, the pruning timed beside it, peak memory and
  KV-cache bytes per configuration. ``--layers N`` builds N layers and scales per layer.

``--device cpu`` runs the same code on tiny shapes (``--tiny``), for tests only.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks import bench_gather, bench_prefill, bench_select
from benchmarks.common import RowSink, make_row, measure, measure_copy, output_dir, wall_per_call

SELECT_SHAPE = {"T": 2, "M": 576, "Dv": 1024, "D": 1024, "P": 768, "R": 192}
TINY_SELECT = {"T": 2, "M": 100, "Dv": 64, "D": 64, "P": 32, "R": 24}
GATHER_GRID = [(64, 4096, 192), (1, 4096, 192), (1, 1024, 192)]  # (B, C, R)
TINY_GATHER = [(2, 64, 16)]


def _log(msg: str) -> None:
    print(f"[gpu_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _timed(fn, device, kind: str, rep_ms: float, tiny: bool = False):
    if kind == "wall":  # 7 x 100 calls on the GPU (~20 us each); a handful for the CPU tests
        return wall_per_call(fn, device, **({"calls": 3, "repeats": 3, "warmup": 1} if tiny else {}))
    return measure(fn, device, cuda_graph=(kind == "graph"), rep_ms=rep_ms)


def _check_select(x, folded, R) -> dict:
    """What the timed ops return, checked: the share of kept indices equal to the reference's (fp16
    near-ties may swap a few; the tests check the tolerance) and whether the gathered rows equal
    torch.gather's. Recorded in every row and logged, not raised: a wrong result is a finding of
    the run, and the timings of the other providers are still worth having."""
    from litelvlm_kernels.testing import assert_valid_indices

    idx, tokens = bench_select._ops_fn(x, folded, R)()
    try:
        assert_valid_indices(idx.cpu(), x.hidden.shape[1], R)
        valid = True
    except AssertionError as e:
        valid = False
        _log(f"select check: INVALID indices: {e}")
    safe = idx.clamp(0, x.hidden.shape[1] - 1)
    expected = torch.gather(x.hidden, 1, safe[..., None].expand(-1, -1, x.hidden.shape[-1]))
    gathered = bool(torch.equal(tokens, expected))
    ref_idx, _ = bench_select._reference_fn(x, R)()
    same = (torch.sort(idx, 1).values == torch.sort(ref_idx, 1).values).float().mean().item()
    _log(f"select check B={idx.shape[0]}: indices valid {valid}, {100 * same:.2f}% equal the reference's, "
         f"gathered rows {'equal' if gathered else 'DIFFER from'} torch.gather's")
    return {"indices_valid": valid, "indices_equal_reference": same, "tokens_equal_gather": gathered}


def _select_shape(sh: dict, B: int) -> dict:
    return {"B": B, **{k: sh[k] for k in ("T", "M", "Dv", "D", "P", "R")}}


def run_select(device, sink: RowSink, *, tiny: bool = False, rep_ms: float = 100.0, batches=(1, 64)):
    """Select + gather rows (see the module docstring) but ``reference.compile``; returns the rows."""
    import litelvlm_kernels as lk
    from litelvlm_kernels.synthetic import clip_inputs

    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    sh = TINY_SELECT if tiny else SELECT_SHAPE
    copy = None
    if cuda:
        copy = measure_copy(device)
        sink.add(make_row("d2d_copy", "torch.copy_", {"bytes": copy["bytes"]}, torch.float32,
                          {k: copy[k] for k in ("p50_ms", "p20_ms", "p80_ms")}, device=device, gbs=copy["gbs"]))
        _log(f"device-to-device copy: {copy['gbs']:.0f} GB/s (read + write)")
    t_ref, t_rel = {}, {}
    for B in batches:
        x = clip_inputs(B, sh["T"], sh["M"], sh["Dv"], sh["D"], sh["P"], text_batch=1, dtype=dtype,
                        device=device, seed=B)
        folded = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
        R = sh["R"]
        check = _check_select(x, folded, R)
        nbytes = B * sh["M"] * (sh["Dv"] + 2 * sh["D"]) * x.hidden.element_size()  # hidden + keys + values
        ops, api = bench_select._ops_fn(x, folded, R), bench_select._api_fn(x, folded, R)
        plan = [("ops", ops, "bench"), ("ops.cudagraph", ops, "graph"), ("ops.wall", ops, "wall"),
                ("api", api, "bench"), ("api.wall", api, "wall")]
        if not cuda:
            plan = [p for p in plan if p[2] != "graph"]
        if B == 1:  # first, for the speed-ups; at B = 64 its per-row Python loop would take the step's budget
            plan.insert(0, ("reference", bench_select._reference_fn(x, R), "bench"))
        release = getattr(bench_select, "_release_fn", None)  # the release's eager rule (another helper's)
        if release is not None:  # one image at a time in Python, ~ms a call: B = 64 fits the budget
            plan.insert(0, ("release", release(x, R), "bench"))
        for name, fn, kind in plan:
            try:
                t = _timed(fn, device, kind, rep_ms, tiny)
            except Exception as e:  # noqa: BLE001  (one provider failing must not cost the others)
                _log(f"{name} B={B}: FAILED {type(e).__name__}: {e}")
                continue
            if name == "reference":
                t_ref[B] = t["p50_ms"]
            if name == "release":
                t_rel[B] = t["p50_ms"]
            more = {"speedup_vs_release": t_rel[B] / t["p50_ms"]} if B in t_rel else {}
            _add_select_row(sink, name, _select_shape(sh, B), dtype, t, nbytes, t_ref.get(B), copy, device, check,
                            **more)
        del x, folded, ops, api
        if cuda:
            torch.cuda.empty_cache()
    return sink.rows


def run_select_compile(device, sink: RowSink, *, tiny: bool = False, rep_ms: float = 100.0):
    """``reference.compile`` at B = 1, added to the rows ``run_select`` wrote (``sink`` opened with append).

    A step of its own, the last of the run: torch.compile of the reference takes tens of
    seconds (graph breaks at its per-row loop), and a time box hit here costs no other figure.
    The eager reference's time and the copy bandwidth come from the rows already in ``sink``.
    """
    from litelvlm_kernels.synthetic import clip_inputs

    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    sh = TINY_SELECT if tiny else SELECT_SHAPE
    shape = _select_shape(sh, 1)
    ref = next((r for r in sink.rows if r.get("provider") == "reference" and r.get("shape") == shape), None)
    copy = next((r for r in sink.rows if r.get("op") == "d2d_copy"), None)
    x = clip_inputs(1, sh["T"], sh["M"], sh["Dv"], sh["D"], sh["P"], text_batch=1, dtype=dtype, device=device,
                    seed=1)
    nbytes = sh["M"] * (sh["Dv"] + 2 * sh["D"]) * x.hidden.element_size()
    fn = bench_select._compiled_reference_fn(x, sh["R"])
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compile_s = time.perf_counter() - t0
    _log(f"torch.compile(reference): first call {compile_s:.1f} s")
    t = _timed(fn, device, "bench", rep_ms, tiny)
    _add_select_row(sink, "reference.compile", shape, dtype, t, nbytes, ref and ref["p50_ms"], copy, device, None,
                    compile_s=compile_s)
    return sink.rows


def _add_select_row(sink, name, shape, dtype, t, nbytes, t_ref, copy, device, check, **more):
    gbs = nbytes / (t["p50_ms"] * 1e-3) / 1e9
    extra = dict(gbs=gbs, bytes=nbytes, **more, **(check or {}))
    if t_ref:
        extra["speedup_vs_reference"] = t_ref / t["p50_ms"]
    if copy:
        extra.update(copy_gbs=copy["gbs"], pct_of_copy=100.0 * gbs / copy["gbs"])
    sink.add(make_row("select+gather", name, shape, dtype, t, device=device, **extra))
    _log(f"select+gather {name:18s} B={shape['B']:<3d} p50 {t['p50_ms'] * 1e3:9.1f} us  {gbs:8.1f} GB/s"
         + (f"  x{extra['speedup_vs_reference']:.1f} vs reference" if t_ref else "")
         + (f"  {extra['pct_of_copy']:.0f}% of copy" if copy else ""))


def run_gather(device, sink: RowSink, *, tiny: bool = False):
    """gather_tokens rows at GATHER_GRID (fp16 on CUDA), written as they come."""
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    rows = bench_gather.run(str(device), False, [dtype], grid=TINY_GATHER if tiny else GATHER_GRID, on_row=sink.add)
    for r in rows:
        s = r["shape"]
        _log(f"gather {r['provider']:16s} B={s['B']:<3d} C={s['C']:<5d} p50 {r['p50_ms'] * 1e3:9.1f} us  "
             f"{r['gb_per_s']:8.1f} GB/s" + (f"  {r['pct_of_copy']:.0f}% of copy" if "pct_of_copy" in r else ""))
    return rows


def run_prefill(device, sink: RowSink, *, tiny: bool = False, layers=None, rep_ms: float = 300.0):
    """Prefill + prune rows (LLaMA-7B shapes on CUDA; a 2-layer h = 64 decoder with ``tiny``)."""
    from litelvlm_kernels.flops import DecoderConfig

    if tiny:
        cfg = DecoderConfig(hidden=64, intermediate=172, layers=2, heads=4, kv_heads=2, vocab=128)
        rows = bench_prefill.run(str(device), cfg, visual=48, keeps=(16,), text=8, rounds=2, layers=layers,
                                 on_row=sink.add)
    else:
        rows = bench_prefill.run(str(device), "llama-7b", visual=576, keeps=(192, 128, 64), text=64,
                                 rep_ms=rep_ms, layers=layers, on_row=sink.add)
    print(bench_prefill.summary(rows), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["select", "select-compile", "gather", "prefill"])
    p.add_argument("--out", required=True, help="directory of the JSON rows")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU tests of this code)")
    p.add_argument("--layers", type=int, default=None, help="prefill: decoder layers built (times scaled per layer)")
    p.add_argument("--rep-ms", type=float, default=None, help="do_bench time per measurement")
    a = p.parse_args(argv)
    a.out = output_dir(p, a, "--tiny" if a.tiny else None)  # tiny rows never go to benchmarks/results/
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2
    # select-compile adds its row to select-<card>.json (8 files at most come back from the device)
    sink = RowSink(a.part.split("-")[0], device=device, directory=a.out, append=a.part == "select-compile")
    _log(f"{a.part} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} -> {sink.path}")
    if a.part == "select":
        run_select(device, sink, tiny=a.tiny, rep_ms=a.rep_ms or 100.0)
    elif a.part == "select-compile":
        run_select_compile(device, sink, tiny=a.tiny, rep_ms=a.rep_ms or 100.0)
    elif a.part == "gather":
        run_gather(device, sink, tiny=a.tiny)
    else:
        run_prefill(device, sink, tiny=a.tiny, layers=a.layers, rep_ms=a.rep_ms or 300.0)
    _log(f"wrote {len(sink.rows)} rows to {sink.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
