"""Qwen2.5-VL / Qwen3-VL with LiteLVLM: a paired CLIP picks R of each image's merged tokens.

Tiny random models, built offline (``tiny_qwen.py``, ``tiny_lvlm.py``): a Qwen2.5-VL (or ``--family qwen3_vl``)
whose 2-layer LLM and mergers are drawn with a large std, so its greedy tokens depend on which image tokens
it sees, and ``tiny_lvlm``'s CLIP (64 px, patch 8: 64 native patches) as the paired scorer. Three random
images (wide, tall, square) go through transformers' own Qwen image processor (at most 16 tokens each: the
token grid is 3 x 4, 6 x 2, 3 x 3 for Qwen2.5-VL); two prompts, left padded, the first with one image and
one expression, the second with two images and two expressions. The scorer sees each image resized to its
grid rule (here scaled up to about 64 patches, its native count) and its signals are averaged over each
token's 28 x 28 px (32 x 32 px) region. Printed: per image its token grid and the scorer's grid, placeholders
before / after, tokens, prefill FLOPs, KV-cache bytes and time before and after (the same ratio at
Qwen2.5-VL-7B's LLM, 1296 tokens for a 1008 x 1008 px image), the stock and pruned ids (they differ), other
expressions' kept tokens and ids (they differ again), a ``retain_ratio`` run, and the scorer's cost at full
size as a share of the LVLM's own tower (``litelvlm_kernels.flops.vision``).

With real checkpoints (not runnable here: needs the downloads)::

    import torch
    from transformers import AutoProcessor, CLIPModel, CLIPTokenizer, Qwen2_5_VLForConditionalGeneration
    from litelvlm_kernels.integrations.lvlm import enable_litelvlm

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct",
                                                               dtype=torch.bfloat16, device_map="cuda")
    processor = AutoProcessor.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct")
    clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch16", dtype=torch.bfloat16).cuda()
    clip_tok = CLIPTokenizer.from_pretrained("openai/clip-vit-base-patch16")
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What is the man on the left holding?"}]}]
    inputs = processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt").to("cuda")
    ip = processor.image_processor
    with enable_litelvlm(model, clip, clip_tok, image_mean=ip.image_mean, image_std=ip.image_std,
                         retain_ratio=0.25):                           # a quarter of each image's tokens
        out = model.generate(**inputs, referring_expressions=[["the man on the left"]], max_new_tokens=32)

Run: ``python examples/qwen_vl_generate.py [--family qwen3_vl] [--retain 4]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_run as er
import tiny_lvlm as tl  # noqa: E402
import tiny_qwen as tq  # noqa: E402
import torch  # noqa: E402

from litelvlm_kernels.flops.vision import paired_cost  # noqa: E402
from litelvlm_kernels.integrations.lvlm import enable_litelvlm  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=tq.FAMILIES, default="qwen2_5_vl")
    p.add_argument("--retain", type=int, default=4, help="tokens kept per image (of 9 to 15)")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds (median, p20-p80)")
    args = p.parse_args(argv)
    tok = tl.clip_tokenizer()
    clip = tl.tiny_clip(tok)
    model = tq.tiny_qwen(args.family)  # llm_std=0.3: the kept tokens show in the generated ids
    inputs = tq.inputs(args.family)
    exprs = [["the man on the left"], ["a red car", "the cup"]]
    with enable_litelvlm(model, clip, tok, num_retain=args.retain) as patch:
        scorer = patch.adapter.pruner.scorer
        for i, (_, gh, gw) in enumerate(inputs["image_grid_thw"].tolist()):
            h, w = gh // tq.MERGE, gw // tq.MERGE
            print(f"image {i}: {h} x {w} tokens of {tq.PATCH[args.family] * tq.MERGE} px; the scorer sees "
                  f"{' x '.join(map(str, scorer.grid(h, w)))} patches")
    print(f"{args.family} (tiny) with a paired CLIP: {args.retain} tokens kept per image, 2 prompts, 3 images")
    out = er.demo(model, clip, tok, inputs, exprs, num_retain=args.retain, new_tokens=args.new_tokens,
                  repeat=args.repeat, full_size=("qwen2-7b", 1296))
    changed = out["pruning_changes_ids"]
    other = [["the sky"], ["a dog", "the tree"]]
    gen = dict(max_new_tokens=args.new_tokens, do_sample=False)
    with torch.no_grad():
        with enable_litelvlm(model, clip, tok, num_retain=args.retain) as patch:
            other_ids = model.generate(**inputs, referring_expressions=other, **gen)
            other_report = patch.last_report
        with enable_litelvlm(model, clip, tok, retain_ratio=0.5) as patch:
            model.generate(**inputs, referring_expressions=exprs, **gen)
            ratio_kept = patch.last_report["image"]["kept"]
    kept = [v[0]["indices"].tolist() for v in out["report"]["image"]["views"]]
    other_kept = [v[0]["indices"].tolist() for v in other_report["image"]["views"]]
    for name, e, k in (("", exprs, kept), ("other ", other, other_kept)):
        print(f"{name}expressions {e}: kept tokens per image {k}")
    print("new tokens, other expressions:", other_ids[:, inputs["input_ids"].shape[1]:].tolist())
    print(f"other expressions keep other tokens: {kept != other_kept}; and give other ids: "
          f"{not torch.equal(other_ids, out['pruned_ids'])}")
    print(f"retain_ratio=0.5 keeps {ratio_kept} of {out['report']['image']['stock']} tokens")
    lvlm = "qwen2.5-vl-7b" if args.family == "qwen2_5_vl" else "qwen3-vl-8b"
    cell = tq.PATCH[args.family] * tq.MERGE
    cost = paired_cost(lvlm, "clip-vit-b16", 1024 // cell, 1024 // cell)
    print(f"at full size (a 1024 x 1024 px image, {lvlm}'s tower, a CLIP ViT-B/16 scorer on "
          f"{' x '.join(map(str, cost['scorer_grid']))} patches): the scorer costs {cost['share']:.1%} of the "
          f"tower's MACs ({cost['scorer_macs'] / 1e9:.0f} of {cost['lvlm_macs'] / 1e9:.0f} GMAC)")
    return dict(out, other_ids=other_ids, other_report=other_report, kept=kept, other_kept=other_kept,
                pruning_changes_ids=changed, ratio_kept=ratio_kept, cost=cost)


if __name__ == "__main__":
    main()
