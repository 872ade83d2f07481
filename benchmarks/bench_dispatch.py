"""Per-call host overhead on tiny inputs (B = 1, M = 16, T = 2, Dv = D = P = 16).

``python -m benchmarks.bench_dispatch [--threads 1] [--no-write]``

On inputs this small the arithmetic takes well under a microsecond, so each time is what a call
costs before any work: Python, the dispatcher, argument checks, output allocation. Providers:

- ``torch.ops``: ``torch.ops.litelvlm.<op>`` (schema in C++, C++ CPU kernel that validates once);
- ``torch-composed``: the batched torch composition of the same op (``ops/_torch_select.py``,
  the default kernel of devices without their own) called as a plain Python function, without
  its argument checks: what the op costs when written as torch calls;
- ``index_select`` (gather_tokens only): ``torch.index_select`` on the same rows;
- ``api`` (prune only): ``litelvlm_kernels.prune`` with a FoldedText: its own checks, the fused
  op and the gather.

Targets (issue 13): fused_select <= 25 us and prune <= 60 us per call on the CPU.
Rows go to ``dispatch-<device>.json`` in the output folder
(``benchmarks/out/``, git-ignored, by default;
``--out DIR``; ``--publish``: ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse

import torch

import litelvlm_kernels as lk
from litelvlm_kernels.ops import _torch_select as TS
from litelvlm_kernels.synthetic import clip_inputs

from .common import make_row, markdown_table, measure, parse_run_args, write_rows

SHAPE = {"B": 1, "T": 2, "M": 16, "Dv": 16, "D": 16, "P": 16, "R": 8}


def cases(device):
    B, T, M, Dv, D, P, R = (SHAPE[k] for k in ("B", "T", "M", "Dv", "D", "P", "R"))
    x = clip_inputs(B, T, M, Dv, D, P, device=device, seed=0)
    text = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    w, b = text
    s = TS.text_similarity(x.hidden, w, b, 1e-5)
    c = TS.cls_contribution(x.q_cls, x.keys, x.values)
    idx = torch.arange(R, device=device).view(1, R)
    ops = torch.ops.litelvlm
    return {
        "fold_text": {"torch.ops": lambda: ops.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias),
                      "torch-composed": lambda: TS.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)},
        "text_similarity": {"torch.ops": lambda: ops.text_similarity(x.hidden, w, b, 1e-5),
                            "torch-composed": lambda: TS.text_similarity(x.hidden, w, b, 1e-5)},
        "cls_contribution": {"torch.ops": lambda: ops.cls_contribution(x.q_cls, x.keys, x.values),
                             "torch-composed": lambda: TS.cls_contribution(x.q_cls, x.keys, x.values)},
        "select_tokens": {"torch.ops": lambda: ops.select_tokens(s, c, R),
                          "torch-composed": lambda: TS.select_tokens(s, c, R, 1, 0, "official", None)},
        "fused_select": {
            "torch.ops": lambda: ops.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, R),
            "torch-composed": lambda: TS.select_tokens(TS.text_similarity(x.hidden, w, b, 1e-5),
                                                       TS.cls_contribution(x.q_cls, x.keys, x.values),
                                                       R, 1, 0, "official", None)},
        "gather_tokens": {"torch.ops": lambda: ops.gather_tokens(x.hidden, idx),
                          "index_select": lambda: torch.index_select(x.hidden[0], 0, idx[0])},
        "prune": {"api": lambda: lk.prune(x.hidden, text, x.q_cls, x.keys, x.values, num_retain=R)},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (1: a busy second core makes parallel ops wait, hiding the host cost)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median of the rounds' quantiles)")
    args, out = parse_run_args(p, argv)
    rows = []
    for op, providers in cases(args.device).items():
        # Interleaved rounds: load from other processes hits every provider alike.
        per_round = {name: [] for name in providers}
        for _ in range(args.rounds):
            for name, fn in providers.items():
                per_round[name].append(measure(fn, args.device))
        for name, ts in per_round.items():
            t = {k: sorted(r[k] for r in ts)[len(ts) // 2] for k in ts[0]}
            rows.append(make_row(op, name, SHAPE, torch.float32, t, device=args.device, p50_us=t["p50_ms"] * 1e3,
                                 threads=torch.get_num_threads()))
    print(markdown_table(rows, ["op", "provider", "p50_us", "p20_ms", "p80_ms"]))
    if not args.no_write:
        print("wrote", write_rows(rows, "dispatch", args.device, directory=out))
    return rows


if __name__ == "__main__":
    main()
