"""The README's transformers snippet, end to end: a ``LlavaProcessor`` on a PIL image, then ``enable_litelvlm``.

What README.md shows (with real checkpoints)::

    with enable_litelvlm(llava, clip, clip_tokenizer, num_retain=192):      # undone on exit
        out = llava.generate(**processor(images=image, text=prompt, return_tensors="pt"),
                             referring_expressions=[["the man on the left"]], max_new_tokens=30)

Here it runs offline: the processor is built from parts made on the spot (an
LLM tokenizer written with the ``tokenizers`` library, with ``<image>`` as the
special token of the tiny LLaVA's placeholder id, and a ``CLIPImageProcessor``
that resizes and centre-crops to the tiny CLIP's 64 px), the models are
``tiny_lvlm.py``'s (CLIP: 64 px, patch 8, M = 64 patch tokens; a 2-layer
Llama). The processor expands ``<image>`` to M placeholders, as LLaVA-1.5's
expands it to 576; LiteLVLM shrinks them to R. Printed: what the processor
returned, the placeholders before / after, the generated ids and text stock
and pruned, and that keeping every token reproduces the stock ids.

Run: ``python examples/llava_processor_generate.py [--retain 16]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_lvlm as tl  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from litelvlm_kernels.integrations.hf import enable_litelvlm  # noqa: E402

PROMPT = "USER: <image>\nWhat is the man on the left holding? ASSISTANT:"
LLM_WORDS = ["USER", "ASSISTANT", ":", "?", "What", "is", "holding", *tl.WORDS]
BOS, EOS, UNK = 1, 2, 3  # PAD = tl.PAD = 0


def llm_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """The tiny LLaVA's LLM tokenizer: one id per word of ``LLM_WORDS``, filler words ``t<id>`` up to the LLM's
    vocabulary (so every generated id decodes), <s> prepended, ``<image>`` a special token with the model's
    ``image_token_index`` (the top of its vocabulary, as in LLaVA-1.5's), left padding."""
    import tokenizers

    vocab = {"<pad>": tl.PAD, "<s>": BOS, "</s>": EOS, "<unk>": UNK, "<image>": tl.IMAGE_TOKEN}
    vocab.update({w: UNK + 1 + i for i, w in enumerate(dict.fromkeys(LLM_WORDS))})
    vocab.update({f"t{i}": i for i in range(len(vocab) - 1, tl.VOCAB) if i not in vocab.values()})
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()  # "left?" -> "left", "?"
    tok.add_special_tokens([tokenizers.AddedToken("<image>", special=True, normalized=False)])  # never split
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="<pad>", padding_side="left")


def image_processor():
    """CLIP's preprocessing at the tiny tower's size: shortest edge to 64 px, centre crop 64 x 64, CLIP's mean/std.
    transformers >= 5 calls the PIL-only class ``CLIPImageProcessorPil`` (the default one wants torchvision)."""
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": tl.IMAGE}, crop_size={"height": tl.IMAGE, "width": tl.IMAGE})


def llava_processor() -> transformers.LlavaProcessor:
    """A LlavaProcessor for ``tl.tiny_lvlm("llava", ...)``: "default" drops [CLS], so an image is M placeholders."""
    return transformers.LlavaProcessor(image_processor=image_processor(), tokenizer=llm_tokenizer(),
                                       patch_size=tl.PATCH, vision_feature_select_strategy="default",
                                       num_additional_image_tokens=1)  # CLIP's [CLS]


def photo(width: int = 96, height: int = 80, seed: int = 0):
    """A PIL image of another size than the tower's (the processor resizes and crops it): a gradient with a
    square on the left and noise."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    rgb = torch.stack([x, y, 1 - x], -1) * 200 + 20 * torch.rand(height, width, 3, generator=g)
    rgb[height // 4: 3 * height // 4, width // 8: width // 3] = torch.tensor([220.0, 30.0, 30.0])
    return Image.fromarray(rgb.clamp(0, 255).to(torch.uint8).numpy())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retain", type=int, default=16, help=f"visual tokens kept per image (of {tl.M})")
    p.add_argument("--new-tokens", type=int, default=8)
    args = p.parse_args(argv)
    clip_tokenizer = tl.clip_tokenizer()
    clip = tl.tiny_clip(clip_tokenizer)
    llava = tl.tiny_lvlm("llava", clip, llm_std=0.3)  # sharpened: the kept tokens show in the generated ids
    processor = llava_processor()
    image, prompt = photo(), PROMPT
    gen = dict(max_new_tokens=args.new_tokens, do_sample=False)

    inputs = processor(images=image, text=prompt, return_tensors="pt")
    n_placeholders = int((inputs["input_ids"] == tl.IMAGE_TOKEN).sum())
    print(f"processor: input_ids {tuple(inputs['input_ids'].shape)} with {n_placeholders} <image> placeholders, "
          f"pixel_values {tuple(inputs['pixel_values'].shape)} (a {image.width}x{image.height} PIL image)")
    with torch.no_grad():
        stock = llava.generate(**inputs, **gen)
        # the README's snippet, as written there
        with enable_litelvlm(llava, clip, clip_tokenizer, num_retain=args.retain) as patch:
            out = llava.generate(**processor(images=image, text=prompt, return_tensors="pt"),
                                 referring_expressions=[["the man on the left"]], **gen)
            report = patch.last_report
        with enable_litelvlm(llava, clip, clip_tokenizer, num_retain=tl.M, order="spatial"):
            keep_all = llava.generate(**inputs, referring_expressions=[["the man on the left"]], **gen)
    L = inputs["input_ids"].shape[1]
    same = torch.equal(keep_all, stock)
    print(f"image placeholders: stock {report['image']['stock']} -> kept {report['image']['kept']}")
    text = processor.batch_decode(torch.cat([stock[:, L:], out[:, L:]]), skip_special_tokens=True)
    print("new ids, stock:   ", stock[0, L:].tolist(), repr(text[0]))
    print("new ids, LiteLVLM:", out[0, L:].tolist(), repr(text[1]))
    print(f"keeping every token in raster order reproduces the stock ids: {same}")
    return {"inputs": inputs, "stock_ids": stock, "pruned_ids": out, "report": report, "keep_all_equals_stock": same,
            "processor": processor, "image": image}


if __name__ == "__main__":
    main()
