"""What the vision capture costs: stock tower forward vs the hooked capture it replaced vs the hook-free one.

``python -m benchmarks.bench_capture [--towers tiny vit-l] [--batch 1] [--rounds 2] [--no-write]``

Providers, each one full call on the same pixels, interleaved round by round so
load from other processes hits all alike:

- ``stock``: ``vision_tower(pixel_values, output_hidden_states=True)``, what
  LLaVA's ``get_image_features`` runs (every layer, post-layernorm);
- ``hooked``: the capture before the hook-free rewrite, kept here to measure
  against: forward hooks registered per call on the shared modules, an
  exception from the last ``v_proj`` hook to stop the forward;
- ``hook-free``: ``capture_vision`` (the layers run by hand up to the last
  layer's input, then its layer_norm1 and q/k/v projections; the last
  layer's attention and MLP are never run);
- ``hook-free-full``: ``capture_vision(stop_early=False)``, which also runs
  the last layer (what ``select_layer=-1`` needs).

SigLIP towers (no [CLS]; ``selection/siglip.py``), as LLaVA-OneVision runs
them: the LVLM's tower stops one layer before the original's last, and the
capture adds that layer, the post-layernorm and the pooling head's k / v
(and the contribution) from the original checkpoint:

- ``stock``: the LVLM tower (L - 1 layers), ``output_hidden_states=True``;
- ``litelvlm-exact`` / ``litelvlm-heads``: ``LiteLVLMPruner.capture`` with
  ``head_contribution="exact"`` / ``"heads"`` (docs/design.md section 10).

Towers (random weights, fp32): ``tiny`` is the tests' CLIP (64 px, patch 8,
3 layers, width 64); ``vit-l`` is CLIP ViT-L/14-336 shaped (336 px, patch 14,
24 layers, width 1024, 16 heads, MLP 4096); ``siglip-tiny`` the tests' SigLIP
shape; ``so400m`` SigLIP so400m-patch14-384 shaped (384 px, patch 14: 729
patches, 27 layers, width 1152, 16 heads, MLP 4304). Rows go to
``capture-<device>.json`` and the table to ``capture-<device>.md`` in the output folder
(``benchmarks/out/``, git-ignored, by default;
``--out DIR``; ``--publish``: ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse

import torch

from .common import make_row, markdown_table, measure, parse_run_args, write_report

TOWERS = {
    "tiny": dict(image_size=64, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4),
    "vit-l": dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16),
    "siglip-tiny": dict(image_size=64, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                        num_attention_heads=4),
    "so400m": dict(image_size=384, patch_size=14, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                   num_attention_heads=16),
}
SIGLIP = ("siglip-tiny", "so400m")


class _Done(Exception):
    pass


def hooked_capture(vision, px):
    """The previous capture: per-call forward hooks on the tower's modules, stopped by an exception."""
    from litelvlm_kernels.selection.towers import layer_output, vision_tower

    tower = vision_tower(vision)
    layers = tower.encoder.layers
    attn = layers[-1].self_attn
    got = {}

    def keep(name, transform):
        def hook(module, args, output):
            got[name] = transform(output)
            if len(got) == 4:
                raise _Done
        return hook

    handles = [layers[-2].register_forward_hook(keep("hidden", layer_output)),
               attn.q_proj.register_forward_hook(keep("q", lambda o: o[:, 0])),
               attn.k_proj.register_forward_hook(keep("k", lambda o: o[:, 1:])),
               attn.v_proj.register_forward_hook(keep("v", lambda o: o[:, 1:]))]
    try:
        tower(pixel_values=px)
    except _Done:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


def providers(vision, px):
    from litelvlm_kernels.integrations.hf import capture_vision

    return {
        "stock": lambda: vision(px, output_hidden_states=True),
        "hooked": lambda: hooked_capture(vision, px),
        "hook-free": lambda: capture_vision(vision, px),
        "hook-free-full": lambda: capture_vision(vision, px, stop_early=False),
    }


def siglip_providers(name: str, px, seed: int = 0):
    """The LVLM tower (the original's first L - 1 layers, no head) and the pruner's captures on it."""
    import transformers

    from litelvlm_kernels.integrations.hf import LiteLVLMPruner

    torch.manual_seed(seed)
    original = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TOWERS[name])).eval()
    lvlm_cfg = dict(TOWERS[name], num_hidden_layers=TOWERS[name]["num_hidden_layers"] - 1, vision_use_head=False)
    tower = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**lvlm_cfg)).eval()
    tower.load_state_dict(original.state_dict(), strict=False)  # the same first L - 1 layers
    pruners = {mode: LiteLVLMPruner(tower, vision_head=original, select_layer=-1, head_contribution=mode)
               for mode in ("exact", "heads")}
    return tower, {
        "stock": lambda: tower(px, output_hidden_states=True),
        "litelvlm-exact": lambda: pruners["exact"].capture(px),
        "litelvlm-heads": lambda: pruners["heads"].capture(px),
    }


def build(name: str, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TOWERS[name])).eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--towers", nargs="+", default=list(TOWERS), choices=list(TOWERS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median of the rounds' quantiles)")
    args, out = parse_run_args(p, argv)
    rows = []
    for name in args.towers:
        cfg = TOWERS[name]
        px = torch.randn(args.batch, 3, cfg["image_size"], cfg["image_size"],
                         generator=torch.Generator().manual_seed(1))
        cls = 0 if name in SIGLIP else 1
        shape = {"tower": name, "B": args.batch, "layers": cfg["num_hidden_layers"], "width": cfg["hidden_size"],
                 "tokens": (cfg["image_size"] // cfg["patch_size"]) ** 2 + cls}
        runs = siglip_providers(name, px)[1] if name in SIGLIP else providers(build(name), px)
        per_round = {k: [] for k in runs}
        min_runs = 10 if "tiny" in name else 3
        with torch.inference_mode():
            for _ in range(args.rounds):
                for k, fn in runs.items():
                    per_round[k].append(measure(fn, "cpu", min_runs=min_runs))
        stock = None
        for k, ts in per_round.items():
            t = {q: sorted(r[q] for r in ts)[len(ts) // 2] for q in ts[0]}
            stock = t["p50_ms"] if k == "stock" else stock
            rows.append(make_row("capture", k, shape, torch.float32, t, threads=torch.get_num_threads(),
                                 vs_stock=t["p50_ms"] / stock))
    table = markdown_table(rows, ["tower", "B", "provider", "p50_ms", "p20_ms", "p80_ms", "vs_stock"])
    print(table)
    if not args.no_write:
        for path in write_report(
                rows, "capture", "Vision capture",
                f"`python -m benchmarks.bench_capture --towers {' '.join(args.towers)} --batch {args.batch} "
                f"--threads {torch.get_num_threads()} --rounds {args.rounds}`: fp32, one call each, interleaved "
                "rounds (median); times in ms. `vs_stock`: p50 over the stock forward's p50.", table, directory=out):
            print("wrote", path)
    return rows


if __name__ == "__main__":
    main()
