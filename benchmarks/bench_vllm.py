"""What a deployment gains: stock vLLM vs the LiteLVLM plugin at R = 192 / 128 / 64, through the engine, on three
workloads side by side (LLaVA-1.5 one and three questions per image, LLaVA-NeXT one question per image).

``.venv-vllm/bin/python -m benchmarks.bench_vllm [--quick] [--retain 192 128 64] [--workloads ...] [--no-write]``
(the vLLM venv: ``scripts/install_vllm_cpu.sh``; docs/serving.md). ``--probe`` times one stock request per
LLM preset instead (how the LLM was chosen).

Full run (the default): CLIP ViT-L/14-336-shaped tower + ``llama-1.8b`` (hidden 2560, 24 layers, 20 heads of
128, MLP 6912, vocab 32000: 2.07 B parameters), bf16, 16 new tokens, 3 GiB of KV cache, prefix caching on
(stock then encodes an image once and reuses its KV across the questions about it: the fair comparison).
``--quick``: the tests' tiny tower (still 576 patches per view) and a tiny LLM, fewer images.

One process, one engine at a time (in-process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``distributed_executor_backend
="uni"``, eager), on random-weight checkpoints built offline (``vllm_checkpoints.py``, cached under
``build/bench_vllm/``): ``stock`` is vLLM's own LLaVA / LLaVA-NeXT, ``litelvlm`` the plugin with ``num_retain`` R
(per view for LLaVA-NeXT) and the expression per request. The workloads (``vllm_workloads.py``) run on every
engine of their model, LLaVA-1.5's two in the same engines (other images). Each: a warm-up on other images, then
all its requests submitted at once with one ``LLM.generate`` call. Measured per workload and engine:

- request throughput: requests / wall time of that call; TTFT p50 / p99 (vLLM's request metrics);
- prompt tokens per request (the engine's count) against text + R' (the layout's count), prefix-cache hits;
- KV blocks per request and the most such requests the KV cache holds;
- the encoder step, timed inside the engine (wall clock around the model's methods; CPU ops are synchronous):
  ``embed_multimodal`` (the whole image path), the vision tower (its calls and their sizes), the projector, and
  for the plugin its selection (``_select``) with its parts: ``fold_text`` (text tower + fold),
  ``last_layer_qkv`` and ``prune_op`` (the fused op; single-view layouts); in the batch and for one new image.

Rows (``vllm_rows.py``) go to ``vllm-serving-<device>.json``, the tables and the targets to
``vllm-serving-<device>.md``; in ``benchmarks/out/`` (git-ignored) by default, ``--out DIR``, or ``--publish`` for
``benchmarks/results/`` (refused with ``--quick``). ``python -m benchmarks.report`` draws the plots.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from .common import add_output_args, device_slug
from .vllm_checkpoints import build_checkpoint, checkpoint_params
from .vllm_engine import (
    CACHE_DIR,
    FULL,
    LLMS,
    QUICK,
    TOWERS,
    _remove_timers,
    add_engine_args,
    engine,
    have_vllm,
    in_process_env,
    install_timers,
    quantile,
    sampling,
    take_timers,
    tests_vllm,
    time_one_image,
)
from .vllm_rows import make_rows, markdown
from .vllm_workloads import workloads

WORKLOAD_NAMES = ("llava-1.5:1q", "llava-1.5:3q", "llava-next:1q")


def expected_placeholders(ck, w, r) -> int:
    """The placeholders of one of ``w``'s images: the layout's count (stock: every token)."""
    import transformers

    from litelvlm_kernels.selection.layouts.anyres import AnyRes

    if w.family == "llava":
        return 576 if r is None else min(r, 576)
    layout = AnyRes.from_config(transformers.AutoConfig.from_pretrained(ck.llava_dir))
    geo = layout.geometry((w.size[1], w.size[0]))
    return layout.stock_count(geo) if r is None else layout.kept_count(geo, r, "per_tile", "all")


def run_workload(llm, ck, w, r, args, tiny_llava, _compare, log=print) -> dict:
    """Warm-up, then ``w``'s requests at once on the engine ``llm`` (stock when r is None); the measurements."""
    load0 = os.getloadavg()[0]
    cfg = llm.llm_engine.vllm_config
    num_blocks, block_size = int(cfg.cache_config.num_gpu_blocks or 0), int(cfg.cache_config.block_size)
    sp = sampling(args.max_tokens)
    reqs = w.make(r, tiny_llava, _compare)
    warm = w.make(r, tiny_llava, _compare, warm=True)[:args.warmup * w.questions] if args.warmup else []
    t0 = time.perf_counter()
    if warm:
        llm.generate(warm, sp, use_tqdm=False)
    warm_s = time.perf_counter() - t0
    llm.apply_model(install_timers)
    t0, c0 = time.perf_counter(), time.process_time()
    outs = llm.generate(reqs, sp, use_tqdm=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    timers = llm.apply_model(take_timers)[0]
    micro = llm.apply_model(lambda m: time_one_image(m, args.micro_rounds))[0] if w.questions == 1 else {}
    llm.apply_model(_remove_timers)  # the next workload on this engine installs its own
    ids = [list(o.prompt_token_ids) for o in outs]
    placeholders = [x.count(ck.image_token_id) for x in ids]
    prompt, gen = [len(x) for x in ids], [len(o.outputs[0].token_ids) for o in outs]
    ttft = [o.metrics.first_token_latency for o in outs if getattr(o, "metrics", None) is not None]
    blocks = max(math.ceil((p + g) / block_size) for p, g in zip(prompt, gen))
    m = dict(workload=w, r=r, tower=ck.tower, llm=ck.llm, max_tokens=args.max_tokens, wall_s=wall, cpu_s=cpu,
             rps=len(reqs) / wall, micro=micro, prompt_tokens=prompt, gen_tokens=gen, placeholders=placeholders,
             text_tokens=[p - n for p, n in zip(prompt, placeholders)],
             expected_placeholders=expected_placeholders(ck, w, r),
             cached_tokens=[int(o.num_cached_tokens or 0) for o in outs], ttft_s=ttft, num_blocks=num_blocks,
             block_size=block_size, blocks_per_request=blocks, kv_max_concurrent=num_blocks // blocks,
             start_s=llm._bench_start_s, warmup_s=warm_s, timers=timers, load_before=load0,
             load_after=os.getloadavg()[0], max_num_batched_tokens=int(cfg.scheduler_config.max_num_batched_tokens))
    tower = timers["tower"]
    log(f"[bench_vllm] {w.model} {w.name} {'stock' if r is None else f'R={r}'}: {len(reqs)} requests in {wall:.1f} s "
        f"= {m['rps']:.3f} req/s; TTFT p50 {quantile(ttft, 0.5):.2f} s; prompt {sorted(set(prompt))}, cached "
        f"{sum(m['cached_tokens'])}; tower calls {[n for n, _ in tower]} {sum(dt for _, dt in tower):.1f} s; "
        f"encoder {sum(dt for _, dt in timers['encoder_step']):.1f} s; CPU {cpu:.0f} s; load {load0:.2f} -> "
        f"{m['load_after']:.2f}")
    return m


def run_model(group: list, args, tiny_llava, _compare, log=print) -> list:
    """Every engine (stock, then each R) of one model, each running ``group``'s workloads."""
    ck = build_checkpoint(args.tower, args.llm, args.dtype, cache_dir=Path(args.cache_dir), family=group[0].family)
    out = []
    for r in [None, *args.retain]:
        with engine(ck, r, max_num_seqs=max(8, *(w.requests for w in group)), kv_gib=args.kv_gib,
                    block_size=args.block_size, max_num_batched_tokens=args.max_num_batched_tokens) as llm:
            out += [run_workload(llm, ck, w, r, args, tiny_llava, _compare, log) for w in group]
    params = checkpoint_params(ck)
    for m in out:
        m["params"] = params
    return out


def _vllm_version():
    try:
        import vllm

        return vllm.__version__
    except Exception:
        return None


# --------------------------------------------------------------------------------------------- main


def probe(args, log=print) -> list:
    """One stock request (max_tokens=1) per LLM preset: its time, and the image path's share of it."""
    import dataclasses

    tiny_llava, _compare, _ = tests_vllm()
    (w,) = [dataclasses.replace(w, images=2) for w in workloads(False) if w.model == "llava-1.5" and w.name == "1q"]
    out = []
    for name in args.probe:
        a = argparse.Namespace(**{**vars(args), "llm": name, "max_tokens": 1, "retain": []})
        (m,) = run_model([w], a, tiny_llava, _compare, log)
        step = sum(dt for _, dt in m["timers"]["encoder_step"]) / 2
        log(f"[bench_vllm] probe {name}: {m['wall_s'] / 2:.2f} s per request (encoder {step:.2f} s/image, LLM "
            f"prefill + 1 token ~{m['wall_s'] / 2 - step:.2f} s); start {m['start_s']:.0f} s")
        out.append((name, m))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    """The options, preset filled in, ``out`` resolved by ``common.output_dir`` (no vLLM needed)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny tower + tiny LLM, fewer images: a smoke run")
    p.add_argument("--tower", choices=list(TOWERS))
    p.add_argument("--llm", choices=list(LLMS))
    add_engine_args(p, "images per workload", micro_rounds=3)
    p.add_argument("--retain", type=int, nargs="+", default=[192, 128, 64], help="R (per view for LLaVA-NeXT)")
    p.add_argument("--workloads", nargs="+", choices=WORKLOAD_NAMES, default=list(WORKLOAD_NAMES))
    p.add_argument("--images", type=int, help="images per workload (default: 8 / 4 / 4; --quick 4 / 2 / 2)")
    p.add_argument("--cache-dir", default=str(CACHE_DIR), help="where built checkpoints are kept")
    p.add_argument("--probe", nargs="*", metavar="LLM", help="time one stock request per LLM preset and exit")
    p.add_argument("--name", default="vllm-serving", help="results file stem")
    p.add_argument("--no-write", action="store_true")
    add_output_args(p)
    args = p.parse_args(argv)
    from .common import output_dir

    args.out = output_dir(p, args, "--quick" if args.quick else None)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    given = argv if argv is not None else sys.argv[1:]
    args.command = "python -m benchmarks.bench_vllm" + (" " + " ".join(given) if given else "")
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
    in_process_env(args.kv_gib)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if args.probe is not None:
        probe(argparse.Namespace(**{**vars(args), "probe": args.probe or list(LLMS)}))
        return []
    tiny_llava, _compare, _ = tests_vllm()
    chosen = [w for w in workloads(args.quick) if f"{w.model}:{w.name}" in args.workloads]
    if args.images:
        import dataclasses

        chosen = [dataclasses.replace(w, images=args.images) for w in chosen]
    results = []
    for model in dict.fromkeys(w.model for w in chosen):  # one model's engines at a time
        results += run_model([w for w in chosen if w.model == model], args, tiny_llava, _compare)
    p = results[0]["params"]
    common = dict(threads=torch.get_num_threads(), llm_params_m=round(p["llm_params"] / 1e6),
                  tower_params_m=round(p["tower_params"] / 1e6), kv_gib=args.kv_gib, vllm=_vllm_version())
    rows = make_rows(results, common, args.dtype)
    runtime = time.perf_counter() - t_start
    md = markdown(rows, args, runtime)
    print(md)
    if not args.no_write:
        print("wrote", *save(rows, md, args))
    print(f"[bench_vllm] total {runtime:.0f} s")
    return rows


if __name__ == "__main__":
    main()
