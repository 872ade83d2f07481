"""Markdown tables and PNG plots from the benchmarks' long-format JSON rows.

    python -m benchmarks.report                       # every benchmarks/out/*.json, report + plots there
    python -m benchmarks.report --publish             # every benchmarks/results/*.json, report + plots there
    python -m benchmarks.report benchmarks/out/prefill-cpu.json --per-file --out /tmp/rep

Input: files written by ``benchmarks.common.write_rows``: a JSON list of rows
``{op, provider, shape: {...}, dtype, p50_ms, p20_ms, p80_ms, device, device_type,
torch, triton, timestamp, ...extra}``. Files that are not such a list (a
pytest-benchmark ``--benchmark-json`` dump, say) are skipped with a note.

Output, one report per device (``--per-file``: per input file) beside the rows: ``benchmarks/out/``
(git-ignored) by default, ``benchmarks/results/`` with ``--publish`` (from rows there only), or ``--out DIR``:

* ``REPORT-<device>.md``: per op, a table of every row (shape columns, dtype,
  p50/p20/p80 in ms, speed-up against the op's baseline provider, extra scalar
  fields), sorted by shape.
* ``plots/<device>-<op>-{time,speedup}-vs-<key>.png`` (needs matplotlib, the
  ``plot`` extra; without it the tables are still written): time (p50, p20-p80
  band) and speed-up against a token count (``tokens``, ``M``, ``R``, ``visual``)
  and against the batch ``B``, one line per provider and per value of the other
  varying shape keys.

Speed-up of a row = p50 of the baseline provider at the same shape and dtype /
the row's p50. Baseline: ``--baseline op=provider``, else the first provider of
the op found in ``BASELINES``; rows that carry their own ``speedup`` field
(``llm_prefill``: time at 576 tokens / time at this count) are plotted with it.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import sys
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import common

#: Baseline provider of an op when none is given: the first of these it has.
BASELINES = ("reference", "eager", "torch.gather", "torch_gather", "torch", "index_select", "torch.index_select")
#: Shape keys that count tokens, tried in this order for "vs tokens" plots.
TOKEN_KEYS = ("tokens", "M", "R", "visual", "num_retain", "n")
BATCH_KEYS = ("B", "batch")
STANDARD = {"op", "provider", "shape", "dtype", "p50_ms", "p20_ms", "p80_ms", "device", "device_type", "torch",
            "triton", "timestamp"}
MAX_LINES = 10


# ------------------------------------------------------------------- loading


def load_rows(paths: Sequence[str]) -> List[Tuple[str, List[dict]]]:
    """(path, rows) of every file that holds benchmark rows."""
    out = []
    for p in paths:
        try:
            with open(p) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"[report] skipping {p}: {e}", file=sys.stderr)
            continue
        if not (isinstance(data, list) and all(isinstance(r, dict) and "op" in r and "p50_ms" in r for r in data)):
            print(f"[report] skipping {p}: not a list of benchmark rows (benchmarks/common.py format)",
                  file=sys.stderr)
            continue
        out.append((p, data))
    return out


def device_slug(row: dict) -> str:
    """File-name-safe device name, as ``benchmarks.common.device_slug`` (without torch)."""
    if row.get("device_type", "cpu") != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", str(row.get("device", "cuda")).lower()).strip("-") or "cuda"


# ------------------------------------------------------------------- helpers


def _shape_keys(rows: Iterable[dict]) -> List[str]:
    keys: "OrderedDict[str, None]" = OrderedDict()
    for r in rows:
        for k in r.get("shape", {}):
            keys.setdefault(k, None)
    return list(keys)


def _extra_keys(rows: Iterable[dict]) -> List[str]:
    keys: "OrderedDict[str, None]" = OrderedDict()
    for r in rows:
        for k, v in r.items():
            if k not in STANDARD and (v is None or isinstance(v, (int, float, str, bool))):
                keys.setdefault(k, None)
    # a column that is None/equal everywhere says nothing per row: it goes to the header
    return [k for k in keys if len({json.dumps(r.get(k)) for r in rows}) > 1]


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10**6:
        return f"{v:.3g}"
    return str(v).replace("|", "\\|")


def _shape_id(r: dict, keys: Sequence[str]) -> tuple:
    return tuple((k, json.dumps(r.get("shape", {}).get(k))) for k in keys)


def baseline_provider(op: str, providers: Iterable[str], overrides: Dict[str, str]) -> Optional[str]:
    providers = list(providers)
    if op in overrides:
        return overrides[op] if overrides[op] in providers else None
    if len(set(providers)) < 2:
        return None
    return next((b for b in BASELINES if b in providers), None)


def speedups(rows: List[dict], baseline: Optional[str]) -> List[Optional[float]]:
    """Baseline p50 at the same shape and dtype / the row's p50 (None where no baseline row)."""
    if baseline is None:
        return [None] * len(rows)
    keys = _shape_keys(rows)
    base = {(_shape_id(r, keys), r.get("dtype")): r["p50_ms"] for r in rows if r["provider"] == baseline}
    out = []
    for r in rows:
        b = base.get((_shape_id(r, keys), r.get("dtype")))
        out.append(b / r["p50_ms"] if b is not None and r["p50_ms"] > 0 else None)
    return out


# -------------------------------------------------------------------- tables


def _constant_shape(rows: List[dict]) -> Dict[str, object]:
    """Shape keys with one value over all rows (listed once above the table, when there are 2+ rows)."""
    if len(rows) < 2:
        return {}
    return {k: rows[0]["shape"].get(k) for k in _shape_keys(rows)
            if len({json.dumps(r.get("shape", {}).get(k)) for r in rows}) == 1}


def op_table(rows: List[dict], baseline: Optional[str]) -> str:
    const = _constant_shape(rows)
    skeys = [k for k in _shape_keys(rows) if k not in const]
    extras = _extra_keys(rows)
    order = sorted(range(len(rows)), key=lambda i: (
        [_sort_key(rows[i].get("shape", {}).get(k)) for k in skeys], str(rows[i].get("dtype")),
        str(rows[i]["provider"])))
    sp = speedups(rows, baseline)
    cols = ["provider", *skeys, "dtype", "p50 ms", "p20 ms", "p80 ms"]
    if baseline is not None:
        cols.append(f"speed-up vs {baseline}")
    cols += extras
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i in order:
        r = rows[i]
        cells = [str(r["provider"]), *(_fmt(r.get("shape", {}).get(k)) for k in skeys), str(r.get("dtype", "")),
                 _fmt(r["p50_ms"]), _fmt(r.get("p20_ms")), _fmt(r.get("p80_ms"))]
        if baseline is not None:
            cells.append("" if sp[i] is None else f"{sp[i]:.2f}x")
        cells += [_fmt(r.get(k)) for k in extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _constant_fields(rows: List[dict]) -> List[str]:
    out = []
    for k in ("device", "torch", "triton"):
        vals = sorted({str(r.get(k)) for r in rows})
        out.append(f"{k}: {', '.join(vals)}")
    ts = sorted(str(r.get("timestamp")) for r in rows if r.get("timestamp"))
    if ts:
        out.append(f"measured: {ts[0]}" + (f" .. {ts[-1]}" if ts[-1] != ts[0] else ""))
    return out


# --------------------------------------------------------------------- plots


def _lines(rows: List[dict], x: str) -> Tuple[Dict[tuple, List[dict]], Dict[str, object]]:
    """Rows grouped into plot lines along shape key x; fixes other keys while there are too many lines."""
    skeys = [k for k in _shape_keys(rows) if k != x]
    xs = {json.dumps(r["shape"].get(x)) for r in rows}
    # keys that vary but are determined by x (visual = tokens - text) do not split lines
    varying = [k for k in skeys if len({json.dumps(r["shape"].get(k)) for r in rows}) > 1
               and len({(json.dumps(r["shape"].get(x)), json.dumps(r["shape"].get(k))) for r in rows}) > len(xs)]
    fixed: Dict[str, object] = {}

    def group(rs):
        g: Dict[tuple, List[dict]] = OrderedDict()
        for r in rs:
            key = (r["provider"], r.get("dtype"), *((k, r["shape"].get(k)) for k in varying if k not in fixed))
            g.setdefault(key, []).append(r)
        return g

    g = group(rows)
    # fix the keys with the most values first, each at its middle value
    for k in sorted(varying, key=lambda k: -len({json.dumps(r["shape"].get(k)) for r in rows})):
        if len(g) <= MAX_LINES:
            break
        distinct = sorted({json.dumps(r["shape"].get(k)) for r in rows}, key=lambda v: _sort_key(json.loads(v)))
        val = distinct[len(distinct) // 2]  # the middle value: M=576 of 196/576/2304
        fixed[k] = json.loads(val)
        rows = [r for r in rows if json.dumps(r["shape"].get(k)) == val]
        g = group(rows)
    return {k: sorted(v, key=lambda r: r["shape"][x]) for k, v in g.items() if len(v) >= 2}, fixed


def _label(key: tuple, dtypes: int) -> str:
    prov, dtype, *rest = key
    parts = [str(prov)] + ([str(dtype)] if dtypes > 1 else []) + [f"{k}={v}" for k, v in rest]
    return " ".join(parts)


def op_plots(rows: List[dict], op: str, slug: str, baseline: Optional[str], plot_dir: str) -> List[str]:
    """PNG plots of one op; returns their paths. Needs matplotlib (caller checks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    skeys = _shape_keys(rows)
    sp = speedups(rows, baseline)
    for r, s in zip(rows, sp):
        r["_speedup"] = r.get("speedup") if isinstance(r.get("speedup"), (int, float)) else s
    xs = [k for k in TOKEN_KEYS if k in skeys and len({r["shape"].get(k) for r in rows}) > 1][:1]
    xs += [k for k in BATCH_KEYS if k in skeys and len({r["shape"].get(k) for r in rows}) > 1][:1]
    ndt = len({r.get("dtype") for r in rows})
    for x in xs:
        if not all(isinstance(r["shape"].get(x), (int, float)) for r in rows):
            continue
        lines, fixed = _lines(rows, x)
        if not lines:
            continue
        note = (" (" + ", ".join(f"{k}={v}" for k, v in fixed.items()) + ")") if fixed else ""
        for kind in ("time", "speedup"):
            if kind == "speedup" and not any(r["_speedup"] is not None for v in lines.values() for r in v):
                continue
            fig, ax = plt.subplots(figsize=(6.4, 4.4))
            drawn: set = set()
            for key, rs in lines.items():
                if kind == "time":
                    xv = [r["shape"][x] for r in rs]
                    ax.plot(xv, [r["p50_ms"] for r in rs], marker="o", label=_label(key, ndt))
                    if all(r.get("p20_ms") is not None and r.get("p80_ms") is not None for r in rs):
                        ax.fill_between(xv, [r["p20_ms"] for r in rs], [r["p80_ms"] for r in rs], alpha=0.2)
                else:
                    pts = [(r["shape"][x], r["_speedup"]) for r in rs if r["_speedup"] is not None]
                    if key[0] == baseline or len(pts) < 2 or all(abs(p[1] - 1.0) < 1e-12 for p in pts):
                        continue  # the baseline against itself
                    ax.plot(*zip(*pts), marker="o", label=_label(key, ndt))
                    if x in TOKEN_KEYS and all(isinstance(r.get("macs_percent"), (int, float))
                                               and r["macs_percent"] > 0 for r in rs):
                        # what the MAC count alone predicts (litelvlm_kernels.flops); drawn once per curve
                        ideal = tuple((r["shape"][x], 100.0 / r["macs_percent"]) for r in rs)
                        if ideal not in drawn:
                            drawn.add(ideal)
                            ax.plot(*zip(*ideal), ls=":", marker=".", color="black",
                                    label="MACs ratio" + ("" if len(drawn) == 1 else f" ({len(drawn)})"))
            vals = sorted({r["shape"][x] for v in lines.values() for r in v})
            if vals[0] > 0 and vals[-1] / vals[0] >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xlabel(x)
            if kind == "time":
                ax.set_ylabel("time p50 (ms), band p20-p80")
                ymin = min(r["p50_ms"] for v in lines.values() for r in v)
                ymax = max(r["p50_ms"] for v in lines.values() for r in v)
                if ymin > 0 and ymax / ymin >= 20:
                    ax.set_yscale("log")
            else:
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
                ax.set_ylabel("speed-up" + (f" vs {baseline}" if baseline and op != "llm_prefill" else ""))
            device = rows[0].get("device", slug)
            ax.set_title(f"{op}: {'time' if kind == 'time' else 'speed-up'} vs {x}{note}\n{device}", fontsize=9)
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
                fig.tight_layout()
                os.makedirs(plot_dir, exist_ok=True)
                path = os.path.join(plot_dir, f"{slug}-{op}-{kind}-vs-{x}.png")
                fig.savefig(path, dpi=110)
                paths.append(path)
            plt.close(fig)
    for r in rows:
        r.pop("_speedup", None)
    return paths


# -------------------------------------------------------------------- report


def write_report(name: str, sources: List[str], rows: List[dict], out_dir: str, *, plots: bool = True,
                 overrides: Optional[Dict[str, str]] = None) -> Tuple[str, List[str]]:
    """Write ``REPORT-<name>.md`` (+ plots); return (markdown path, plot paths)."""
    overrides = overrides or {}
    ops: "OrderedDict[str, List[dict]]" = OrderedDict()
    for r in rows:
        ops.setdefault(r["op"], []).append(r)
    md = [f"# Benchmark report: {name}", "",
          "Generated by `python -m benchmarks.report` from " + ", ".join(
              f"`{os.path.relpath(s, out_dir)}`" for s in sources) + ".", ""]
    md += [f"- {line}" for line in _constant_fields(rows)]
    md += ["- times in milliseconds: p50 (p20, p80) of the per-call times", ""]
    plot_paths: List[str] = []
    have_mpl = plots
    if plots and importlib.util.find_spec("matplotlib") is None:
        print("[report] matplotlib not installed (pip install matplotlib, or the 'plot' extra): "
              "tables only", file=sys.stderr)
        have_mpl = False
    for op, rs in ops.items():
        base = baseline_provider(op, [r["provider"] for r in rs], overrides)
        md += [f"## {op}", ""]
        constant = [f"{k}={_fmt(v)}" for k, v in _constant_shape(rs).items()]
        constant += [f"{k}={_fmt(rs[0].get(k))}" for k in _extra_keys_all(rs) if k not in _extra_keys(rs)]
        if constant:
            md += ["Same for every row: " + ", ".join(constant), ""]
        md += [op_table(rs, base), ""]
        if have_mpl:
            for p in op_plots(rs, op, name, base, os.path.join(out_dir, "plots")):
                plot_paths.append(p)
                md += [f"![{os.path.basename(p)}]({os.path.relpath(p, out_dir)})", ""]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"REPORT-{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    return path, plot_paths


def _extra_keys_all(rows: List[dict]) -> List[str]:
    keys: "OrderedDict[str, None]" = OrderedDict()
    for r in rows:
        for k, v in r.items():
            if k not in STANDARD and v is not None and isinstance(v, (int, float, str, bool)):
                keys.setdefault(k, None)
    return list(keys)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                description="Markdown tables and PNG plots from benchmark rows")
    p.add_argument("files", nargs="*", help="rows files (default: every *.json in the report's folder)")
    common.add_output_args(p, "directory of the report and plots")
    p.add_argument("--per-file", action="store_true", help="one report per input file instead of per device")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--baseline", action="append", default=[], metavar="OP=PROVIDER",
                   help="baseline provider of an op for speed-ups (repeatable)")
    a = p.parse_args(argv)
    bad = [b for b in a.baseline if "=" not in b]
    if bad:
        p.error(f"--baseline wants OP=PROVIDER, got {bad[0]!r}")
    overrides = dict(b.split("=", 1) for b in a.baseline)
    out_dir = common.output_dir(p, a)
    # the rows' own folder: a report and its plots sit beside the rows they show
    src = common.RESULTS_DIR if common.publishes(out_dir) else common.OUT_DIR
    files = a.files or sorted(glob.glob(os.path.join(src, "*.json")))
    if common.publishes(out_dir) and not all(common.publishes(f) for f in files):
        p.error(f"{'--publish' if a.publish else '--out ' + a.out}: a report in benchmarks/results/ is drawn "
                f"only from rows there, not {[f for f in files if not common.publishes(f)]}")
    loaded = load_rows(files)
    if not loaded:
        print("[report] no benchmark rows found" + ("" if a.files else f" under {src}"), file=sys.stderr)
        return 1
    groups: "OrderedDict[str, Tuple[List[str], List[dict]]]" = OrderedDict()
    for path, rows in loaded:
        if a.per_file:
            groups[os.path.splitext(os.path.basename(path))[0]] = ([path], list(rows))
            continue
        for r in rows:
            g = groups.setdefault(device_slug(r), ([], []))
            if path not in g[0]:
                g[0].append(path)
            g[1].append(r)
    for name, (sources, rows) in groups.items():
        md, pngs = write_report(name, sources, rows, out_dir, plots=not a.no_plots, overrides=overrides)
        print(md)
        for png in pngs:
            print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
