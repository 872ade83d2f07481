"""Tiny random single-view SigLIP LVLMs for vLLM tests: LLaVA with a SigLIP tower (the LLaVA-Interleave layout) and
PaliGemma, each with the SigLIP checkpoint its tower comes from, built offline.

examples/tiny_lvlm.py's SigLIP (64 px, patch 8: M = 64 patches, 3 layers, its pooling head and text tower) and LVLM
builders, tiny_llava.py's word-level LLM tokenizer and checkpoint layout, and an LLM vLLM's CPU attention runs
(heads of 32). ``build(folder, family)`` writes::

    folder/siglip/    SiglipModel (model.safetensors) + its tokenizer: what ``litelvlm.scorer`` names
    folder/<family>/  the LVLM (hub key layout), the LLM tokenizer and the family's processor

* "llava_siglip": the tower drops SigLIP's last layer; ``vision_feature_layer=-1``, "full" (no [CLS]);
  ``LlavaProcessor(num_additional_image_tokens=0)`` with tiny_llava's chat template;
* "paligemma": all 3 layers and a post-layernorm moved away from SigLIP's (a real PaliGemma trains its tower
  further: the scorer must use the original's, the LLM PaliGemma's); a Gemma LLM; ``PaliGemmaProcessor``; no chat
  template (as the real checkpoints; the server gets ``--chat-template``). Its transformers side uses eager attention.

Returned as ``tiny_llava.Tiny``, whose names ``llava`` (the LVLM in memory) and ``clip`` / ``clip_dir`` /
``clip_tokenizer`` (here: the SigLIP scorer checkpoint) conftest and ``_compare.hf`` read.
"""

from __future__ import annotations

from pathlib import Path

import tiny_llava
import torch
import transformers
from conftest import engine_kwargs as llava_engine_kwargs
from tiny_llava import Tiny, tl

from litelvlm_kernels.selection.towers import find_tower

M = tl.M  # 64
STOCK = {"llava_siglip": "LlavaForConditionalGeneration", "paligemma": "PaliGemmaForConditionalGeneration"}
ARCH = {"llava_siglip": "LiteLVLMLlavaForConditionalGeneration",
        "paligemma": "LiteLVLMPaliGemmaForConditionalGeneration"}
IMAGES_PER_PROMPT = {"llava_siglip": 2, "paligemma": 1}  # vLLM's PaliGemma takes one image per prompt
# what PaliGemma's chat requests render to (it has no template): the text parts only; vLLM inserts the image tokens
TEXT_ONLY_TEMPLATE = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
                      "{% endif %}{% endfor %}{% endfor %}")


def save_siglip(directory: Path) -> tuple:
    """examples/tiny_lvlm.py's SigLIP (with its pooling head and text tower) and its tokenizer, written to
    ``directory`` (what ``litelvlm.scorer`` names); returns (model, tokenizer)."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = tl.siglip_tokenizer()
    model = tl.tiny_siglip(tok)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model, tok


def _llava_siglip(tok, siglip, llm_std):
    image_token = tok.convert_tokens_to_ids("<image>")
    model = tl.tiny_lvlm("llava_siglip", siglip, llm_std=llm_std, text=tiny_llava.llama_text(tok),
                         image_token=image_token)
    image_processor = transformers.SiglipImageProcessor(size={"height": tl.IMAGE, "width": tl.IMAGE})
    processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=tl.PATCH,
                                            vision_feature_select_strategy="full", image_token="<image>",
                                            num_additional_image_tokens=0, chat_template=tiny_llava.CHAT_TEMPLATE)
    return model, processor


def _paligemma(tok, siglip, llm_std):
    text = {**tl.gemma_text_config(), "vocab_size": len(tok), "num_attention_heads": 2, "head_dim": 32,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    model = tl.tiny_paligemma(siglip, attn="eager", llm_std=llm_std, text=text,
                              image_token=tok.convert_tokens_to_ids("<image>"))
    with torch.no_grad():
        ln = find_tower(model.model.vision_tower, "vision").post_layernorm
        g = torch.Generator().manual_seed(5)
        ln.weight.add_(0.3 * torch.randn(ln.weight.shape, generator=g))
        ln.bias.add_(0.3 * torch.randn(ln.bias.shape, generator=g))
    tok.add_bos_token = False  # as PaliGemma's: vLLM inserts <image> x n + <bos> at the very start
    tok.chat_template = None
    image_processor = transformers.SiglipImageProcessor(size={"height": tl.IMAGE, "width": tl.IMAGE},
                                                        image_seq_length=M)
    return model, transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)


def build(folder, family: str, *, llm_std: float = 0.3) -> Tiny:
    """Write the SigLIP checkpoint and the ``family`` LVLM under ``folder``; the same models in memory."""
    if family not in STOCK:
        raise ValueError(f"family: expected one of {sorted(STOCK)}, got {family!r}")
    folder = Path(folder)
    siglip_dir, lvlm_dir = folder / "siglip", folder / family
    siglip, siglip_tok = save_siglip(siglip_dir)
    lvlm_dir.mkdir(parents=True, exist_ok=True)
    tok = tiny_llava.llm_tokenizer(newline=family == "paligemma")
    model, processor = (_llava_siglip if family == "llava_siglip" else _paligemma)(tok, siglip, llm_std)
    tiny_llava.save_lvlm(model, lvlm_dir, processor, STOCK[family])
    model.generation_config.eos_token_id = None  # greedy runs max_new_tokens, as vLLM with ignore_eos
    processor = transformers.AutoProcessor.from_pretrained(lvlm_dir)
    return Tiny(folder, lvlm_dir, siglip_dir, model, siglip, siglip_tok, processor, model.config.image_token_index)


def engine_kwargs(tiny: Tiny, family: str, *, stock: bool = False, **litelvlm) -> dict:
    """LLM(...) arguments (conftest's) for ``family``: its LiteLVLM architecture with ``litelvlm`` settings (the
    scorer = the SigLIP checkpoint), or the stock model."""
    kw = llava_engine_kwargs(tiny, stock=True)
    kw["limit_mm_per_prompt"] = {"image": IMAGES_PER_PROMPT[family]}
    if not stock:
        kw["hf_overrides"] = {"architectures": [ARCH[family]], "litelvlm": {"scorer": str(tiny.clip_dir), **litelvlm}}
    return kw


class PaliGemmaCausalInputs:
    """PaliGemmaProcessor's inputs for the transformers side of a comparison with vLLM's CPU build, which runs
    PaliGemma fully causal (its CPU attention ignores the prefix-LM ranges): without ``token_type_ids`` transformers'
    PaliGemma is causal too. The prompt is the plain text vLLM gets; the processor adds <image> x M, <bos>, "\\n"."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images, text: str, return_tensors: str = "pt") -> dict:
        n = len(images) if isinstance(images, list) else 1
        out = self.processor(images=images, text="<image>" * n + text, return_tensors=return_tensors)
        return {k: v for k, v in out.items() if k not in ("token_type_ids", "labels")}


if __name__ == "__main__":
    import sys

    t = build(sys.argv[1], sys.argv[2])
    print(t.llava_dir, t.clip_dir, t.image_token_id)
