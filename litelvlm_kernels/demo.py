"""``python -m litelvlm_kernels.demo``: prune CLIP ViT-L/14-336-shaped inputs to 192/128/64 tokens.

Prints, per budget: tokens kept, similarity vs context tokens, the time of the
plain-PyTorch reference and of the ops (fused_select + gather_tokens), and
whether the two chose the same tokens in the same order.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import fold_text, prune, reference
from ._validate import min_votes_of
from .synthetic import CLIP_L14_336, clip_inputs


def _time(fn, repeat, device):
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1, help="images (or tiles / frames) per call")
    p.add_argument("--texts", type=int, default=2, help="referring expressions per image")
    p.add_argument("--retain", type=int, nargs="+", default=[192, 128, 64])
    p.add_argument("--multi-text", default="union", help="union | intersection | min_votes (int)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args(argv)
    multi = int(args.multi_text) if args.multi_text.lstrip("-").isdigit() else args.multi_text
    min_votes = min_votes_of(multi)

    x = clip_inputs(B=args.batch, T=args.texts, dtype=getattr(torch, args.dtype), device=args.device,
                    **CLIP_L14_336)
    text = fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)  # once per text
    M = x.hidden.shape[1]
    print(f"LiteLVLM pruning demo: B={args.batch}, M={M}, Dv={x.hidden.shape[2]}, D={x.keys.shape[2]}, "
          f"P={x.text_embeds.shape[2]}, T={args.texts}, {args.dtype} on {args.device}, multi_text={multi}")
    header = (f"{'kept':>5} {'of':>4} {'similarity':>10} {'context':>8} {'reference ms':>13} {'ops ms':>8} "
              f"{'speed-up':>9} {'same set':>9} {'same order':>11}")
    print(header)
    print("-" * len(header))
    rows = []
    for r in args.retain:
        ref = reference.prune(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias, x.q_cls, x.keys,
                              x.values, r, min_votes=min_votes)
        out = prune(x.hidden, text, x.q_cls, x.keys, x.values, num_retain=r, multi_text=multi)
        t_ref = _time(lambda r=r: reference.prune(x.hidden, x.text_embeds, x.proj_weight, x.ln_weight,
                                                  x.ln_bias, x.q_cls, x.keys, x.values, r, min_votes=min_votes),
                      args.repeat, args.device)
        t_ops = _time(lambda r=r: prune(x.hidden, text, x.q_cls, x.keys, x.values, num_retain=r, multi_text=multi),
                      args.repeat, args.device)
        same_set = all(set(a.tolist()) == set(b.tolist()) for a, b in zip(out.indices.cpu(), ref[0].cpu()))
        same_order = torch.equal(out.indices.cpu(), ref[0].cpu())
        n_sim = int(out.num_similarity.float().mean())
        kept = out.indices.shape[1]
        print(f"{kept:>5} {M:>4} {n_sim:>10} {kept - n_sim:>8} {t_ref:>13.3f} {t_ops:>8.3f} "
              f"{t_ref / t_ops:>8.1f}x {str(same_set):>9} {str(same_order):>11}")
        rows.append(dict(kept=kept, similarity=n_sim, reference_ms=t_ref, ops_ms=t_ops, same_set=same_set,
                         same_order=same_order))
    print("\nTimes are medians of", args.repeat, "calls; fold_text is done once per text and excluded.")
    return rows


if __name__ == "__main__":
    main()
