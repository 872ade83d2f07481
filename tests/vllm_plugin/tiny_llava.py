"""A tiny random LLaVA-1.5 checkpoint + its CLIP checkpoint, built offline, for vLLM tests.

Shapes as the real pair where vLLM cares (336 px, patch 14: M = 576 placeholders per image; the
LLM's head size 32, which vLLM's CPU attention supports) and small elsewhere (width 64, 3 vision
layers, 2 LLM layers), so an engine starts in seconds. ``build(folder)`` writes::

    folder/clip/    CLIPModel (model.safetensors) + its CLIPTokenizer (examples/tiny_lvlm.py's words)
    folder/llava/   LLaVA config, model.safetensors in the hub key layout vLLM loads
                    (vision_tower.vision_model.*), a word-level LLM tokenizer with a chat template,
                    and a LlavaProcessor (CLIPImageProcessor at 336 px)

and returns the in-memory models (the same weights) for the transformers side of a comparison.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import tiny_lvlm as tl  # noqa: E402

from litelvlm_kernels.selection.towers import find_tower  # noqa: E402

IMAGE, PATCH = 336, 14
M = (IMAGE // PATCH) ** 2  # 576
LLM_WORDS = ["user", "assistant", "what", "is", "this", "describe", "the", "image", "where", "color", ":", "?", "."]
NUM_FILLERS = 200
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' or c['type'] == 'image_url' %}"
                 "<image> {% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} "
                 "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")


@dataclasses.dataclass
class Tiny:
    folder: Path
    llava_dir: Path
    clip_dir: Path
    llava: transformers.LlavaForConditionalGeneration   # the same weights as llava_dir
    clip: transformers.CLIPModel                         # the same weights as clip_dir
    clip_tokenizer: object
    processor: object                                    # the LlavaProcessor saved in llava_dir
    image_token_id: int


def vision_config() -> dict:
    return dict(image_size=IMAGE, patch_size=PATCH, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=2, projection_dim=32)


def llm_tokenizer(newline: bool = False, video: bool = False):
    """``newline``: also a "\\n" token (matched before the whitespace split; PaliGemma's prompts end with it);
    ``video``: also the "<video>" placeholder (LLaVA-OneVision)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    specials = ["[PAD]", "<s>", "</s>", "[UNK]"]
    words = specials + LLM_WORDS + list(tl.WORDS) + [f"w{i}" for i in range(NUM_FILLERS)]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    vocab["<image>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="[UNK]", pad_token="[PAD]",
                                                extra_special_tokens={"image_token": "<image>"})
    fast.add_special_tokens({"additional_special_tokens": ["<image>"] + ["<video>"] * video})
    if video:
        fast.video_token = "<video>"
    if newline:
        fast.add_tokens([AddedToken("\n", normalized=False, special=False)])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_clip(clip_tok, seed: int = 0) -> transformers.CLIPModel:
    """examples/tiny_lvlm.py's CLIP (perturbed post-layernorm) at 336 px / patch 14, text width 64 (head 32)."""
    return tl.tiny_clip(clip_tok, seed, vision=vision_config(), text_width=64, text_heads=2)


def llama_text(llm_tok) -> dict:
    """A 2-layer Llama of width 64 over ``llm_tok`` with heads of 32 (what vLLM's CPU attention runs)."""
    return dict(model_type="llama", vocab_size=len(llm_tok), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                pad_token_id=llm_tok.pad_token_id, bos_token_id=llm_tok.bos_token_id,
                eos_token_id=llm_tok.eos_token_id, tie_word_embeddings=False)


def tiny_llava(clip, llm_tok, seed: int = 1, llm_std: float = 0.3) -> transformers.LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    image_token = llm_tok.convert_tokens_to_ids("<image>")
    cfg = transformers.LlavaConfig(vision_config=dict(model_type="clip_vision_model", **vision_config()),
                                   text_config=llama_text(llm_tok), image_token_index=image_token,
                                   vision_feature_layer=-2,
                                   vision_feature_select_strategy="default", projector_hidden_act="gelu",
                                   image_seq_length=M, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    tower = model.model.vision_tower if hasattr(model, "model") else model.vision_tower
    find_tower(tower, "vision").load_state_dict(find_tower(clip, "vision").state_dict())
    if llm_std:
        tl.sharpen(model, llm_std)
    return model


def hub_layout(state: dict) -> dict:
    """transformers 5 keys -> the layout of the llava-hf checkpoints (what vLLM's LLaVA loader expects)."""
    out = {}
    for k, v in state.items():
        if k.startswith("model.vision_tower.") and not k.startswith("model.vision_tower.vision_model."):
            k = "model.vision_tower.vision_model." + k[len("model.vision_tower."):]
        out[k] = v.contiguous()
    return out


def save_lvlm(model, directory: Path, processor, architecture: str) -> None:
    """Write ``model`` (fp32, hub key layout, stock ``architecture``), ``processor`` and a greedy generation config."""
    from safetensors.torch import save_file

    model.config.architectures = [architecture]
    model.config.dtype = "float32"
    model.config.save_pretrained(directory)
    # cloned: safetensors refuses tied (shared) tensors (PaliGemma's lm_head is its embedding)
    state = {k: v.clone() for k, v in hub_layout(model.state_dict()).items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    processor.save_pretrained(directory)
    (directory / "generation_config.json").write_text(json.dumps({"do_sample": False}))


def write_tiny_clip(folder: Path, model_dir: str) -> tuple:
    """``folder/clip``: examples/tiny_lvlm.py's CLIP (64 px, patch 8) and its tokenizer (vocabulary in
    ``folder/clip_vocab``); ``folder/<model_dir>`` made empty. Returns (clip dir, model dir, clip, clip tokenizer)."""
    clip_dir, model = folder / "clip", folder / model_dir
    for d in (clip_dir, model, folder / "clip_vocab"):
        d.mkdir(parents=True, exist_ok=True)
    clip_tok = tl.clip_tokenizer(folder / "clip_vocab")
    clip = tl.tiny_clip(clip_tok)
    clip.save_pretrained(clip_dir)
    clip_tok.save_pretrained(clip_dir)
    return clip_dir, model, clip, clip_tok


def build(folder, *, llm_std: float = 0.3) -> Tiny:
    folder = Path(folder)
    clip_dir, llava_dir = folder / "clip", folder / "llava"
    clip_dir.mkdir(parents=True, exist_ok=True)
    llava_dir.mkdir(parents=True, exist_ok=True)
    (folder / "clip_vocab").mkdir(exist_ok=True)
    clip_tok = tl.clip_tokenizer(folder / "clip_vocab")
    clip = tiny_clip(clip_tok)
    clip.save_pretrained(clip_dir)
    clip_tok.save_pretrained(clip_dir)

    llm_tok = llm_tokenizer()
    llava = tiny_llava(clip, llm_tok, llm_std=llm_std)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": IMAGE},
                                                      crop_size={"height": IMAGE, "width": IMAGE})
    processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=llm_tok, patch_size=PATCH,
                                            vision_feature_select_strategy="default", image_token="<image>",
                                            num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    save_lvlm(llava, llava_dir, processor, "LlavaForConditionalGeneration")
    processor = transformers.AutoProcessor.from_pretrained(llava_dir)
    return Tiny(folder, llava_dir, clip_dir, llava, clip, clip_tok, processor, llava.config.image_token_index)


def image(seed: int, size=(IMAGE, IMAGE)):
    """A random RGB PIL image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


if __name__ == "__main__":
    t = build(sys.argv[1])
    print(t.llava_dir, t.clip_dir, t.image_token_id)
