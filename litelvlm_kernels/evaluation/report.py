"""A budget sweep's rows, their cost figures, the markdown table and the plot (no lmms-eval needed).

One long-format row per (budget, task, metric): the metric's value and, for that budget, the
visual / prompt tokens the LLM saw (means over the task's prompts, measured by the ``litelvlm``
model) and what they cost in the LLM: prefill FLOPs (``litelvlm_kernels.flops``, the LM head of the
last position only, as ``generate`` computes it) and KV-cache bytes (``litelvlm_kernels.memory``),
both per prompt, from the model's own decoder shape. ``num_retain`` is an int or ``"all"`` (the
stock model, the baseline of the ratios).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from ..flops import DecoderConfig, prefill_flops
from ..memory import kv_cache_bytes

__all__ = ["budget_costs", "metric_rows", "markdown_table", "plot"]

KEEP_ALL = "all"


def budget_costs(records: Sequence[dict], cfg: DecoderConfig, dtype_bytes: int) -> dict:
    """Means over ``records`` (the ``litelvlm`` model's per-prompt counts) of tokens, prefill FLOPs and KV bytes.

    Each record has ``visual_tokens`` / ``prompt_tokens`` (stock) and ``kept_visual_tokens`` /
    ``kept_prompt_tokens`` (what the LLM saw)."""
    if not records:
        raise ValueError("records: no prompt with an image was evaluated, so there is nothing to cost")
    flops, kv = [], []
    for r in records:
        text = r["prompt_tokens"] - r["visual_tokens"]
        keep = None if r["kept_visual_tokens"] == r["visual_tokens"] else r["kept_visual_tokens"]
        flops.append(prefill_flops(cfg, r["visual_tokens"], text, keep=keep, include_lm_head="last"))
        kv.append(kv_cache_bytes(cfg, r["visual_tokens"], text, keep=keep, dtype_bytes=dtype_bytes))

    def mean(key):
        return statistics.fmean(r[key] for r in records)

    return {"prompts": len(records), "visual_tokens": mean("visual_tokens"),
            "kept_visual_tokens": mean("kept_visual_tokens"), "prompt_tokens": mean("prompt_tokens"),
            "kept_prompt_tokens": mean("kept_prompt_tokens"), "prefill_flops": statistics.fmean(flops),
            "kv_cache_bytes": statistics.fmean(kv)}


def metric_rows(num_retain, results: dict, costs_by_task: dict, context: dict) -> list:
    """Rows of one budget from lmms-eval's ``results`` (``{task: {"metric,filter": value, ...}}``).

    Numeric metrics only (not ``*_stderr``, not ``alias``); ``costs_by_task[task]`` from ``budget_costs``."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if name == "alias" or name.endswith("_stderr") or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)):
                continue
            rows.append({"num_retain": num_retain, "task": task, "metric": name, "filter": filt or "none",
                         "value": float(value), **costs_by_task.get(task, {}), **context})
    return rows


def _baseline(rows: Sequence[dict], task: str, key: str):
    base = [r[key] for r in rows if r["task"] == task and r["num_retain"] == KEEP_ALL and key in r]
    return base[0] if base else None


def _budget_order(r):
    return (math.inf if r == KEEP_ALL else r)


def selected(rows: Sequence[dict], metrics: Iterable[str] | None) -> list:
    """(task, metric) pairs to show: ``metrics`` where given, else the first metric of each task."""
    pairs = list(dict.fromkeys((r["task"], r["metric"]) for r in rows))
    if metrics:
        wanted = set(metrics)
        chosen = [p for p in pairs if p[1] in wanted]
        missing = wanted - {m for _, m in chosen}
        if missing:
            raise ValueError(f"metrics: {sorted(missing)} not in the results (have {sorted({m for _, m in pairs})})")
        return chosen
    first = {}
    for task, metric in pairs:
        first.setdefault(task, metric)
    return list(first.items())


def markdown_table(rows: Sequence[dict], metrics: Iterable[str] | None = None) -> str:
    """One line per (budget, task): kept tokens, FLOPs and KV cache (with the ratio to keep-all), then the metrics."""
    pairs = selected(rows, metrics)
    tasks = list(dict.fromkeys(t for t, _ in pairs))
    head = ["task", "num_retain", "visual tokens kept", "prefill TFLOPs", "KV cache MiB"]
    head += [m for _, m in dict.fromkeys(pairs)] if len(tasks) == 1 else [f"{t}: {m}" for t, m in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in tasks:
        budgets = sorted({r["num_retain"] for r in rows if r["task"] == task}, key=_budget_order)
        for b in budgets:
            rs = [r for r in rows if r["task"] == task and r["num_retain"] == b]
            r0 = rs[0]
            cells = [task, str(b), f"{r0['kept_visual_tokens']:.1f} / {r0['visual_tokens']:.1f}",
                     _with_ratio(r0["prefill_flops"] / 1e12, _ratio(rows, task, "prefill_flops", r0), ".3g"),
                     _with_ratio(r0["kv_cache_bytes"] / 2**20, _ratio(rows, task, "kv_cache_bytes", r0), ".1f")]
            for t, m in pairs:
                v = [r["value"] for r in rs if r["metric"] == m] if t == task else []
                cells.append(f"{v[0]:.4f}" if v else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ratio(rows, task, key, row):
    base = _baseline(rows, task, key)
    return row[key] / base if base else None


def _with_ratio(value, ratio, fmt) -> str:
    return f"{value:{fmt}}" + (f" ({ratio:.2f}x)" if ratio is not None else "")


def plot(rows: Sequence[dict], path: str, metrics: Iterable[str] | None = None, title: str | None = None) -> str:
    """PNG of each selected metric against the kept visual tokens per prompt, every point labelled with its
    budget, prefill TFLOPs and KV-cache MiB. Needs matplotlib (the ``plot`` extra)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    except ImportError as exc:
        raise ImportError('the sweep plot needs matplotlib: pip install "litelvlm_kernels[plot]"') from exc
    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labelled = set()  # the costs are per (task, budget): one label each, on the task's first metric
    for task, metric in selected(rows, metrics):
        rs = sorted((r for r in rows if r["task"] == task and r["metric"] == metric),
                    key=lambda r: _budget_order(r["num_retain"]))
        xs, ys = [r["kept_visual_tokens"] for r in rs], [r["value"] for r in rs]
        ax.plot(xs, ys, marker="o", label=f"{task}: {metric}")
        for r in rs:
            if (task, r["num_retain"]) in labelled:
                continue
            labelled.add((task, r["num_retain"]))
            ax.annotate(f"R={r['num_retain']}\n{r['prefill_flops'] / 1e12:.3g} TFLOPs\n"
                        f"KV {r['kv_cache_bytes'] / 2**20:.3g} MiB", (r["kept_visual_tokens"], r["value"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(x=0.15, y=0.15)  # room for the labels of the outermost points
    ax.set_xlabel("visual tokens the LLM sees per prompt (mean)")
    ax.set_ylabel("metric")
    ax.set_title(title or "accuracy vs kept visual tokens (prefill FLOPs and KV cache per prompt)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
