"""PaliGemma with LiteLVLM: the stock ``model.generate(**inputs)`` on R of each image's M SigLIP tokens.

Tiny random models, built offline (``tiny_lvlm.py``): a SigLIP (64 px, patch
8, M = 64 tokens, no [CLS]; vision tower WITH its attention-pooling head, and
a text tower) whose vision layers the PaliGemma tower reuses (PaliGemma
checkpoints drop the head: LiteLVLM takes it, and the text tower, from the
SigLIP checkpoint), a 2-layer Gemma. Two prompts as PaliGemmaProcessor lays
them out (image placeholders, then <bos> + prompt + "\\n", token_type_ids 0 =
the bidirectional prefix), left padded: the first with one image and one
referring expression, the second with two images and two expressions
(union). The Gemma's weights are drawn with a large std (``tiny_lvlm.sharpen``)
so that its greedy tokens depend on which image tokens it sees. Printed:
placeholders per image before / after, visual and LLM tokens, prefill FLOPs,
KV-cache bytes, prefill time before and after (median and p20-p80 of 5
interleaved rounds), the generated ids stock and pruned (they differ: the
pruning reaches the LLM), the kept tokens and ids under other expressions
(they differ again: the expressions steer the selection), and the same ratio
at PaliGemma-3B scale (Gemma-2B, 256 tokens per 224-px image).

With real checkpoints (not runnable here: needs the downloads)::

    import torch
    from transformers import (AutoProcessor, PaliGemmaForConditionalGeneration, SiglipModel,
                              SiglipTokenizer)
    from litelvlm_kernels.integrations.lvlm import enable_litelvlm

    model = PaliGemmaForConditionalGeneration.from_pretrained("google/paligemma-3b-mix-224",
                                                              torch_dtype=torch.bfloat16, device_map="cuda")
    processor = AutoProcessor.from_pretrained("google/paligemma-3b-mix-224")
    # the SigLIP checkpoint PaliGemma's tower comes from: its pooling head and text tower score the tokens
    siglip = SiglipModel.from_pretrained("google/siglip-so400m-patch14-224", torch_dtype=torch.bfloat16).cuda()
    siglip_tok = SiglipTokenizer.from_pretrained("google/siglip-so400m-patch14-224")
    inputs = processor(images=image, text="<image>answer en what is the man on the left holding?",
                       return_tensors="pt").to("cuda", torch.bfloat16)
    with enable_litelvlm(model, siglip, siglip_tok, num_retain=64):      # 256 -> 64 tokens per image
        out = model.generate(**inputs, referring_expressions=[["the man on the left"]], max_new_tokens=20)

Run: ``python examples/paligemma_generate.py [--retain 16]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_run as er
import tiny_lvlm as tl  # noqa: E402
import torch  # noqa: E402

from litelvlm_kernels.integrations.lvlm import enable_litelvlm  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retain", type=int, default=16, help=f"visual tokens kept per image (of {tl.M})")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds (median, p20-p80)")
    args = p.parse_args(argv)
    tok = tl.siglip_tokenizer()
    siglip = tl.tiny_siglip(tok)
    model = tl.tiny_paligemma(siglip, llm_std=0.3)  # sharpened: the kept tokens show in the generated ids
    inputs = tl.paligemma_prompt([1, 2])  # input_ids, attention_mask, token_type_ids as PaliGemmaProcessor
    inputs["pixel_values"] = torch.randn(3, 3, tl.IMAGE, tl.IMAGE, generator=torch.Generator().manual_seed(0))
    print(f"PaliGemma (tiny): {tl.M} -> {args.retain} tokens per image, 2 prompts, 3 images")
    exprs = [["the man on the left"], ["a red car", "the cup"]]
    out = er.demo(model, siglip, tok, inputs, exprs, num_retain=args.retain, new_tokens=args.new_tokens,
                  repeat=args.repeat, full_size=("gemma-2b", 256))
    changed = out["pruning_changes_ids"]
    other = [["the sky"], ["a dog", "the tree"]]
    with torch.no_grad(), enable_litelvlm(model, siglip, tok, num_retain=args.retain) as patch:
        other_ids = model.generate(**inputs, referring_expressions=other, max_new_tokens=args.new_tokens,
                                   do_sample=False)
        other_report = patch.last_report
    kept = [sorted(v[0]["indices"].tolist()) for v in out["report"]["image"]["views"]]
    other_kept = [sorted(v[0]["indices"].tolist()) for v in other_report["image"]["views"]]
    for name, e, k in (("", exprs, kept), ("other ", other, other_kept)):
        print(f"{name}expressions {e}: image 0 keeps tokens {k[0]}")
    print("new tokens, other expressions:", other_ids[:, inputs["input_ids"].shape[1]:].tolist())
    print(f"other expressions keep other tokens: {kept != other_kept}; and give other ids: "
          f"{not torch.equal(other_ids, out['pruned_ids'])}")
    return dict(out, other_ids=other_ids, other_report=other_report, kept=kept, other_kept=other_kept,
                pruning_changes_ids=changed)


if __name__ == "__main__":
    main()
