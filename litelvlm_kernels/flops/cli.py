"""The ``python -m litelvlm_kernels.flops`` command: prefill MACs / FLOPs, KV cache and activations.

Formulas: ``litelvlm_kernels.flops`` (MACs) and ``litelvlm_kernels.memory``
(KV-cache bytes, peak activation bytes; what they count is written there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..memory import ATTENTION, prefill_memory
from . import PRESETS, DecoderConfig, prefill_breakdown, prefill_macs

MB = 1e6


def _rows(cfg: DecoderConfig, visual: int, text: int, keeps: Sequence[int | None], prune_layer: int,
          lm_head: str, dtype_bytes: int = 2, attention: str = "sdpa") -> list[dict[str, Any]]:
    base = prefill_macs(cfg, visual, text, include_lm_head=lm_head)
    rows = []
    for keep in keeps:
        layer = prune_layer if keep is not None else 0
        br = prefill_breakdown(cfg, visual, text, keep=keep, prune_layer=layer, include_lm_head=lm_head)
        mem = prefill_memory(cfg, visual, text, keep=keep, prune_layer=layer, dtype_bytes=dtype_bytes,
                             attention=attention)
        rows.append({
            "keep": keep,
            "visual_tokens": visual if keep is None else min(keep, visual),
            "text_tokens": text,
            "tokens": br["tokens_kept"],
            "prune_layer": None if keep is None else prune_layer,
            "macs": br["total"],
            "flops": 2 * br["total"],
            "tflops": 2 * br["total"] / 1e12,
            "percent_of_unpruned": 100.0 * br["total"] / base if base else 100.0,
            "attention_share": br["attention"] / br["total"] if br["total"] else 0.0,
            **mem,
        })
    return rows


def _table(rows: list[dict[str, Any]], title: str) -> str:
    head = ["keep", "visual", "text", "LLM tokens", "MACs", "FLOPs (T)", "% of unpruned", "KV cache (MB)",
            "activations (MB)"]
    body = [[
        "none" if r["keep"] is None else str(r["keep"]),
        str(r["visual_tokens"]),
        str(r["text_tokens"]),
        str(r["tokens"]) if r["prune_layer"] in (None, 0)
        else f"{r['tokens']} after layer {r['prune_layer']}",
        f"{r['macs']:,}",
        f"{r['tflops']:.3f}",
        f"{r['percent_of_unpruned']:.1f}",
        f"{r['kv_cache_bytes'] / MB:.1f}",
        f"{r['activation_bytes'] / MB:.1f}",
    ] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths))

    return "\n".join([title, line(head), line(["-" * w for w in widths]), *map(line, body)])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m litelvlm_kernels.flops",
        description="Prefill MACs/FLOPs, KV-cache bytes and peak activation bytes of a LLaMA-style decoder "
                    "with and without visual-token pruning.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="vicuna-7b",
                     help=f"preset: {', '.join(sorted(PRESETS))} (default vicuna-7b)")
    src.add_argument("--hf-config", metavar="CONFIG_JSON",
                     help="a Hugging Face config.json (LLaVA configs are read through text_config)")
    p.add_argument("--visual", type=int, default=576, help="visual tokens before pruning (576)")
    p.add_argument("--text", type=int, default=64, help="text/system tokens (64)")
    p.add_argument("--keep", type=int, nargs="*", default=[192, 128, 64],
                   help="visual tokens kept (several allowed; default 192 128 64)")
    p.add_argument("--prune-layer", type=int, default=0,
                   help="prune after this many LLM layers (0: before the LLM; FastV uses 2)")
    p.add_argument("--lm-head", choices=["none", "all", "last"], default="none",
                   help="count the LM head: for every position (plain forward) or the last (generate)")
    p.add_argument("--dtype-bytes", type=int, default=2, help="bytes per KV / activation element (2: fp16)")
    p.add_argument("--attention", choices=list(ATTENTION), default="sdpa",
                   help="eager materialises the heads x n x n probabilities (activation column)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)

    try:
        if args.hf_config:
            with open(args.hf_config) as f:
                cfg = DecoderConfig.from_hf(json.load(f))
            name = args.hf_config
        else:
            cfg = DecoderConfig.preset(args.model)
            name = args.model.lower()
        rows = _rows(cfg, args.visual, args.text, [None, *args.keep], args.prune_layer, args.lm_head,
                     args.dtype_bytes, args.attention)
    except (ValueError, TypeError, OSError) as e:
        p.error(str(e))  # exits with status 2

    if args.json:
        json.dump({"model": name, "config": dataclasses.asdict(cfg), "visual": args.visual,
                   "text": args.text, "prune_layer": args.prune_layer, "lm_head": args.lm_head,
                   "dtype_bytes": args.dtype_bytes, "attention": args.attention, "rows": rows},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        where = "before the LLM" if args.prune_layer == 0 else f"after LLM layer {args.prune_layer}"
        title = (f"{name}: h={cfg.hidden} h_ff={cfg.intermediate} L={cfg.layers} heads={cfg.heads} "
                 f"kv_heads={cfg.kv_heads}; {args.visual} visual + {args.text} text tokens; "
                 f"pruning {where}; lm_head={args.lm_head}; {args.dtype_bytes}-byte KV/activations, "
                 f"{args.attention} attention")
        print(_table(rows, title))
    return 0
