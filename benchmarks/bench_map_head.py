"""What the SigLIP contribution costs per view: head_qkv, map_contribution (exact / heads), CLIP's for scale.

``python -m benchmarks.bench_map_head [--threads 1] [--rounds 3] [--batch 1 5] [--quick] [--no-write]``

Providers, interleaved round by round (every provider once per round; the median of
the rounds' quantiles is kept) so that load from other processes hits all alike:

- ``head_qkv``: q from the probe and the k, v GEMM ([B*M, D] x [D, 2D]) over the
  post-layernormed tower output y; the pooling head runs the same GEMM itself;
- ``map_contribution-exact``: per-head softmax, a_hj v_hj, one [B*M, D] x [D, D] GEMM
  for W_o and the norms (docs/design.md section 10);
- ``map_contribution-heads``: the same without W_o;
- ``head-attention``: the head's own ``nn.MultiheadAttention(probe, y, y)`` (stock, what
  the tower computes anyway), for scale;
- ``cls_contribution``: CLIP's [CLS] contribution (``litelvlm_kernels.ops.cls_contribution``)
  at ViT-L/14-336's shape, for scale.

Shapes: SigLIP so400m-patch14-384 (M = 729, D = 1152, H = 16) and CLIP ViT-L/14-336
(M = 576, D = 1024); B = 1 (one image) and 5 (LLaVA-OneVision's base view + 4 tiles).
``--quick``: tiny shapes (the smoke test). fp32, random weights (the cost does not
depend on the values). The head is duck-typed: a probe and an ``nn.MultiheadAttention``,
the parts of transformers' ``SiglipMultiheadAttentionPoolingHead`` that ``head_qkv`` reads.
Rows go to ``map-head-<device>.json``, the table to ``map-head-<device>.md``, in the output folder
(``benchmarks/out/``, git-ignored, by default;
``--out DIR``; ``--publish``: ``benchmarks/results/``; refused with ``--quick``).
"""

from __future__ import annotations

import argparse

import torch

from litelvlm_kernels import head_qkv, map_contribution
from litelvlm_kernels.ops import cls_contribution

from .common import make_row, markdown_table, measure, parse_run_args, write_report

SIGLIP = {"full": dict(model="siglip-so400m-384", M=729, D=1152, H=16),
          "quick": dict(model="tiny-siglip", M=49, D=64, H=4)}
CLIP = {"full": dict(model="clip-vit-l-336", M=576, D=1024, H=16),
        "quick": dict(model="tiny-clip", M=49, D=64, H=4)}


def build_head(D: int, H: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    head = torch.nn.Module()
    head.probe = torch.nn.Parameter(torch.randn(1, 1, D))
    head.attention = torch.nn.MultiheadAttention(D, H, batch_first=True)
    return head.eval()


def providers(head, y, clip_q, clip_k, clip_v):
    """name -> (callable, MACs of its matrix products)."""
    B, M, D = y.shape
    H = head.attention.num_heads
    q, k, v = head_qkv(head, y)
    w_o = head.attention.out_proj.weight
    probe = head.probe.expand(B, 1, D)
    Mc, Dc = clip_k.shape[1:]
    return {
        "head_qkv": (lambda: head_qkv(head, y), B * M * D * 2 * D + D * D),
        "map_contribution-exact": (lambda: map_contribution(q, k, v, w_o, H), B * M * D * (D + 1)),
        "map_contribution-heads": (lambda: map_contribution(q, k, v, None, H, mode="heads"), B * M * D),
        "head-attention": (lambda: head.attention(probe, y, y, need_weights=False),
                           B * M * D * (2 * D + 2) + B * 2 * D * D),
        "cls_contribution": (lambda: cls_contribution(clip_q, clip_k, clip_v), B * Mc * Dc),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 5])
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads; default 1)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median of the rounds' quantiles)")
    p.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    args, out = parse_run_args(p, argv, "--quick")
    sig, clip = SIGLIP["quick" if args.quick else "full"], CLIP["quick" if args.quick else "full"]
    head = build_head(sig["D"], sig["H"])
    rows = []
    for B in args.batch:
        g = torch.Generator().manual_seed(B)
        y = torch.nn.functional.layer_norm(torch.randn(B, sig["M"], sig["D"], generator=g), (sig["D"],))
        cq = torch.randn(B, clip["D"], generator=g)
        ck, cv = (torch.randn(B, clip["M"], clip["D"], generator=g) for _ in range(2))
        with torch.inference_mode():
            runs = providers(head, y, cq, ck, cv)
            per_round = {k: [] for k in runs}
            for _ in range(args.rounds):
                for k, (fn, _) in runs.items():
                    per_round[k].append(measure(fn, "cpu", min_runs=3))
        for k, ts in per_round.items():
            t = {q: sorted(r[q] for r in ts)[len(ts) // 2] for q in ts[0]}
            shape = dict(clip if k == "cls_contribution" else sig, B=B)
            macs = runs[k][1]
            rows.append(make_row("map_head", k, shape, torch.float32, t, threads=torch.get_num_threads(),
                                 rounds=args.rounds, per_view_ms=t["p50_ms"] / B, macs=macs,
                                 gmacs_per_s=macs / (t["p50_ms"] * 1e-3) / 1e9))
    table = markdown_table(rows, ["model", "B", "provider", "p50_ms", "per_view_ms", "p20_ms", "p80_ms",
                                  "macs", "gmacs_per_s"])
    print(table)
    if not args.no_write:
        for path in write_report(
                rows, "map-head", "SigLIP pooling-head contribution",
                f"`python -m benchmarks.bench_map_head --threads {args.threads} --rounds {args.rounds}`: "
                "fp32, one call each, interleaved rounds (median); times in ms, `per_view_ms` = p50 / B. "
                "`macs`: multiply-adds of the call's matrix products. docs/design.md section 10.", table,
                directory=out):
            print("wrote", path)
    return rows


if __name__ == "__main__":
    main()
