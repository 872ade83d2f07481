"""What the ``*_generate.py`` examples share: their command line, the tiny models, and the stock-vs-LiteLVLM demo.

``example_setup`` parses the examples' common options and builds the tiny tokenizer, scorer and LVLM of a
family (``tiny_lvlm.py``); ``demo`` runs stock ``generate`` and LiteLVLM's on the same inputs and prints
tokens, FLOPs, KV bytes and time; ``llava_like_main`` is the whole of an example with LLaVA-1.5's layout
(two prompts, three images).
"""

from __future__ import annotations

import tiny_lvlm as tl
import torch


def example_setup(family: str, doc: str, argv, retain: int, retain_help: str, budget: tuple = ()):
    """The generate examples' shared start: their command line and the tiny (tokenizer, clip, model).

    ``budget`` is ``(flag, choices)`` for a family with budget semantics, e.g.
    ``("--budget", ["per_tile", "global"])``; the first choice is the default.
    """
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retain", type=int, default=retain, help=retain_help)
    if budget:
        p.add_argument(budget[0], choices=budget[1], default=budget[1][0])
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds (median, p20-p80)")
    args = p.parse_args(argv)
    if family in tl.SIGLIP_FAMILIES:  # the tower's checkpoint is a SigLIP one: its tokenizer, its head
        tok = tl.siglip_tokenizer()
        tower = tl.tiny_siglip(tok)
        return args, tok, tower, tl.SIGLIP_FAMILIES[family](tower)
    tok = tl.clip_tokenizer()
    clip = tl.tiny_clip(tok)
    return args, tok, clip, tl.tiny_lvlm(family, clip)


def demo(model, clip, tokenizer, inputs: dict, expressions, *, new_tokens: int = 8, repeat: int = 5,
         full_size: tuple = ("vicuna-7b", 576), **settings) -> dict:
    """Stock generate vs LiteLVLM generate on ``inputs``; prints tokens, FLOPs, KV bytes and time, returns them
    (with whether pruning changed the generated ids: the tiny LLMs are sharpened so that it does).

    Also checks the invariant the tests check: keeping every token in raster order gives the stock ids.
    ``full_size``: a flops preset and its per-view token count, to print the same ratio at real scale.
    """
    from litelvlm_kernels.flops import DecoderConfig, prefill_flops
    from litelvlm_kernels.integrations.lvlm import enable_litelvlm
    from litelvlm_kernels.integrations.metrics import format_metrics, prefill_metrics
    from litelvlm_kernels.memory import kv_cache_bytes

    gen = dict(max_new_tokens=new_tokens, do_sample=False)
    with torch.no_grad():
        stock = model.generate(**inputs, **gen)
        with enable_litelvlm(model, clip, tokenizer, **settings) as patch:
            pruned = model.generate(**inputs, referring_expressions=expressions, **gen)
            report = patch.last_report
            metrics = prefill_metrics(model, inputs, expressions, repeat=repeat)
        keep_all = dict(settings, num_retain=10_000, order="spatial")
        with enable_litelvlm(model, clip, tokenizer, **keep_all):
            same = torch.equal(model.generate(**inputs, referring_expressions=expressions, **gen), stock)
    L = inputs["input_ids"].shape[1]
    for what in ("image", "video"):
        if what in report:
            print(f"{what} placeholders per input: stock {report[what]['stock']} -> kept {report[what]['kept']}")
    print(format_metrics(metrics))
    print("new tokens, stock:   ", stock[:, L:].tolist())
    print("new tokens, LiteLVLM:", pruned[:, L:].tolist())
    print(f"keeping every token in raster order reproduces the stock ids: {same}")
    changed = not torch.equal(pruned[:, L:], stock[:, L:])
    print(f"pruning changes the generated ids: {changed}")
    preset, per_view = full_size
    cfg = DecoderConfig.preset(preset)
    ratio = metrics["pruned"]["visual_tokens"] / metrics["stock"]["visual_tokens"]
    kept = round(per_view * ratio)
    print(f"same visual-token ratio at {preset} scale ({per_view} -> {kept} visual + 64 text tokens): prefill "
          f"{prefill_flops(cfg, per_view, 64) / 1e12:.2f} -> {prefill_flops(cfg, kept, 64) / 1e12:.2f} TFLOPs, "
          f"KV cache {kv_cache_bytes(cfg, per_view, 64) / 1e6:.0f} -> {kv_cache_bytes(cfg, kept, 64) / 1e6:.0f} MB")
    return {"stock_ids": stock, "pruned_ids": pruned, "report": report, "metrics": metrics,
            "keep_all_equals_stock": same, "pruning_changes_ids": changed}


def llava_like_main(family: str, doc: str, argv, title: str, full_size: tuple) -> dict:
    """An example of a family with LLaVA-1.5's layout (M placeholders per image): 2 prompts, 3 images."""
    args, tok, scorer, model = example_setup(family, doc, argv, 16, f"visual tokens kept per image (of {tl.M})")
    ids, mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, tl.M)] * 3)  # what the family's processor emits
    px = torch.randn(3, 3, tl.IMAGE, tl.IMAGE, generator=torch.Generator().manual_seed(0))
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=px)
    print(f"{title} (tiny): {tl.M} -> {args.retain} tokens per image, 2 prompts, 3 images")
    return demo(model, scorer, tok, inputs, [["the man on the left"], ["a red car", "the cup"]],
                num_retain=args.retain, new_tokens=args.new_tokens, repeat=args.repeat, full_size=full_size)
