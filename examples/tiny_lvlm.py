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

from litelvlm_kernels.integrations._towers import find_tower

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


def tiny_lvlm(family: str, clip, seed: int = 1, attn: str = "sdpa", llm_std: float | None = None):
    """LlavaForConditionalGeneration ("llava"), LlavaNext... ("llava_next") or LlavaNextVideo... ("llava_next_video")
    with ``clip``'s vision weights in its tower (``llm_std``: see ``sharpen``)."""
    torch.manual_seed(seed)
    common = dict(vision_config=vision_config(), text_config=text_config(), image_token_index=IMAGE_TOKEN,
                  vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
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
    else:
        raise ValueError(f"family: unknown {family!r}")
    cfg._attn_implementation = attn
    model = cls(cfg).eval()
    tower = model.model.vision_tower if hasattr(model, "model") else model.vision_tower
    # transformers 5's CLIPVisionModel holds the layers itself, 4.x's in .vision_model: find_tower walks both
    find_tower(tower, "vision").load_state_dict(find_tower(clip, "vision").state_dict())
    if llm_std is not None:
        sharpen(model, llm_std)
    return model


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
    p.add_argument("--repeat", type=int, default=3, help="timed forwards (median)")
    args = p.parse_args(argv)
    tok = clip_tokenizer()
    clip = tiny_clip(tok)
    return args, tok, clip, tiny_lvlm(family, clip)


def prompt_ids(n_images_per_row, placeholders, lengths=(5, 3), seed: int = 0, pad_left: tuple = ()):
    """input_ids / attention_mask as a processor makes them: text, the placeholders of each image, text.

    n_images_per_row: images per prompt; placeholders: placeholder count of each image (flat, in order);
    pad_left: extra left-padding per row (the rows are left-padded to the longest anyway).
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
    ids = torch.full((len(rows), L), PAD)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = torch.tensor(r)
        mask[b, L - len(r):] = torch.tensor([0 if (t == PAD) else 1 for t in r])
    return ids, mask


def demo(model, clip, tokenizer, inputs: dict, expressions, *, new_tokens: int = 8, repeat: int = 3,
         full_size: tuple = ("vicuna-7b", 576), **settings) -> dict:
    """Stock generate vs LiteLVLM generate on ``inputs``; prints tokens, FLOPs, KV bytes and time, returns them.

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
    preset, per_view = full_size
    cfg = DecoderConfig.preset(preset)
    ratio = metrics["pruned"]["visual_tokens"] / metrics["stock"]["visual_tokens"]
    kept = round(per_view * ratio)
    print(f"same visual-token ratio at {preset} scale ({per_view} -> {kept} visual + 64 text tokens): prefill "
          f"{prefill_flops(cfg, per_view, 64) / 1e12:.2f} -> {prefill_flops(cfg, kept, 64) / 1e12:.2f} TFLOPs, "
          f"KV cache {kv_cache_bytes(cfg, per_view, 64) / 1e6:.0f} -> {kv_cache_bytes(cfg, kept, 64) / 1e6:.0f} MB")
    return {"stock_ids": stock, "pruned_ids": pruned, "report": report, "metrics": metrics,
            "keep_all_equals_stock": same}
