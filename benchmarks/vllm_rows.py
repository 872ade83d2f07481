"""The vLLM benchmark's rows, targets and markdown (``benchmarks/bench_vllm.py`` measures; this reports).

Rows (``benchmarks/common.py`` long format): one ``vllm_serving`` row per workload and engine, ``vllm_encoder``
rows per image-path part, timed in the batch (``timing="batch"``: totals over the timed batch / its images) and
on one image (``timing="B=1"``: the median of ``--micro-rounds`` rounds of one request's image, new to the
engine). Speed-ups are against stock on the same workload.
"""

from __future__ import annotations

import torch

from .common import make_row, markdown_table
from .vllm_engine import PARTS, quantile

SELECTION_PARTS = ("selection", "fold_text", "last_layer_qkv", "prune_op")


def _sum(calls) -> float:
    return sum(dt for _, dt in calls)


def _count(calls) -> int:
    return sum(n or 0 for n, _ in calls)


def _median(xs) -> float:
    return float(torch.tensor(xs, dtype=torch.float64).median())


def serving_row(m: dict, stock: dict, base: dict, common: dict, dtype: str) -> dict:
    """The ``vllm_serving`` row of one measurement ``m`` (``bench_vllm.run_workload``) against ``stock``'s."""
    w, r = m["workload"], m["r"]
    ttft, n = m["ttft_s"], len(m["prompt_tokens"])
    enc = _sum(m["timers"]["encoder_step"])
    tower = m["timers"]["tower"]
    images_encoded = _count(tower) / w.views
    want = [t + m["expected_placeholders"] for t in stock["text_tokens"]]
    return make_row(
        "vllm_serving", "stock" if r is None else "litelvlm", {**base, "R": 576 if r is None else r}, dtype,
        {"p50_ms": quantile(ttft, 0.5) * 1e3, "p20_ms": quantile(ttft, 0.2) * 1e3,
         "p80_ms": quantile(ttft, 0.8) * 1e3}, **common,
        req_per_s=m["rps"], speedup=m["rps"] / stock["rps"], wall_s=m["wall_s"], cpu_s=m["cpu_s"],
        req_per_cpu_s=n / m["cpu_s"], speedup_cpu=(n / m["cpu_s"]) / (len(stock["prompt_tokens"]) / stock["cpu_s"]),
        encoder_s=enc, encoder_share=enc / m["wall_s"], ttft_p50_s=quantile(ttft, 0.5),
        ttft_p99_s=quantile(ttft, 0.99), ttft_vs_stock=quantile(ttft, 0.5) / quantile(stock["ttft_s"], 0.5),
        prompt_tokens=round(sum(m["prompt_tokens"]) / n), text_tokens=round(sum(stock["text_tokens"]) / n),
        placeholders=m["placeholders"][0], prompt_tokens_ok=m["prompt_tokens"] == want
        and set(m["placeholders"]) == {m["expected_placeholders"]},
        cached_tokens=round(sum(m["cached_tokens"]) / n), gen_tokens=m["gen_tokens"][0],
        block_size=m["block_size"], kv_blocks=m["num_blocks"], blocks_per_request=m["blocks_per_request"],
        kv_max_concurrent=m["kv_max_concurrent"], max_num_batched_tokens=m["max_num_batched_tokens"],
        tower_images=images_encoded, tower_calls=[c for c, _ in tower],
        tower_ms_per_image=_sum(tower) / images_encoded * 1e3 if images_encoded else None,
        tower_vs_stock=(_sum(tower) / images_encoded) / (_sum(stock["timers"]["tower"]) / (
            _count(stock["timers"]["tower"]) / w.views)) if images_encoded else None,
        engine_start_s=m["start_s"], load_before=m["load_before"], load_after=m["load_after"])


def encoder_rows(m: dict, base: dict, common: dict, dtype: str) -> list:
    """The ``vllm_encoder`` rows of one measurement: each part in the batch, and on one image (B=1)."""
    r, w = m["r"], m["workload"]
    provider, shape = ("stock" if r is None else "litelvlm"), {**base, "R": 576 if r is None else r}
    t = m["timers"]
    step = _sum(t["encoder_step"])
    images = _count(t["encoder_step"]) or len(m["prompt_tokens"])
    rows = []
    for part in PARTS:
        if not t.get(part):
            continue
        sec = _sum(t[part])
        ms = sec / images * 1e3
        rows.append(make_row("vllm_encoder", provider, {**shape, "timing": "batch", "part": part}, dtype,
                             {"p50_ms": ms, "p20_ms": None, "p80_ms": None}, **common, ms_per_image=ms,
                             images=images, calls=len(t[part]), share_of_encoder_step=sec / step if step else None,
                             tower_views=_count(t["tower"])))
    micro = m.get("micro") or {}
    step1 = _median(micro["encoder_step"]) if micro.get("encoder_step") else None
    for part in PARTS:
        xs = micro.get(part)
        if not xs:
            continue
        v = _median(xs)
        rows.append(make_row("vllm_encoder", provider, {**shape, "timing": "B=1", "part": part}, dtype,
                             {"p50_ms": v * 1e3, "p20_ms": min(xs) * 1e3, "p80_ms": max(xs) * 1e3}, **common,
                             ms_per_image=v * 1e3, images=1, calls=len(xs),
                             share_of_encoder_step=v / step1 if step1 else None, tower_views=w.views))
    return rows


def make_rows(results: list, common: dict, dtype: str) -> list:
    """Every row of the run: per workload, its engines' ``serving_row`` and ``encoder_rows``."""
    rows = []
    for m in results:
        w = m["workload"]
        stock = next(s for s in results if s["workload"] == w and s["r"] is None)
        base = dict(model=w.model, workload=w.name, images=w.images, questions=w.questions, requests=w.requests,
                    tower=m["tower"], llm=m["llm"], max_tokens=m["max_tokens"])
        rows.append(serving_row(m, stock, base, common, dtype))
        rows += encoder_rows(m, base, common, dtype)
    return rows


# ---------------------------------------------------------------------------------------------- targets


def _serving(rows, model, workload, provider=None, R=None) -> list:
    return [r for r in rows if r["op"] == "vllm_serving" and r["shape"]["model"] == model
            and r["shape"]["workload"] == workload and (provider is None or r["provider"] == provider)
            and (R is None or r["shape"]["R"] == R)]


def _speedup_target(rows, model, workload, r_target, goal, what) -> list:
    mine, (st,) = _serving(rows, model, workload, "litelvlm"), _serving(rows, model, workload, "stock") or (None,)
    at = [x for x in mine if x["shape"]["R"] == r_target]
    if not at or st is None:
        return []
    p = at[0]
    others = ", ".join(f"R={x['shape']['R']}: {x['speedup']:.2f}x" for x in mine)
    return [(f"{model} {workload}: R = {r_target}{what} >= {goal}x stock request throughput",
             f"{p['speedup']:.2f}x ({p['req_per_s']:.3f} vs {st['req_per_s']:.3f} req/s; per CPU-second "
             f"{p['speedup_cpu']:.2f}x; {others})", p["speedup"] >= goal)]


def targets(rows) -> list:
    """(target, measured, met) for issues 23 and 30."""
    out = _speedup_target(rows, "llava-1.5", "1q", 64, 2.0, "")
    out += _speedup_target(rows, "llava-next", "1q", 64, 3.0, " per view")
    out += _speedup_target(rows, "llava-1.5", "3q", 64, 1.8, " (3 questions per image)")
    enc = [r for r in rows if r["op"] == "vllm_encoder" and r["provider"] == "litelvlm"]
    for timing, what in (("batch", "in the timed batch"), ("B=1", "one new image and expression, median")):
        sel = [r for r in enc if r["shape"]["timing"] == timing and r["shape"]["part"] == "selection"]
        if sel:
            worst = max(sel, key=lambda r: r["share_of_encoder_step"])
            out.append((f"selection <= 2% of the image encoder step ({what}; the whole selection: text tower + fold, "
                        "last-layer q/k/v, select)",
                        ", ".join(f"{r['shape']['model']} {r['shape']['workload']} R={r['shape']['R']}: "
                                  f"{100 * r['share_of_encoder_step']:.2f}%" for r in sel),
                        worst["share_of_encoder_step"] <= 0.02))
    three = _serving(rows, "llava-1.5", "3q", "litelvlm")
    if three:
        out.append(("3 questions per image: the plugin's tower runs once per image (tower cache)",
                    ", ".join(f"R={r['shape']['R']}: {r['tower_images']:g} images encoded for "
                              f"{r['shape']['requests']} requests" for r in three),
                    all(r["tower_images"] == r["shape"]["images"] for r in three)))
    tower = [r for r in rows if r["op"] == "vllm_serving" and r["provider"] == "litelvlm" and r["tower_vs_stock"]]
    if tower:
        def calls(r):
            (st,) = _serving(rows, r["shape"]["model"], r["shape"]["workload"], "stock")
            return f"calls {r['tower_calls']} vs stock {st['tower_calls']}"
        out.append(("the plugin's tower per image <= stock's (the part it shares; in the batch)",
                    "; ".join(f"{r['shape']['model']} {r['shape']['workload']} R={r['shape']['R']}: "
                              f"{r['tower_vs_stock']:.2f}x ({calls(r)})" for r in tower),
                    all(r["tower_vs_stock"] <= 1.0 for r in tower)))
    serving = [r for r in rows if r["op"] == "vllm_serving" and r["provider"] == "litelvlm"]
    if serving:
        out.append(("prompt tokens exactly text + R' (engine's count, every request)",
                    ", ".join(f"{r['shape']['model']} {r['shape']['workload']} R={r['shape']['R']}: "
                              f"{r['text_tokens']} + {r['placeholders']}" for r in serving),
                    all(r["prompt_tokens_ok"] for r in serving)))
    return out


# --------------------------------------------------------------------------------------------- markdown


def header(title: str, args, r0: dict, about: str) -> list:
    """The first lines of both vLLM benchmarks' tables: the title with the device and commit, then how the
    engines ran and ``about`` (the model, the requests, the load)."""
    return [f"# {title} on {r0['device']} (commit {r0['commit']})", "",
            f"`{args.command}`: vLLM {r0['vllm']} (CPU), torch {r0['torch']}, {r0['dtype']}, eager, in-process "
            f"engines one at a time{about}", ""]


def load_line(serving: list) -> str:
    """The load average over the timed runs (other jobs on the 2 cores show in it)."""
    return (f"Load average (2 cores, other jobs running): {min(r['load_before'] for r in serving):.1f} .. "
            f"{max(r['load_after'] for r in serving):.1f}.")


def markdown(rows: list, args, runtime_s: float) -> str:
    serving = [r for r in rows if r["op"] == "vllm_serving"]
    enc = [r for r in rows if r["op"] == "vllm_encoder"]
    r0 = serving[0]
    lines = header("vLLM serving", args, r0, (
        f", prefix caching on. Model: random weights, CLIP {r0['shape']['tower']} tower ({r0['tower_params_m']} M "
        f"parameters) + {r0['shape']['llm']} LLM ({r0['llm_params_m']} M parameters). Each workload's requests (one "
        f"image each, {args.max_tokens} new tokens, greedy) submitted at once after a warm-up; KV cache "
        f"{args.kv_gib} GiB. {load_line(serving)} Full run: {runtime_s / 60:.1f} min.")) + [
             "Workloads: `llava-1.5 1q` one question per 336 px image; `llava-1.5 3q` three questions per image "
             "(stock encodes the image once and reuses its KV; the plugin's tower runs once per image); "
             "`llava-next 1q` one question per 672 x 672 image (base view + 2 x 2 tiles: 2928 placeholders stock, "
             "5 R + 48 for the plugin, R per view).", "",
             "## Engine", "",
             markdown_table(serving, ["model", "workload", "provider", "R", "requests", "req_per_s", "speedup",
                                      "ttft_p50_s", "ttft_p99_s", "prompt_tokens", "placeholders", "cached_tokens",
                                      "tower_images", "tower_calls", "tower_ms_per_image", "tower_vs_stock",
                                      "kv_max_concurrent", "wall_s", "encoder_s", "cpu_s", "speedup_cpu"]), "",
             "`speedup`: request throughput over stock's on the same workload. `cached_tokens`: prompt tokens per "
             "request served from the prefix cache. `tower_images`: images the tower ran on (calls: views per "
             "call); `tower_vs_stock`: the tower's time per image over stock's. TTFT from vLLM's request metrics.",
             "", "## Image path, timed inside the engine", "",
             markdown_table(enc, ["model", "workload", "provider", "R", "timing", "part", "ms_per_image",
                                  "share_of_encoder_step", "calls", "images"]), "",
             "`timing=batch`: totals over the timed batch divided by its images; `timing=B=1`: one image of the "
             f"batch through the model's `embed_multimodal` afterwards, new to the engine (tower and fold caches "
             f"emptied), median of {args.micro_rounds}. `selection`: the whole selection (`_select`: text tower + "
             "fold, scores incl. last-layer q/k/v, select); shares are of `encoder_step` (`embed_multimodal`).",
             "", "## Targets (issues 23 and 30)", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in targets(rows):
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


__all__ = ["make_rows", "markdown", "targets"]
