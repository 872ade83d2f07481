"""Dispatch overhead of torch.library on tiny inputs (CONVENTIONS.md item 9).

``python -m benchmarks.bench_dispatch``: times each op through
``torch.ops.litelvlm`` against the same kernel called as a plain Python
function, on inputs so small that the difference is the dispatcher's cost.
"""

from __future__ import annotations

import argparse

import torch

import litelvlm_kernels as lk
from litelvlm_kernels.ops import _cpu_select
from litelvlm_kernels.synthetic import clip_inputs

from .common import markdown_table, measure, make_row, write_rows


def cases(device):
    x = clip_inputs(1, 1, 8, 8, 8, 8, device=device)
    w, b = lk.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    s = _cpu_select.text_similarity(x.hidden, w, b, 1e-5)
    c = _cpu_select.cls_contribution(x.q_cls, x.keys, x.values)
    idx = torch.arange(4, device=device).view(1, 4)
    return {
        "text_similarity": (lambda: torch.ops.litelvlm.text_similarity(x.hidden, w, b, 1e-5),
                            lambda: _cpu_select.text_similarity(x.hidden, w, b, 1e-5)),
        "cls_contribution": (lambda: torch.ops.litelvlm.cls_contribution(x.q_cls, x.keys, x.values),
                             lambda: _cpu_select.cls_contribution(x.q_cls, x.keys, x.values)),
        "select_tokens": (lambda: torch.ops.litelvlm.select_tokens(s, c, 4),
                          lambda: _cpu_select.select_tokens(s, c, 4, 1, 0, "official", None)),
        "gather_tokens": (lambda: torch.ops.litelvlm.gather_tokens(x.hidden, idx),
                          lambda: torch.index_select(x.hidden[0], 0, idx[0])),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (1: a busy second core makes parallel ops wait, hiding the dispatcher)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for op, (via_op, direct) in cases(args.device).items():
        t_op, t_direct = measure(via_op, args.device), measure(direct, args.device)
        for provider, t in (("torch.ops", t_op), ("direct", t_direct)):
            rows.append(make_row(op, provider, {"B": 1, "M": 8}, torch.float32, t, device=args.device,
                                 overhead_us=(t_op["p50_ms"] - t_direct["p50_ms"]) * 1e3))
    print(markdown_table(rows, ["op", "provider", "p50_ms", "overhead_us"]))
    if not args.no_write:
        print("wrote", write_rows(rows, "dispatch", args.device))
    return rows


if __name__ == "__main__":
    main()
