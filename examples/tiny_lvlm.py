"""Tiny, randomly initialised LLaVA-family models built offline (nothing is downloaded).

Shared by the ``llava*_generate.py`` examples and ``tests/test_llava*.py``.
One CLIP (vision: 64 px, patch 8 -> M = 64 patch tokens, 3 layers, Dv = 64;
text: 2 layers, P = 32) plays the checkpoint whose vision tower the LVLM
reuses (its weights are copied into the LVLM's tower) and whose text tower +
``visual_projection`` LiteLVLM scores with; the LLM is a 2-layer Llama. The
CLIP tokenizer is a BPE vocabulary that spells each word of ``WORDS`` as one
token, written to a temporary directory.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import transformers

from litelvlm_kernels.selection.towers import find_tower

WORDS = ["a", "photo", "of", "the", "cat", "dog", "red", "car", "man", "on", "left", "right", "tree", "sky",
         "cup", "in", "shirt", "ball"]
IMAGE, PATCH = 64, 8
M = (IMAGE // PATCH) ** 2  # 64 patch tokens per view
VOCAB = 300                 # LLM vocabulary; the last ids are the placeholders
IMAGE_TOKEN, VIDEO_TOKEN, PAD = VOCAB - 1, VOCAB - 2, 0


def clip_tokenizer(directory=None):
    """A CLIPTokenizer over ``WORDS`` (each word one token), saved in ``directory`` (a temp dir by default)."""
    d = Path(directory or tempfile.mkdtemp(prefix="tiny_clip_tok_"))
    vocab, merges = {}, []
    for ch in sorted(set("".join(WORDS))):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for w in WORDS:
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        while len(syms) > 1:
            merges.append(f"{syms[0]} {syms[1]}")
            syms = [syms[0] + syms[1]] + syms[2:]
            vocab.setdefault(syms[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return transformers.CLIPTokenizer.from_pretrained(str(d))


def vision_config() -> dict:
    return dict(model_type="clip_vision_model", image_size=IMAGE, patch_size=PATCH, hidden_size=64,
                intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, projection_dim=32)


def tiny_clip(tokenizer, seed: int = 0, *, vision: dict | None = None, text_width: int = 48, text_heads: int = 4):
    """CLIPModel with a perturbed post-layernorm (random init gives gamma = 1, beta = 0).

    ``vision``: the vision config (default ``vision_config()``); the text tower is 2 layers of ``text_width``.
    """
    torch.manual_seed(seed)
    tc = dict(vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
              num_hidden_layers=2, num_attention_heads=text_heads, max_position_embeddings=16,
              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
              pad_token_id=tokenizer.pad_token_id)
    vc = {k: v for k, v in (vision or vision_config()).items() if k not in ("model_type", "projection_dim")}
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=tc, vision_config=vc, projection_dim=32))
    with torch.no_grad():
        ln = clip.vision_model.post_layernorm
        ln.weight.add_(0.2 * torch.randn_like(ln.weight))
        ln.bias.add_(0.2 * torch.randn_like(ln.bias))
    return clip.eval()


SIGLIP_TEXT_LEN = 16  # the tiny SigLIP text tower's positions (real checkpoints: 64); texts are padded to it


def siglip_tokenizer():
    """A SigLIP-style fast tokenizer over ``WORDS``: one token per word, "</s>" appended, "</s>" also the padding
    (as SiglipTokenizer), right padding. Built with the ``tokenizers`` library (nothing is downloaded)."""
    import tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>",
                                                unk_token="<unk>", padding_side="right",
                                                model_max_length=SIGLIP_TEXT_LEN)


def siglip_vision_config(num_layers: int = 3, use_head: bool = False) -> dict:
    """The tiny SigLIP vision tower (64 px, patch 8 -> M = 64 = 8 x 8 patches, no [CLS]); ``use_head``: the
    attention-pooling head the original checkpoint has and LVLM checkpoints drop."""
    return dict(model_type="siglip_vision_model", image_size=IMAGE, patch_size=PATCH, hidden_size=64,
                intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=4,
                vision_use_head=use_head)


def tiny_siglip(tokenizer, seed: int = 0, *, layers: int = 3):
    """SiglipModel (vision tower WITH its pooling head, text tower of 2 layers, width 64 -> 64-d embeddings;
    transformers 4.4x has no projection_size: its text head keeps the text width).

    The post-layernorm, the head's probe and its biases are perturbed: random init gives gamma = 1, beta = 0 and
    zero biases, which would leave the bias terms of the SigLIP formulas untested.
    """
    torch.manual_seed(seed)
    tc = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=SIGLIP_TEXT_LEN, projection_size=64,
              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    vc = {k: v for k, v in siglip_vision_config(layers, use_head=True).items() if k != "model_type"}
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=tc, vision_config=vc))
    vision = model.vision_model
    with torch.no_grad():
        ln = vision.post_layernorm
        ln.weight.add_(0.2 * torch.randn_like(ln.weight))
        ln.bias.add_(0.2 * torch.randn_like(ln.bias))
        attn = vision.head.attention
        attn.in_proj_bias.copy_(0.1 * torch.randn_like(attn.in_proj_bias))
        attn.out_proj.bias.copy_(0.1 * torch.randn_like(attn.out_proj.bias))
    return model.eval()


def copy_tower(model, siglip) -> None:
    """Load ``siglip``'s vision weights into ``model``'s SigLIP tower, as many layers as that tower has (LLaVA-
    OneVision's tower drops the original's last layer) and no head (LVLM towers have none)."""
    inner = model.model if hasattr(model, "model") and hasattr(model.model, "vision_tower") else model
    tower = find_tower(inner.vision_tower, "vision")
    own = tower.state_dict()
    src = {k: v for k, v in find_tower(siglip, "vision").state_dict().items() if k in own}
    missing = set(own) - set(src)
    if missing:
        raise ValueError(f"copy_tower: the SigLIP checkpoint lacks {sorted(missing)[:3]}")
    tower.load_state_dict(src)


def text_config() -> dict:
    return dict(model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=PAD)


GRID_PINPOINTS = [[IMAGE, 2 * IMAGE], [2 * IMAGE, IMAGE], [2 * IMAGE, 2 * IMAGE]]


def sharpen(model, std: float, seed: int = 2) -> None:
    """Re-draw the LLM's and projector's weight matrices with a large std (norms and biases kept).

    With the default std of 0.02 a tiny LLM's greedy tokens barely depend on the prompt or on which visual
    tokens it sees; at 0.3 different selections give different tokens, so a test can tell them apart.
    """
    g = torch.Generator().manual_seed(seed)
    inner = model.model if hasattr(model, "model") else model  # transformers >= 4.52 nests the parts
    parts = [inner.language_model, inner.multi_modal_projector, model.get_output_embeddings()]
    with torch.no_grad():
        for part in parts:
            for p in part.parameters():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) * std)


def tiny_lvlm(family: str, clip, seed: int = 1, attn: str = "sdpa", llm_std: float | None = None,
              feature_layer=-2, text: dict | None = None, image_token: int = IMAGE_TOKEN):
    """LlavaForConditionalGeneration ("llava"), LlavaNext... ("llava_next") or LlavaNextVideo... ("llava_next_video")
    with ``clip``'s vision weights in its tower (``llm_std``: see ``sharpen``); "llava_siglip": LLaVA with a SigLIP
    tower as LLaVA-Interleave ("full", the original's last layer dropped), ``clip`` then being ``tiny_siglip``'s.
    ``feature_layer``: ``vision_feature_layer`` (an int, or a list); ``text``, ``image_token``: another LLM config."""
    torch.manual_seed(seed)
    common = dict(vision_config=vision_config(), text_config=text or text_config(), image_token_index=image_token,
                  vision_feature_layer=feature_layer, vision_feature_select_strategy="default",
                  projector_hidden_act="gelu",
                  # transformers 4.4x treat fewer placeholders than these as "not expanded by the processor"
                  image_seq_length=M, video_seq_length=(IMAGE // PATCH // 2) ** 2)
    if family == "llava":
        cfg, cls = transformers.LlavaConfig(**common), transformers.LlavaForConditionalGeneration
    elif family == "llava_next":
        cfg = transformers.LlavaNextConfig(**common, image_grid_pinpoints=GRID_PINPOINTS)
        cls = transformers.LlavaNextForConditionalGeneration
    elif family == "llava_next_video":
        cfg = transformers.LlavaNextVideoConfig(**common, image_grid_pinpoints=GRID_PINPOINTS,
                                                video_token_index=VIDEO_TOKEN, spatial_pool_mode="average",
                                                spatial_pool_stride=2)
        cls = transformers.LlavaNextVideoForConditionalGeneration
    elif family == "llava_siglip":  # LLaVA-Interleave's layout: the tower drops SigLIP's last layer, "full"
        common.update(vision_config=siglip_vision_config(len(find_tower(clip, "vision").encoder.layers) - 1),
                      vision_feature_layer=-1, vision_feature_select_strategy="full")
        cfg, cls = transformers.LlavaConfig(**common), transformers.LlavaForConditionalGeneration
    else:
        raise ValueError(f"family: unknown {family!r}")
    cfg._attn_implementation = attn
    model = cls(cfg).eval()
    if family == "llava_siglip":
        copy_tower(model, clip)
    else:
        tower = model.model.vision_tower if hasattr(model, "model") else model.vision_tower
        # transformers 5's CLIPVisionModel holds the layers itself, 4.x's in .vision_model: find_tower walks both
        find_tower(tower, "vision").load_state_dict(find_tower(clip, "vision").state_dict())
    if llm_std is not None:
        sharpen(model, llm_std)
    return model


# family -> builder(siglip) of the SigLIP-tower models (the adapters' files add theirs)
SIGLIP_FAMILIES = {"llava_siglip": lambda siglip: tiny_lvlm("llava_siglip", siglip)}


def prompt_ids(n_images_per_row, placeholders, lengths=(5, 3), seed: int = 0, pad_left: tuple = (),
               stock=None):
    """input_ids / attention_mask as a processor makes them: text, the placeholders of each image, text.

    n_images_per_row: images per prompt; placeholders: placeholder count of each image (flat, in order);
    pad_left: extra left-padding per row (the rows are left-padded to the longest anyway).
    stock: the stock placeholders of each image when ``placeholders`` are the kept ones: the rows are then laid
    out as a LiteLVLM-patched model lays out its shrunk prompt (each row loses its own dropped placeholders; the
    batch keeps the stock prompt's length minus the fewest any row dropped, the other rows left-padded).
    """
    g = torch.Generator().manual_seed(seed)
    rows, k = [], 0
    for b, n in enumerate(n_images_per_row):
        row = torch.randint(3, VOCAB - 3, (lengths[0] + b,), generator=g).tolist()
        for _ in range(n):
            row += [placeholders[k][0]] * placeholders[k][1]
            row += torch.randint(3, VOCAB - 3, (2,), generator=g).tolist()
            k += 1
        row += torch.randint(3, VOCAB - 3, (lengths[1],), generator=g).tolist()
        rows.append([PAD] * (pad_left[b] if b < len(pad_left) else 0) + row)
    L = max(len(r) for r in rows)
    if stock is not None:
        starts = [sum(n_images_per_row[:b]) for b in range(len(rows))]
        drops = [sum(stock[i][1] - placeholders[i][1] for i in range(s, s + n))
                 for s, n in zip(starts, n_images_per_row)]
        L = max(len(r) + d for r, d in zip(rows, drops)) - min(drops)
    ids = torch.full((len(rows), L), PAD)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = torch.tensor(r)
        mask[b, L - len(r):] = torch.tensor([0 if (t == PAD) else 1 for t in r])
    return ids, mask


# --------------------------------------------------------------------------- PaliGemma (SigLIP tower, Gemma LLM)

PALIGEMMA_BOS, PALIGEMMA_NEWLINE = 2, 108  # Gemma's <bos> and "\n"; PAD (0) is also Gemma's <pad>


def gemma_text_config() -> dict:
    """A 2-layer Gemma of width 64 over the tiny LLM vocabulary (as ``text_config()``'s Llama)."""
    return dict(model_type="gemma", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
                pad_token_id=PAD, bos_token_id=PALIGEMMA_BOS, eos_token_id=1)


def tiny_paligemma(siglip, seed: int = 1, attn: str = "sdpa", llm_std: float | None = None, text=None,
                   image_token: int = IMAGE_TOKEN):
    """PaliGemmaForConditionalGeneration with ``siglip``'s vision weights in its tower (all its layers, no head:
    ``vision_use_head=False`` as in PaliGemma checkpoints), a 2-layer Gemma (``llm_std``: see ``sharpen``; ``text``,
    ``image_token``: another Gemma config). M = 64 image tokens per image (64 px, patch 8); ``image_seq_length``
    placeholders per image, as the processor."""
    torch.manual_seed(seed)
    n_layers, text = siglip.config.vision_config.num_hidden_layers, text or gemma_text_config()
    cfg = transformers.PaliGemmaConfig(vision_config=siglip_vision_config(n_layers), text_config=text,
                                       image_token_index=image_token, vocab_size=text["vocab_size"],
                                       projection_dim=64, hidden_size=64, pad_token_id=text["pad_token_id"])
    cfg._attn_implementation = attn
    cfg.text_config._attn_implementation = attn
    model = transformers.PaliGemmaForConditionalGeneration(cfg).eval()
    copy_tower(model, siglip)
    if llm_std is not None:
        sharpen(model, llm_std)
    return model


def paligemma_prompt(n_images_per_row, prompt_lengths=(4, 6), suffix_lengths=None, side: str = "left",
                     seed: int = 0, placeholders: int = M, stock: int | None = None) -> dict:
    """input_ids, attention_mask, token_type_ids (and labels with ``suffix_lengths``) as PaliGemmaProcessor makes
    them: ``placeholders`` image tokens per image, then <bos> + prompt + "\\n" (token type 0, the bidirectional
    prefix), then the suffix (type 1, labels = its ids; -100 on the prefix and the padding); padded on ``side``.
    ``stock``: the stock placeholders per image when ``placeholders`` are the kept ones (laid out as
    ``prompt_ids(stock=...)`` says)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b, n in enumerate(n_images_per_row):
        prefix = [IMAGE_TOKEN] * (placeholders * n) + [PALIGEMMA_BOS]
        prefix += torch.randint(3, VOCAB - 3, (prompt_lengths[b % len(prompt_lengths)],), generator=g).tolist()
        prefix.append(PALIGEMMA_NEWLINE)
        suffix = [] if suffix_lengths is None else torch.randint(
            3, VOCAB - 3, (suffix_lengths[b % len(suffix_lengths)],), generator=g).tolist()
        rows.append((prefix, suffix))
    L = max(len(p) + len(s) for p, s in rows)
    if stock is not None:
        drops = [(stock - placeholders) * n for n in n_images_per_row]
        L = max(len(p) + len(s) + d for (p, s), d in zip(rows, drops)) - min(drops)
    ids = torch.full((len(rows), L), PAD)
    mask, types = torch.zeros(len(rows), L, dtype=torch.long), torch.zeros(len(rows), L, dtype=torch.long)
    labels = torch.full((len(rows), L), -100)
    for b, (p, s) in enumerate(rows):
        n = len(p) + len(s)
        at = slice(L - n, L) if side == "left" else slice(0, n)
        ids[b, at] = torch.tensor(p + s)
        mask[b, at] = 1
        types[b, at] = torch.tensor([0] * len(p) + [1] * len(s))
        labels[b, at] = torch.tensor([-100] * len(p) + s)
    out = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if suffix_lengths is not None:
        out["labels"] = labels
    return out


ONEVISION_ASPECT = "anyres_max_2"  # a 2 x 2 tile grid (up to 16 x 16 cells) exceeds 2 views' worth: downsampled


def tiny_onevision(siglip, seed: int = 1, attn: str = "sdpa", llm_std: float | None = None, text: dict | None = None,
                   image_token: int = IMAGE_TOKEN, video_token: int = VIDEO_TOKEN, pinpoints=None,
                   aspect: str = ONEVISION_ASPECT):
    """LlavaOnevisionForConditionalGeneration with ``siglip``'s vision weights in its SigLIP tower, laid out as the
    real checkpoints (llava-hf/llava-onevision-*): the tower drops the original's last layer, features from its last
    layer (``vision_feature_layer=-1``), ``"full"`` (no [CLS] to drop), a 2-layer Llama (``llm_std``: see
    ``sharpen``; ``text``, ``image_token``, ``video_token``: another LLM config; ``pinpoints`` (default
    ``GRID_PINPOINTS``), ``aspect``: the tiles and ``vision_aspect_ratio``).

    Views of 64 px (8 x 8 = 64 tokens); tiles from ``GRID_PINPOINTS`` (1 x 2, 2 x 1, 2 x 2) and
    ``vision_aspect_ratio="anyres_max_2"``: a grid of more than about 2 views' cells (a 2 x 2 grid cropped to,
    e.g., 16 x 14) is bilinearly downsampled, as ``anyres_max_9`` does for large images at 384 px.
    """
    torch.manual_seed(seed)
    layers = len(find_tower(siglip, "vision").encoder.layers) - 1
    cfg = transformers.LlavaOnevisionConfig(
        vision_config=siglip_vision_config(layers), text_config=text or text_config(), image_token_index=image_token,
        video_token_index=video_token, vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints or GRID_PINPOINTS, vision_aspect_ratio=aspect, projector_hidden_act="gelu")
    cfg._attn_implementation = attn
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg).eval()
    copy_tower(model, siglip)
    if llm_std is not None:
        sharpen(model, llm_std)
    return model


SIGLIP_FAMILIES["llava_onevision"] = tiny_onevision
