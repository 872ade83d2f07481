"""``python -m litelvlm_kernels.demo``: prune CLIP ViT-L/14-336-shaped inputs to 192/128/64 tokens.

Prints, per budget: tokens kept, similarity vs context tokens, the time of the
plain-PyTorch reference and of the ops (fused_select + gather_tokens), and
whether the two chose the same tokens in the same order. Times are medians over
interleaved rounds (reference and ops in turn) with their p20-p80 spread; a
speed-up whose intervals overlap is flagged "within noise" (``timing``).
"""

from __future__ import annotations

import argparse

import torch

from . import fold_text, prune, reference
from ._validate import min_votes_of
from .synthetic import CLIP_L14_336, clip_inputs
from .timing import format_ratio, interleaved


def _spread(t) -> str:
    return f"{t.p50_ms:.3f} ({t.p20_ms:.3f}-{t.p80_ms:.3f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1, help="images (or tiles / frames) per call")
    p.add_argument("--texts", type=int, default=2, help="referring expressions per image")
    p.add_argument("--retain", type=int, nargs="+", default=[192, 128, 64])
    p.add_argument("--multi-text", default="union", help="union | intersection | min_votes (int)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--repeat", type=int, default=10, help="interleaved timing rounds (median, p20-p80)")
    args = p.parse_args(argv)
    multi = int(args.multi_text) if args.multi_text.lstrip("-").isdigit() else args.multi_text
    min_votes = min_votes_of(multi)

    x = clip_inputs(B=args.batch, T=args.texts, dtype=getattr(torch, args.dtype), device=args.device,
                    **CLIP_L14_336)
    text = fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)  # once per text
    M = x.hidden.shape[1]
    print(f"LiteLVLM pruning demo: B={args.batch}, M={M}, Dv={x.hidden.shape[2]}, D={x.keys.shape[2]}, "
          f"P={x.text_embeds.shape[2]}, T={args.texts}, {args.dtype} on {args.device}, multi_text={multi}")
    header = (f"{'kept':>5} {'of':>4} {'similarity':>10} {'context':>8} {'reference ms (p20-p80)':>24} "
              f"{'ops ms (p20-p80)':>24} {'speed-up':>22} {'same set':>9} {'same order':>11}")
    print(header)
    print("-" * len(header))
    rows = []
    for r in args.retain:
        ref = reference.prune(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, x.q_cls, x.keys,
                              x.values, r, min_votes=min_votes)
        out = prune(x.hidden, text, x.q_cls, x.keys, x.values, num_retain=r, multi_text=multi)
        times = interleaved({
            "reference": lambda r=r: reference.prune(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias,
                                                     x.q_cls, x.keys, x.values, r, min_votes=min_votes),
            "ops": lambda r=r: prune(x.hidden, text, x.q_cls, x.keys, x.values, num_retain=r, multi_text=multi),
        }, rounds=args.repeat, device=args.device)
        t_ref, t_ops = times["reference"], times["ops"]
        speedup = format_ratio(t_ref, t_ops, ".1f", "x")
        same_set = all(set(a.tolist()) == set(b.tolist()) for a, b in zip(out.indices.cpu(), ref[0].cpu()))
        same_order = torch.equal(out.indices.cpu(), ref[0].cpu())
        n_sim = int(out.num_similarity.float().mean())
        kept = out.indices.shape[1]
        print(f"{kept:>5} {M:>4} {n_sim:>10} {kept - n_sim:>8} {_spread(t_ref):>24} {_spread(t_ops):>24} "
              f"{speedup:>22} {str(same_set):>9} {str(same_order):>11}")
        rows.append(dict(kept=kept, similarity=n_sim, reference_ms=t_ref.p50_ms, ops_ms=t_ops.p50_ms,
                         reference=t_ref, ops=t_ops, speedup=speedup, same_set=same_set, same_order=same_order))
    print(f"\nTimes: medians (p20-p80) of {args.repeat} interleaved rounds of one call each; a speed-up whose "
          "intervals overlap is marked (within noise). fold_text is done once per text and excluded.")
    return rows


if __name__ == "__main__":
    main()
