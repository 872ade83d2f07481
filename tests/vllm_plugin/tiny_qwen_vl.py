"""Tiny random Qwen2.5-VL / Qwen3-VL checkpoints and their paired CLIP scorer, built offline, for vLLM tests.

The models are examples/tiny_qwen.py's (LLM 2 layers of width 64, heads of 32; towers of width 32; Qwen2.5-VL
patch 14 with windows, Qwen3-VL patch 16 with DeepStack; LLM, mergers and head re-drawn with std 0.3), its image
processor (at most ``max_tokens`` merged tokens per image) and normalisation; the scorer is examples/tiny_lvlm.py's
CLIP (64 px, patch 8: 64 native patches), as in tests/test_qwen_vl.py. ``build(folder, family)`` writes::

    folder/clip/      CLIPModel + its tokenizer: what ``litelvlm.scorer`` names
    folder/<family>/  the model (stock architecture), a word-level tokenizer whose special tokens sit at
                      tiny_qwen's ids, the family's processor and a chat template

and returns ``tiny_llava.Tiny`` (``llava``: the Qwen model in memory, ``clip``: the scorer), what
``_compare.hf`` and conftest read.
"""

from __future__ import annotations

from pathlib import Path

import tiny_llava
import tiny_qwen as tq  # examples/ (tiny_llava put it on the path)
import transformers
from conftest import engine_kwargs as llava_engine_kwargs
from tiny_llava import Tiny, tl

STOCK = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration"}
ARCH = {f: f"LiteLVLM{s}" for f, s in STOCK.items()}
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
SPECIALS = {tq.PAD: "<pad>", tq.VISION_START: "<|vision_start|>", tq.VISION_END: "<|vision_end|>",
            tq.VIDEO_TOKEN: "<|video_pad|>", tq.IMAGE_TOKEN: "<|image_pad|>"}
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
                 "{% if c['type'] == 'image' or c['type'] == 'image_url' %}" + VISION + " "
                 "{% elif c['type'] == 'text' %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                 "{% if add_generation_prompt %}assistant :{% endif %}")


def tokenizer():
    """A word-level tokenizer over tiny_llava's words with Qwen's special tokens at tiny_qwen's ids (vocab 300)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [w for w in dict.fromkeys(["[UNK]"] + tiny_llava.LLM_WORDS + list(tl.WORDS)) if w not in SPECIALS.values()]
    fillers = iter(f"w{i}" for i in range(tq.VOCAB))
    vocab, words = {}, iter(words)
    for i in range(tq.VOCAB):
        vocab[SPECIALS[i] if i in SPECIALS else next(words, None) or next(fillers)] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": [SPECIALS[i] for i in sorted(SPECIALS) if i != tq.PAD]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def processor(family: str, max_tokens: int = 16):
    patch = tq.PATCH[family]
    if family == "qwen2_5_vl":
        cls, video = transformers.Qwen2_5_VLProcessor, transformers.Qwen2VLVideoProcessor(patch_size=patch)
    else:
        cls, video = transformers.Qwen3VLProcessor, transformers.Qwen3VLVideoProcessor(patch_size=patch)
    return cls(image_processor=tq.image_processor(family, max_tokens), tokenizer=tokenizer(), video_processor=video,
               chat_template=CHAT_TEMPLATE)


def build(folder, family: str, *, max_tokens: int = 16, llm_std: float = 0.3) -> Tiny:
    """Write the CLIP scorer and the ``family`` model under ``folder``; the same models in memory."""
    if family not in STOCK:
        raise ValueError(f"family: expected one of {sorted(STOCK)}, got {family!r}")
    clip_dir, model_dir, clip, clip_tok = tiny_llava.write_tiny_clip(Path(folder), family)
    model = tq.tiny_qwen(family, llm_std=llm_std)
    tiny_llava.save_lvlm(model, model_dir, processor(family, max_tokens), STOCK[family])
    model.generation_config.eos_token_id = None  # greedy runs max_new_tokens, as vLLM with ignore_eos
    loaded = transformers.AutoProcessor.from_pretrained(model_dir)
    return Tiny(Path(folder), model_dir, clip_dir, model, clip, clip_tok, loaded, tq.IMAGE_TOKEN)


def engine_kwargs(tiny: Tiny, family: str, *, stock: bool = False, **litelvlm) -> dict:
    """LLM(...) arguments (conftest's) for ``family``: its LiteLVLM architecture with ``litelvlm`` settings (the
    scorer = the CLIP checkpoint), or the stock model."""
    kw = llava_engine_kwargs(tiny, stock=True)
    kw["max_model_len"] = 1024
    if not stock:
        kw["hf_overrides"] = {"architectures": [ARCH[family]], "litelvlm": {"scorer": str(tiny.clip_dir), **litelvlm}}
    else:
        kw["limit_mm_per_prompt"] = {"image": 2, "video": 0}
    return kw


if __name__ == "__main__":
    import sys

    t = build(sys.argv[1], sys.argv[2])
    print(t.llava_dir, t.clip_dir, t.image_token_id)
