"""The Hugging Face CLIP adapter: hooked values vs a hand-run of the tower, results vs the reference.

Tiny randomly initialised CLIP towers (image 56 px, patch 8 -> M = 49 patches,
Dv = D = 64, P = 32, 3 layers) and a tiny CLIP BPE tokenizer written into a
temporary directory: nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from litelvlm_kernels import reference  # noqa: E402
from litelvlm_kernels.integrations import hf  # noqa: E402
from litelvlm_kernels.testing import assert_selection_close  # noqa: E402

WORDS = ["a", "photo", "of", "the", "cat", "dog", "red", "car", "man", "on", "left", "right", "tree", "sky"]
M = 49  # (56 / 8) ** 2


def write_clip_vocab(directory, words=WORDS):
    """A CLIP BPE vocabulary + merges that spell each word as one token."""
    vocab, merges = {}, []

    def add(tok):
        vocab.setdefault(tok, len(vocab))

    for ch in sorted(set("".join(words))):
        add(ch)
        add(ch + "</w>")
    for w in words:
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        while len(syms) > 1:
            merges.append(f"{syms[0]} {syms[1]}")
            syms = [syms[0] + syms[1]] + syms[2:]
            add(syms[0])
    add("<|startoftext|>")
    add("<|endoftext|>")
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return vocab


def clip_tokenizer(directory):
    write_clip_vocab(directory)
    return transformers.CLIPTokenizer.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return clip_tokenizer(tmp_path_factory.mktemp("clip_tok"))


def _configs(tokenizer):
    vc = transformers.CLIPVisionConfig(image_size=56, patch_size=8, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=3, num_attention_heads=4, projection_dim=32)
    tc = transformers.CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                     num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
                                     max_position_embeddings=16, eos_token_id=tokenizer.eos_token_id,
                                     bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    return vc, tc


@pytest.fixture(scope="module")
def models(tokenizer):
    return clip_pair(tokenizer)


def clip_pair(tokenizer):
    """(CLIPVisionModelWithProjection, CLIPTextModelWithProjection) of the tiny CLIP, a perturbed post-layernorm."""
    torch.manual_seed(0)
    vc, tc = _configs(tokenizer)
    vision = transformers.CLIPVisionModelWithProjection(vc).eval()
    text = transformers.CLIPTextModelWithProjection(tc).eval()
    # Random init gives post-layernorm gamma = 1, beta = 0: perturb them so the
    # folding of gamma and beta is actually exercised.
    with torch.no_grad():
        ln = vision.vision_model.post_layernorm
        ln.weight.add_(0.2 * torch.randn_like(ln.weight))
        ln.bias.add_(0.2 * torch.randn_like(ln.bias))
    return vision, text


@pytest.fixture(scope="module")
def pruner(models, tokenizer):
    vision, text = models
    return hf.LiteLVLMPruner(vision, text, tokenizer)


def pixels(B, seed=1):
    return torch.randn(B, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def reference_prune(pruner, cap, text_embeds, num_retain, **kw):
    return reference.prune(cap.hidden, text_embeds, pruner.proj_weight.detach(), pruner.ln_weight.detach(),
                           pruner.ln_bias.detach(), cap.q_cls, cap.keys, cap.values, num_retain,
                           ln_eps=pruner.ln_eps, **kw)


def check_against_reference(pruner, out, cap, text_embeds, num_retain, *, min_votes=1, order="official",
                            num_texts=None):
    """out equals the reference on the captured values (near-ties only, reported)."""
    s = reference.similarity_direct(cap.hidden, text_embeds, pruner.proj_weight.detach(), pruner.ln_weight.detach(),
                                    pruner.ln_bias.detach(), pruner.ln_eps)
    c = reference.contribution_direct(cap.q_cls, cap.keys, cap.values)
    notes = assert_selection_close((out.indices, out.num_similarity, out.from_similarity), s, c, num_retain,
                                   min_votes=min_votes, order=order, num_texts=num_texts)
    assert not notes, notes  # tiny fp32 towers: no near-ties expected, so demand identity
    ref = reference_prune(pruner, cap, text_embeds, num_retain, min_votes=min_votes, order=order,
                          num_texts=num_texts)
    assert torch.equal(out.indices, ref[0])
    torch.testing.assert_close(out.tokens, torch.gather(
        cap.hidden, 1, out.indices.unsqueeze(-1).expand(-1, -1, cap.hidden.shape[-1])), rtol=0, atol=0)


def test_text_embeds_equal_model_output(models, tokenizer, pruner):
    _, text = models
    enc = tokenizer(["a photo of the cat", "red car on the left"], padding=True, return_tensors="pt")
    assert (enc.input_ids == tokenizer.eos_token_id).any(1).all()
    with torch.no_grad():
        mine = hf.encode_text(text, enc.input_ids, enc.attention_mask)
        theirs = text(**enc).text_embeds
    torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    cond_str = pruner.prepare_text(texts=["a photo of the cat", "red car on the left"])
    cond_ids = pruner.prepare_text(enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(cond_str.text_embeds, theirs.unsqueeze(0))
    torch.testing.assert_close(cond_ids.text_embeds, theirs.unsqueeze(0))
    w, b = reference.fold_text(theirs.unsqueeze(0), pruner.proj_weight.detach(), pruner.ln_weight.detach(),
                               pruner.ln_bias.detach())
    torch.testing.assert_close(cond_str.folded.w, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cond_str.folded.b, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("order", ["official", "spatial"])
@pytest.mark.parametrize("multi_text", ["union", "intersection"])
def test_one_text_group_shared_by_all_images(pruner, order, multi_text):
    texts = ["the man on the left", "a red car"]
    with torch.no_grad():
        out = pruner.prune(pixels(2), texts=texts, num_retain=16, order=order, multi_text=multi_text,
                           return_capture=True)
    cap = out.capture
    assert out.indices.shape == (2, 16) and out.tokens.shape == (2, 16, 64)
    e = out.text.text_embeds  # [1, 2, P]: Bt = 1 broadcast
    assert e.shape == (1, 2, 32)
    check_against_reference(pruner, out, cap, e, 16, min_votes=1 if multi_text == "union" else 0, order=order)


def test_several_texts_per_image_padded(pruner):
    groups = [["the cat", "a dog"], ["the red car"], ["the man", "on the left", "a tree"]]
    with torch.no_grad():
        out = pruner.prune(pixels(3), texts=groups, num_retain=12, return_capture=True)
    cond, cap = out.text, out.capture
    assert cond.text_embeds.shape == (3, 3, 32)
    assert cond.num_texts.tolist() == [2, 1, 3]
    assert torch.all(cond.text_embeds[1, 1:] == 0) and torch.all(cond.text_embeds[0, 2:] == 0)
    check_against_reference(pruner, out, cap, cond.text_embeds, 12, num_texts=cond.num_texts)
    # Padding is invisible: each image pruned alone with only its own texts gives the same row.
    for b, g in enumerate(groups):
        with torch.no_grad():
            alone = pruner.prune(pixels(3)[b:b + 1], texts=g, num_retain=12)
        assert torch.equal(alone.indices[0], out.indices[b])
        assert int(alone.num_similarity[0]) == int(out.num_similarity[b])
    # the same grouping from input_ids + texts_per_image
    flat = [t for g in groups for t in g]
    enc = pruner.tokenizer(flat, padding=True, return_tensors="pt")
    with torch.no_grad():
        out_ids = pruner.prune(pixels(3), enc.input_ids, enc.attention_mask, texts_per_image=[2, 1, 3], num_retain=12)
    assert torch.equal(out_ids.indices, out.indices)


def test_video_frames_share_one_text(pruner):
    F = 4
    frames = pixels(F, seed=7)
    with torch.no_grad():
        out = pruner.prune(frames, texts="the dog on the right", num_retain=10, return_capture=True)
        cond = out.text
        assert cond.folded.w.shape[0] == 1  # folded once, broadcast to the F frames
        check_against_reference(pruner, out, out.capture, cond.text_embeds.expand(F, -1, -1), 10)
        for f in range(F):  # each frame independent, its own [CLS] and budget
            one = pruner.prune(frames[f:f + 1], text=cond, num_retain=10)
            assert torch.equal(one.indices[0], out.indices[f])


def test_groups_shared_across_tiles_or_frames(pruner):
    # 2 videos x 3 frames; video 0 has 1 text, video 1 has 2 texts
    frames = pixels(6, seed=3)
    with torch.no_grad():
        out = pruner.prune(frames, texts=[["a cat"], ["the man", "the red car"]], num_retain=9, return_capture=True)
        e = out.text.text_embeds.repeat_interleave(3, dim=0)
        n = out.text.num_texts.repeat_interleave(3)
        check_against_reference(pruner, out, out.capture, e, 9, num_texts=n)
        with pytest.raises(ValueError, match="share_text_across"):
            pruner.prune(frames, texts=[["a cat"], ["the man"]], num_retain=9, share_text_across=2)
        with pytest.raises(ValueError, match="text groups"):
            pruner.prune(pixels(5), texts=[["a cat"], ["the man"]], num_retain=9)


def test_no_texts_is_pure_context_selection(pruner):
    with torch.no_grad():
        out = pruner.prune(pixels(2), texts=[], num_retain=8, return_capture=True)
    assert out.text.text_embeds.shape == (1, 0, 32)
    assert out.num_similarity.tolist() == [0, 0] and not out.from_similarity.any()
    cap = out.capture
    c = reference.contribution_direct(cap.q_cls, cap.keys, cap.values)
    expected = torch.stack([reference.top_contribution_order(c[b])[:8] for b in range(2)])
    assert torch.equal(out.indices, expected)


def test_text_cache_folds_once(models, tokenizer):
    vision, text = models
    pruner = hf.LiteLVLMPruner(vision, text, tokenizer)
    calls = []
    h = text.text_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            a = pruner.prune(pixels(1), texts=["a cat"], num_retain=8)
            b = pruner.prune(pixels(1, seed=5), texts=["a cat"], num_retain=8)
            assert len(calls) == 1 and a.text is b.text
            enc = tokenizer(["a cat"], return_tensors="pt")
            c1 = pruner.prepare_text(enc.input_ids, enc.attention_mask)
            c2 = pruner.prepare_text(enc.input_ids.clone(), enc.attention_mask.clone())
            assert c1 is c2 and len(calls) == 2
            # an in-place weight update invalidates the cached fold
            vision.vision_model.post_layernorm.weight.mul_(1.0)
            c3 = pruner.prepare_text(enc.input_ids, enc.attention_mask)
            assert c3 is not c1 and len(calls) == 3
            pruner.clear_cache()
            assert pruner.prepare_text(texts=["a cat"]) is not a.text
            # new parameter objects (load_state_dict(assign=True)) are seen and invalidate the cache
            ln = vision.vision_model.post_layernorm
            old = {k: v.clone() for k, v in ln.state_dict().items()}
            ln.load_state_dict({k: v * 2 for k, v in old.items()}, assign=True)
            c4 = pruner.prepare_text(texts=["a cat"])
            assert pruner.ln_weight is ln.weight and c4 is not a.text
            torch.testing.assert_close(c4.folded.b, 2 * a.text.folded.b)
            ln.load_state_dict(old, assign=True)
    finally:
        h.remove()


def test_clip_model_and_plain_vision_model(models, tokenizer):
    vc, tc = _configs(tokenizer)
    torch.manual_seed(1)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(),
                                                          projection_dim=32)).eval()
    pruner = hf.LiteLVLMPruner(clip, tokenizer=tokenizer)  # text tower taken from the CLIPModel
    assert pruner.text_model is clip
    with torch.no_grad():
        out = pruner.prune(pixels(2), texts=["the cat", "a dog"], num_retain=10, return_capture=True)
        e = clip.get_text_features(**tokenizer(["the cat", "a dog"], padding=True, return_tensors="pt"))
        e = getattr(e, "pooler_output", e)  # transformers 5 returns an output object, 4.x a tensor
        torch.testing.assert_close(out.text.text_embeds[0], e)
        check_against_reference(pruner, out, out.capture, out.text.text_embeds, 10)

        # LLaVA's tower is a CLIPVisionModel: no projection, so it must be given
        plain = transformers.CLIPVisionModel(vc).eval()
        hf.vision_tower(plain).load_state_dict(hf.vision_tower(clip).state_dict())  # 4.x nests it one level down
        with pytest.raises(ValueError, match="visual_projection"):
            hf.LiteLVLMPruner(plain, clip, tokenizer)
        p2 = hf.LiteLVLMPruner(plain, clip, tokenizer, visual_projection=clip.visual_projection)
        out2 = p2.prune(pixels(2), texts=["the cat", "a dog"], num_retain=10)
    assert torch.equal(out2.indices, out.indices)


def test_image_without_texts_among_images_with_texts(pruner):
    with torch.no_grad():
        out = pruner.prune(pixels(2), texts=[["a cat", "the dog"], []], num_retain=10, return_capture=True)
        alone = pruner.prune(pixels(2)[1:], texts=[], num_retain=10)
    assert out.text.num_texts.tolist() == [2, 0]
    assert int(out.num_similarity[1]) == 0 and int(out.num_similarity[0]) > 0
    assert torch.equal(out.indices[1], alone.indices[0])
    check_against_reference(pruner, out, out.capture, out.text.text_embeds, 10, num_texts=out.text.num_texts)


def test_models_built_in_inference_mode(tokenizer):
    vc, tc = _configs(tokenizer)
    with torch.inference_mode():  # parameters become inference tensors: no version counters
        vision = transformers.CLIPVisionModelWithProjection(vc).eval()
        text = transformers.CLIPTextModelWithProjection(tc).eval()
        pruner = hf.LiteLVLMPruner(vision, text, tokenizer)
        a = pruner.prune(pixels(1), texts=["a cat"], num_retain=8)
        b = pruner.prune(pixels(1), texts=["a cat"], num_retain=8)
    assert a.text is b.text and torch.equal(a.indices, b.indices)


def test_text_embeds_and_errors(pruner):
    e = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = pruner.prune(pixels(2), text_embeds=e, texts_per_image=[1, 2], num_retain=6, return_capture=True)
        check_against_reference(pruner, out, out.capture, out.text.text_embeds, 6, num_texts=out.text.num_texts)
        with pytest.raises(ValueError, match="exactly one"):
            pruner.prune(pixels(1), texts=["a"], text_embeds=e, num_retain=6)
        with pytest.raises(ValueError, match="texts_per_image"):
            pruner.prune(pixels(1), text_embeds=e, texts_per_image=[1, 1], num_retain=6)
        with pytest.raises(ValueError, match="tokenizer"):
            hf.LiteLVLMPruner(pruner.vision_model, pruner.text_model).prune(pixels(1), texts=["a"], num_retain=6)
