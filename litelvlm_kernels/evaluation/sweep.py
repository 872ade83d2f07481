"""Budget sweep: one model, several ``num_retain`` values (and keep-all) on lmms-eval tasks.

::

    python -m litelvlm_kernels.evaluation.sweep \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,clip=openai/clip-vit-large-patch14-336 \\
        --tasks refcoco_bbox_rec_val pope --num_retain 64 128 192 all --out DIR

The model is loaded once (the ``litelvlm`` lmms-eval model, ``--model_args`` as for
``--model litelvlm`` but without ``num_retain``); for each budget LiteLVLM is re-enabled with it
(``all``: the stock model) and lmms-eval evaluates every task. Written to ``--out`` (default
``benchmarks/out/accuracy``, git-ignored; never ``benchmarks/results/``), after every budget:

* ``accuracy_sweep.json``: one row per (budget, task, metric) with the mean visual / prompt tokens
  the LLM saw and the prefill FLOPs and KV-cache bytes per prompt (``evaluation.report``);
* ``accuracy_sweep.md``: the table (first metric of each task, or ``--metrics``), with the command;
* ``accuracy_sweep.png``: the metrics against the kept visual tokens, each point labelled with its
  FLOPs and KV cache.

Tasks of a group are reported per subtask (the costs are measured per prompt of a task).
Run it where lmms-eval is installed (``.venv-lmms/bin/python -m ...`` on a CPU machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

DEFAULT_OUT = os.path.join("benchmarks", "out", "accuracy")
STEM = "accuracy_sweep"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m litelvlm_kernels.evaluation.sweep", description=__doc__.split("::")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_args", required=True,
                   help="the litelvlm model's arguments, as lmms-eval's --model_args, without num_retain "
                        "(pretrained=...,clip=...[,multi_text=...,dtype=...,device_map=cpu])")
    p.add_argument("--tasks", nargs="+", required=True, help="lmms-eval task names")
    p.add_argument("--num_retain", nargs="+", required=True,
                   help="budgets: ints > 0 (visual tokens kept per image / tile / frame) and/or 'all' (stock)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}, git-ignored)")
    p.add_argument("--include_path", default=None, help="folder of extra task yaml files, as lmms-eval's")
    p.add_argument("--limit", type=float, default=None, help="samples per task (int) or fraction, as lmms-eval's")
    p.add_argument("--gen_kwargs", default=None, help="generation overrides, as lmms-eval's (max_new_tokens=16)")
    p.add_argument("--metrics", nargs="+", default=None, help="metrics for the table and plot (default: the "
                                                               "first of each task)")
    p.add_argument("--device", default=None, help="as lmms-eval's --device (cpu, cuda:0)")
    p.add_argument("--force_simple", action="store_true", help="the simple llava_hf class instead of the chat one")
    p.add_argument("--verbosity", default="WARNING", help="lmms-eval's log level")
    return p


def budgets(values: Sequence[str]) -> list:
    """``--num_retain`` values -> [int or "all"] (ValueError / TypeError naming ``--num_retain``)."""
    from .lmms_eval.arguments import KEEP_ALL, parse_num_retain

    out = []
    for v in values:
        r = parse_num_retain(v, "--num_retain")
        out.append(KEEP_ALL if r is None else r)
    if len(set(out)) != len(out):
        raise ValueError(f"--num_retain: repeated budgets in {list(values)}")
    return out


def _check_model_args(model_args: str) -> None:
    keys = [kv.split("=", 1)[0].strip() for kv in model_args.split(",") if kv.strip()]
    if "num_retain" in keys:
        raise ValueError("--model_args: leave num_retain out; the sweep sets it from --num_retain")


def _context(lm, args) -> dict:
    import importlib.metadata as md

    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"model_args": args.model_args, "device": str(lm.device), "lmms_eval": md.version("lmms_eval"),
            "transformers": transformers.__version__, "torch": torch.__version__, "commit": commit,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _costs(records, cfg, dtype_bytes) -> dict:
    from .report import budget_costs

    by_task: dict = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    return {task: budget_costs(rs, cfg, dtype_bytes) for task, rs in by_task.items()}


def write(rows: list, out: str, command: str, metrics=None, plots: bool = True) -> dict:
    """Write the JSON rows, the markdown table and (``plots``) the PNG into ``out``; their paths."""
    from .report import markdown_table, plot

    os.makedirs(out, exist_ok=True)
    paths = {"json": os.path.join(out, STEM + ".json"), "md": os.path.join(out, STEM + ".md")}
    with open(paths["json"], "w") as f:
        json.dump(rows, f, indent=1)
    head = rows[0] if rows else {}
    with open(paths["md"], "w") as f:
        f.write(f"# Accuracy vs visual-token budget\n\n`{command}`\n\nmodel_args `{head.get('model_args')}`, device "
                f"{head.get('device')}, lmms-eval {head.get('lmms_eval')}, transformers {head.get('transformers')}, "
                f"torch {head.get('torch')}, commit {head.get('commit')}. Tokens, FLOPs and KV cache are means per "
                "prompt; the ratios are to num_retain=all (the stock model).\n\n")
        f.write(markdown_table(rows, metrics))
    if plots:
        paths["png"] = plot(rows, os.path.join(out, STEM + ".png"), metrics)
    return paths


def run(args, argv: Sequence[str] = ()) -> dict:
    """The sweep of parsed ``args`` (``argv``: the command line they came from, quoted in the table); returns
    the written paths."""
    from ..flops import DecoderConfig
    from .lmms_eval.runner import evaluate, load_model
    from .report import metric_rows

    values = budgets(args.num_retain)
    _check_model_args(args.model_args)
    first = values[0]
    lm = load_model(f"{args.model_args},num_retain={first}", device=args.device, force_simple=args.force_simple)
    lm.keep_loaded = True  # lmms-eval's clean() after each evaluation would delete the model
    cfg = DecoderConfig.from_hf(lm.model.config)
    dtype_bytes = next(lm.model.parameters()).element_size()
    context = _context(lm, args)
    command = "python -m litelvlm_kernels.evaluation.sweep " + shlex.join(argv)
    rows: list = []
    paths: dict = {}
    for b in values:
        lm.set_num_retain(b)
        lm.litelvlm_records.clear()
        result = evaluate(lm, args.tasks, include_path=args.include_path,
                          limit=int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit,
                          gen_kwargs=args.gen_kwargs, verbosity=args.verbosity)
        costs = _costs(lm.litelvlm_records, cfg, dtype_bytes)
        measured = {t: m for t, m in result["results"].items() if t in costs}  # groups: their subtasks only
        rows += metric_rows(b, measured, costs, context)
        paths = write(rows, args.out, command, args.metrics, plots=False)
        print(f"[sweep] num_retain={b}: {len(measured)} task(s) evaluated; rows in {paths['json']}", flush=True)
    paths = write(rows, args.out, command, args.metrics)
    with open(paths["md"]) as f:
        print(f.read())
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    run(parser().parse_args(argv), argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
