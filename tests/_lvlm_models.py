"""Tiny LLaVA-family models for tests/test_llava*.py, built once per pytest process.

The builders live in examples/tiny_lvlm.py (the examples use them too); this
module caches them and adds the stock-side helpers the tests compare with.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import tiny_lvlm as tl  # noqa: E402
import tiny_qwen as tq  # noqa: E402

from litelvlm_kernels import reference  # noqa: E402
from litelvlm_kernels.integrations.hf import encode_text, vision_tower  # noqa: E402


@functools.lru_cache(maxsize=None)
def tokenizer():
    return tl.clip_tokenizer()


@functools.lru_cache(maxsize=None)
def clip():
    return tl.tiny_clip(tokenizer())


@functools.lru_cache(maxsize=None)
def siglip_tok():
    return tl.siglip_tokenizer()


@functools.lru_cache(maxsize=None)
def siglip():
    """The tiny SigLIP checkpoint (vision tower with its pooling head + text tower) the SigLIP LVLMs reuse."""
    return tl.tiny_siglip(siglip_tok())


SIGLIP_FAMILIES = ("llava_siglip",)  # families of tl.tiny_lvlm built on siglip(); others add theirs below


@functools.lru_cache(maxsize=None)
def lvlm(family: str, attn: str = "sdpa", llm_std: float | None = None):
    """The tiny model of ``family``; ``llm_std=0.3`` for tests that must see the selection in the tokens."""
    tower = siglip() if family in SIGLIP_FAMILIES else clip()
    return tl.tiny_lvlm(family, tower, attn=attn, llm_std=llm_std)


def is_siglip(model) -> bool:
    """Whether ``model``'s vision tower is SigLIP (then enable() pairs it with siglip())."""
    return "siglip" in getattr(model.config.vision_config, "model_type", "")


def pixels(*shape, seed=3):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inner(model):
    """The base model inside ``model`` (LLaVA-class: holds the projector; Qwen: holds ``visual``)."""
    sub = getattr(model, "model", None)
    return sub if hasattr(sub, "multi_modal_projector") or hasattr(sub, "visual") else model


def select_layer_states(model, px):
    """hidden_states[-2] without [CLS], as the stock get_image_features reads them."""
    out = inner(model).vision_tower(px, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:]


def text_embeds(expressions):
    """[n, P] CLIP text embeddings of a list of strings (n may be 0)."""
    c = clip()
    if not expressions:
        return torch.zeros(0, c.config.projection_dim)
    enc = tokenizer()(list(expressions), padding=True, return_tensors="pt")
    return encode_text(c, enc.input_ids, enc.attention_mask)


def scores(hidden_for_similarity, px, expressions):
    """Reference s [V, T, M'] on ``hidden_for_similarity`` and c [V, M] from the tower's last layer."""
    c = clip()
    tower = vision_tower(c)
    e = text_embeds(expressions)
    s = reference.similarity_direct(hidden_for_similarity, e.unsqueeze(0), c.visual_projection.weight,
                                    tower.post_layernorm.weight, tower.post_layernorm.bias,
                                    tower.post_layernorm.eps)
    last = tower.encoder.layers[-1]
    h = select_layer_states_clip(px)
    x = last.layer_norm1(h)
    q, k, v = last.self_attn.q_proj(x), last.self_attn.k_proj(x), last.self_attn.v_proj(x)
    return s, reference.contribution_direct(q[:, 0], k[:, 1:], v[:, 1:])


def select_layer_states_clip(px):
    """The CLIP tower's hidden_states[-2] with [CLS] (the input of its last layer)."""
    return clip().vision_model(px, output_hidden_states=True).hidden_states[-2]


def embed_merge(model, ids, token_id, feats):
    """inputs_embeds with ``feats`` [n, H] written into the ``token_id`` rows, as LLaVA's forward merges them."""
    emb = model.get_input_embeddings()(ids)
    where = (ids == token_id).unsqueeze(-1).expand_as(emb)
    return emb.masked_scatter(where, feats.to(emb.dtype))


EXPRS = [["the cat"], ["a red car", "the man on the left"]]  # LLaVA batch: row 0 has one image, row 1 two


def llava_batch(seed: int = 3) -> dict:
    """2 prompts (left padded), 3 LLaVA-1.5 images: row 0 has one, row 1 two; stock placeholder counts."""
    ids, mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, tl.M)] * 3)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels(3, 3, tl.IMAGE, tl.IMAGE, seed=seed))


def enable(model, **settings):
    """enable_litelvlm with the tiny CLIP's (or, for a SigLIP tower, the tiny SigLIP's) text tower and tokenizer."""
    from litelvlm_kernels.integrations.lvlm import enable_litelvlm

    if is_siglip(model):
        return enable_litelvlm(model, siglip(), siglip_tok(), **settings)
    return enable_litelvlm(model, clip(), tokenizer(), **settings)


def siglip_text_embeds(expressions):
    """[n, P] SigLIP text embeddings, tokenised as trained (padded to max_position_embeddings, no mask)."""
    sg = siglip()
    if not expressions:
        return torch.zeros(0, sg.config.text_config.projection_size)
    ids = siglip_tok()(list(expressions), padding="max_length", max_length=tl.SIGLIP_TEXT_LEN,
                       truncation=True, return_tensors="pt").input_ids
    return sg.text_model(input_ids=ids).pooler_output


def siglip_layer_states(px, n: int):
    """The tiny SigLIP's state after its first ``n`` layers, by hand (4.5x ties hidden_states[-1] to the
    post-layernormed output, and its inner transformer returns no hidden_states at all)."""
    from litelvlm_kernels.selection.towers import find_tower, layer_output

    tower = find_tower(siglip(), "vision")
    h = tower.embeddings(px)
    for layer in tower.encoder.layers[:n]:
        h = layer_output(layer(h, None))
    return h


def siglip_head_qkv(y):
    """The pooling head's q [1, D], k, v [B, M, D] by hand from nn.MultiheadAttention's packed in_proj."""
    attn = siglip().vision_model.head.attention
    D = attn.embed_dim
    w, b = attn.in_proj_weight, attn.in_proj_bias
    probe = siglip().vision_model.head.probe[0]  # [1, D]
    return (probe @ w[:D].T + b[:D], y @ w[D:2 * D].T + b[D:2 * D], y @ w[2 * D:].T + b[2 * D:])


def siglip_scores(hidden_for_similarity, px, expressions):
    """Reference s [V, T, M'] on ``hidden_for_similarity`` (SigLIP fold: W_o W_v, W_o b_v + b_o, the original's
    post-layernorm) and c [V, M] from the original tower's pooling head over its last layer's output."""
    v = siglip().vision_model
    attn = v.head.attention
    D = attn.embed_dim
    w_o, b_o = attn.out_proj.weight, attn.out_proj.bias
    proj = w_o @ attn.in_proj_weight[2 * D:]
    bias = w_o @ attn.in_proj_bias[2 * D:] + b_o
    ln = v.post_layernorm
    s = reference.similarity_direct(hidden_for_similarity, siglip_text_embeds(expressions).unsqueeze(0), proj,
                                    ln.weight, ln.bias, ln.eps, proj_bias=bias)
    q, k, val = siglip_head_qkv(v(px).last_hidden_state)
    return s, reference.map_contribution_direct(q, k, val, w_o, attn.num_heads)


def spy_forward(patch, seen: list):
    """Record the arguments the patch hands to the stock forward."""
    orig = patch._orig_forward

    def spy(**kw):
        seen.append(kw)
        return orig(**kw)

    patch._orig_forward = spy


def greedy(model, inputs, **kw):
    """Greedy generate, 4 new tokens unless told otherwise."""
    kw.setdefault("max_new_tokens", 4)
    return model.generate(**inputs, do_sample=False, **kw)


@functools.lru_cache(maxsize=None)
def paligemma(attn: str = "sdpa", llm_std: float | None = None):
    """The tiny PaliGemmaForConditionalGeneration on siglip()'s tower (all its layers, no head)."""
    return tl.tiny_paligemma(siglip(), attn=attn, llm_std=llm_std)


@functools.lru_cache(maxsize=None)
def qwen(family: str, attn: str = "sdpa", llm_std: float | None = 0.3):
    """The tiny Qwen2.5-VL / Qwen3-VL (``tiny_qwen``); enable() pairs it with clip() as its scorer."""
    return tq.tiny_qwen(family, attn=attn, llm_std=llm_std)


@functools.lru_cache(maxsize=None)
def onevision(attn: str = "sdpa", llm_std: float | None = None):
    """The tiny LlavaOnevisionForConditionalGeneration on siglip()'s tower (its last layer dropped, "full")."""
    return tl.tiny_onevision(siglip(), attn=attn, llm_std=llm_std)


def video_reference(feats, s, c, R: int, video_budget: str):
    """The reference's kept tokens of one video: feats [F, P, H] (the stock per-frame features), s [F, T, P],
    c [F, P]. "per_frame": R' per frame; "per_clip": R' over all frames, contributions as per-frame shares
    (views.py). Returns (kept features [n, H] in frame then raster order, kept flat indices f * P + t)."""
    F_, P = c.shape
    if video_budget == "per_frame":
        idx, _, _ = reference.select(s, c, R, order="spatial")
        return (torch.cat([feats[f, idx[f]] for f in range(F_)]),
                {f * P + int(t) for f in range(F_) for t in idx[f]})
    share = c / c.sum(1, keepdim=True)
    idx, _, _ = reference.select(s.permute(1, 0, 2).flatten(1)[None], share.flatten()[None], R, order="spatial")
    return feats.flatten(0, 1)[idx[0]], set(idx[0].tolist())


def assert_video_keep_all(model, batch, P: int, frames: int, expressions, closing: int = 0, **settings):
    """Both video budgets at their keep-all budget (per_frame: R = P pooled tokens; per_clip: R = F P) give the stock
    logits (and, per_frame, the stock greedy ids); the report counts F P (+ ``closing`` newlines) per video."""
    with torch.no_grad():
        logits, ids = model(**batch).logits, greedy(model, batch)
        for vb, R in (("per_frame", P), ("per_clip", frames * P)):
            with enable(model, num_retain=R, video_budget=vb, **settings) as patch:
                assert torch.equal(model(**batch, referring_expressions=expressions).logits, logits), vb
                if vb == "per_frame":
                    assert torch.equal(greedy(model, batch, referring_expressions=expressions), ids)
            n = [frames * P + closing] * batch["pixel_values_videos"].shape[0]
            assert patch.last_report["video"]["stock"] == n == patch.last_report["video"]["kept"]
