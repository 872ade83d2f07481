"""The short table ``scripts/gpu_check.sh`` prints last: each step's status, then the GPU figures
against issue 10's targets, read from the JSON rows the benchmarks wrote.

Pure functions of rows / step results (no torch, no GPU), so the tests run them on the CPU.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterable

US = 1e3  # ms -> us


def load_rows(directory: str) -> list[dict]:
    """Every row of every ``*.json`` list of rows in ``directory`` (other JSON files are skipped)."""
    rows: list[dict] = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(data, list):
            rows += [r for r in data if isinstance(r, dict) and "op" in r and "provider" in r]
    return rows


def _find(rows: Iterable[dict], op: str, provider: str, **shape) -> dict | None:
    for r in rows:
        if r.get("op") == op and r.get("provider") == provider and all(
                r.get("shape", {}).get(k) == v for k, v in shape.items()):
            return r
    return None


def _fig(name: str, value: float | None, fmt: str, target: str = "",
         ok: Callable[[float], bool] | None = None) -> dict:
    if value is None:
        return {"figure": name, "value": "not measured", "target": target, "met": None if not target else False}
    met = None if ok is None else bool(ok(value))
    return {"figure": name, "value": fmt.format(value), "target": target, "met": met}


def figures(rows: list[dict]) -> list[dict]:
    """Issue 10's figures from the rows: one dict per line (figure, value, target, met: True/False/None)."""
    out = []
    copy = _find(rows, "d2d_copy", "torch.copy_")
    out.append(_fig("device-to-device copy (read + write)", copy and copy.get("gbs"), "{:.0f} GB/s"))

    def sel(provider, B):
        return _find(rows, "select+gather", provider, B=B, M=576, R=192)

    p50 = {p: (sel(p, 1) or {}).get("p50_ms") for p in ("ops", "ops.cudagraph", "ops.wall", "api.wall",
                                                          "reference", "reference.compile")}
    us = {k: None if v is None else v * US for k, v in p50.items()}
    out.append(_fig("select+gather B=1, CUDA-graph replay", us["ops.cudagraph"], "{:.1f} us", "<= 10 us",
                    lambda v: v <= 10))
    out.append(_fig("select+gather B=1, eager wall per call (ops)", us["ops.wall"], "{:.1f} us", "<= 50 us",
                    lambda v: v <= 50))
    out.append(_fig("select+gather B=1, eager wall per call (lk.prune)", us["api.wall"], "{:.1f} us"))
    out.append(_fig("select+gather B=1, ops (do_bench median)", us["ops"], "{:.1f} us"))
    speed = p50["reference"] / p50["ops"] if p50["reference"] and p50["ops"] else None
    out.append(_fig("  eager reference / ops", speed, "{:.1f}x", ">= 30x", lambda v: v >= 30))
    speed_g = p50["reference"] / p50["ops.cudagraph"] if p50["reference"] and p50["ops.cudagraph"] else None
    out.append(_fig("  eager reference / ops graph replay", speed_g, "{:.1f}x"))
    speed_c = p50["reference.compile"] / p50["ops"] if p50["reference.compile"] and p50["ops"] else None
    out.append(_fig("  torch.compile(reference) / ops", speed_c, "{:.1f}x"))
    for B in (1, 64):
        rel, ops_b = sel("release", B), sel("ops", B)
        if rel and ops_b:
            out.append(_fig(f"  release's eager rule / ops, B={B}", rel["p50_ms"] / ops_b["p50_ms"], "{:.1f}x"))
    for B in (1, 64):  # the timed ops' own results (gpu_bench checks them before timing)
        r = sel("ops", B)
        if r and "indices_valid" in r:
            ok = bool(r["indices_valid"] and r["tokens_equal_gather"])
            value = (f"{'valid' if r['indices_valid'] else 'INVALID'} indices, "
                     f"{100 * r['indices_equal_reference']:.1f}% = reference, "
                     f"gather {'exact' if r['tokens_equal_gather'] else 'WRONG'}")
            out.append({"figure": f"select+gather B={B}: results checked", "value": value,
                        "target": "valid, gather exact", "met": ok})
    for prov in ("ops", "ops.cudagraph"):
        r = sel(prov, 64)
        out.append(_fig(f"select+gather B=64 {prov}: % of copy", r and r.get("pct_of_copy"), "{:.0f}%", ">= 80%",
                        lambda v: v >= 80))
        if r:
            out[-1]["value"] += f" ({r['gbs']:.0f} GB/s, {r['p50_ms'] * US:.0f} us)"
    g64 = _find(rows, "gather_tokens", "litelvlm", B=64, C=4096, R=192)
    out.append(_fig("gather B=64 C=4096 R=192: % of copy", g64 and g64.get("pct_of_copy"), "{:.0f}%", ">= 85%",
                    lambda v: v >= 85))
    for C in (4096, 1024):
        g1 = _find(rows, "gather_tokens", "litelvlm", B=1, C=C, R=192)
        out.append(_fig(f"gather B=1 C={C}: torch.gather / litelvlm", g1 and g1.get("vs_torch_gather"), "{:.2f}x",
                        "> 1x", lambda v: v > 1))
        out.append(_fig(f"gather B=1 C={C}: index_select / litelvlm", g1 and g1.get("vs_index_select"), "{:.2f}x"))
    out += _prefill_figures(rows)
    return out


def _prefill_figures(rows: list[dict]) -> list[dict]:
    pre = {r["shape"]["visual"]: r for r in rows if r.get("op") == "llm_prefill" and r["shape"].get("B") == 1}
    out = []
    full = pre.get(576)
    note = ""
    if full and full.get("layer_scale", 1) != 1:
        note = f" (x{full['layer_scale']:.0f} from {full['layers_built']} layers)"
    out.append(_fig("prefill 576+64 tokens" + note, full and full["p50_ms"], "{:.1f} ms"))
    for v in (192, 128, 64):
        r = pre.get(v)
        ratio = r["p50_ms"] / full["p50_ms"] if r and full else None
        out.append(_fig(f"prefill {v}+64 / 576+64", ratio, "{:.1%}", "<= 45%" if v == 192 else "",
                        (lambda x: x <= 0.45) if v == 192 else None))
    prune = _find(rows, "prune", "litelvlm", R=192)
    out.append(_fig("prune (lk.prune, R=192) / prefill 576+64", prune and prune.get("share_of_full_prefill"),
                    "{:.2%}", "< 1%", lambda x: x < 0.01))
    for v in (576, 192, 128, 64):
        r = pre.get(v)
        if r and r.get("peak_mem_bytes") is not None:
            out.append(_fig(f"peak memory / KV cache at {v}+64", r["peak_mem_bytes"] / 1e9, "{:.2f} GB"))
            out[-1]["value"] += f" / {r['kv_cache_bytes'] / 1e6:.1f} MB"
    return out


def steps_table(results: list[dict]) -> str:
    """One line per step: status, seconds against its budget, a note (pytest counts, sanitizer errors)."""
    lines = ["| step | status | s / budget | note |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['status']} | {r.get('seconds', 0):.0f} / {r['budget_s']} "
                     f"| {r.get('note', '')} |")
    return "\n".join(lines)


def figures_table(figs: list[dict]) -> str:
    """The figures as a markdown table; 'met' is yes / NO / blank (information only)."""
    lines = ["| figure | value | target | met |", "|---|---|---|---|"]
    for f in figs:
        met = "" if f["met"] is None else ("yes" if f["met"] else "NO")
        lines.append(f"| {f['figure']} | {f['value']} | {f['target']} | {met} |")
    return "\n".join(lines)


def render(results: list[dict], rows: list[dict], device: str = "") -> str:
    """The whole summary: header, steps, figures."""
    head = f"## gpu_check on {device}" if device else "## gpu_check"
    return "\n\n".join([head, steps_table(results), figures_table(figures(rows))]) + "\n"
