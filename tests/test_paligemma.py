"""enable_litelvlm on a stock PaliGemmaForConditionalGeneration (tiny, random, offline; SigLIP tower, Gemma LLM).

Acceptance checks of the PaliGemma adapter: keeping every token in raster
order changes nothing (logits, loss and generated ids equal the stock model's
bit for bit, with token_type_ids and labels); with R < M the logits equal a
hand-built pipeline that feeds the LLM only the kept tokens chosen by the
reference (SigLIP fold and pooling-head contribution, ``lm.siglip_scores``)
from the stock model's own image features, with R' placeholders and the
matching token_type_ids; token_type_ids are shrunk with the placeholders (the
prefix-LM mask keeps the kept image tokens and the prompt bidirectional);
padding on either side, several images per prompt, several expressions; a
sharpened LLM whose tokens show the selection; caches across turns; bad
inputs named.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

import _lvlm_models as lm  # noqa: E402
from _lvlm_models import tl  # noqa: E402

from litelvlm_kernels import reference  # noqa: E402
from litelvlm_kernels.integrations.lvlm import disable_litelvlm  # noqa: E402
from litelvlm_kernels.selection.towers import find_tower, layer_output  # noqa: E402

M = tl.M
EXPRS = [["the cat"], ["a red car", "the man on the left"]]  # row 0: one image, row 1: two images
OTHER = [["the dog"], ["the tree", "the sky"]]
PER_IMAGE = [EXPRS[0], EXPRS[1], EXPRS[1]]
# transformers 5 builds PaliGemma's mask from token_type_ids at every prefill (the prefix block bidirectional, the
# rest causal); 4.x makes the whole prefill bidirectional at inference and uses them only with labels (training)
V5 = int(transformers.__version__.split(".")[0]) >= 5
OLD_MASK = tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (4, 46)

enable, greedy = lm.enable, lm.greedy


@pytest.fixture(scope="module")
def model():
    return lm.paligemma()


def batch(suffix: bool = True, side: str = "left", placeholders: int = M, pixels: bool = True,
          stock: int | None = None) -> dict:
    """2 prompts as PaliGemmaProcessor makes them: row 0 one image, row 1 two; a suffix (labels) if asked;
    ``stock``: laid out as the patched model shrinks a prompt of ``stock`` placeholders per image."""
    b = tl.paligemma_prompt([1, 2], suffix_lengths=(3, 2) if suffix else None, side=side,
                            placeholders=placeholders, stock=stock)
    if pixels:
        b["pixel_values"] = lm.pixels(3, 3, tl.IMAGE, tl.IMAGE)
    return b


def without(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def stock_features(model, px):
    """[N, M, H] what the stock forward merges: the installed version's own get_image_features."""
    get = getattr(model, "get_image_features", None)
    if get is None:  # transformers 4.45: computed inline in forward
        inner = lm.inner(model)
        feats = inner.multi_modal_projector(inner.vision_tower(px).last_hidden_state)
        return feats / model.config.hidden_size ** 0.5
    out = get(px)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def last_layer_states(model, px):
    """[N, M, Dv] the output of the tower's last layer, before post_layernorm (the select layer).

    Run from hidden_states[-2]: transformers 4.57 returns hidden_states[-1] already post-layernormed.
    """
    vt = lm.inner(model).vision_tower
    h = vt(px, output_hidden_states=True).hidden_states[-2]
    return layer_output(find_tower(vt, "vision").encoder.layers[-1](h, None))


def reference_indices(model, px, per_image, R, min_votes=1, order="official"):
    """Per image: the reference's kept indices and from_similarity flags, on the tower's last-layer states."""
    hidden = last_layer_states(model, px)
    out = []
    for i, e in enumerate(per_image):
        s, c = lm.siglip_scores(hidden[i:i + 1], px[i:i + 1], e)
        idx, _, from_sim = reference.select(s, c, R, min_votes=min_votes, order=order)
        out.append((idx[0], from_sim[0]))
    return out


def hand_built(model, per_image, R, min_votes=1, order="official", suffix=True, side="left") -> dict:
    """The reference's kept tokens, taken from the stock image features, merged into prompts with R' placeholders
    (token_type_ids, labels and mask as the processor would make them for R' placeholders)."""
    px = lm.pixels(3, 3, tl.IMAGE, tl.IMAGE)
    feats = stock_features(model, px)
    kept = [feats[i, idx] for i, (idx, _) in enumerate(reference_indices(model, px, per_image, R, min_votes, order))]
    b = batch(suffix=suffix, side=side, placeholders=min(R, M), pixels=False, stock=M)
    b["inputs_embeds"] = lm.embed_merge(model, b["input_ids"], tl.IMAGE_TOKEN, torch.cat(kept))
    return b


def test_keep_all_in_raster_order_equals_stock(model):
    train, prompt = batch(), batch(suffix=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(**train)
        ids = greedy(model, prompt)
        ids_causal = greedy(model, without(prompt, "token_type_ids"))
        with enable(model, num_retain=M, order="spatial") as patch:
            got = model(**train, referring_expressions=EXPRS)
            assert torch.equal(got.logits, out.logits) and torch.equal(got.loss, out.loss)
            assert torch.equal(greedy(model, prompt, referring_expressions=EXPRS), ids)
            assert torch.equal(greedy(model, without(prompt, "token_type_ids"), referring_expressions=EXPRS),
                               ids_causal)
            assert {k: patch.last_report["image"][k] for k in ("stock", "kept")} == {"stock": [M] * 3,
                                                                                    "kept": [M] * 3}
        with enable(model, num_retain=10 * M, order="spatial"):
            assert torch.equal(model(**train, referring_expressions=EXPRS).logits, out.logits)
    # nothing left behind: the class's own methods (the generate shim included), same weights
    for name in ("forward", "generate", "prepare_inputs_for_generation", "_litelvlm_patch"):
        assert name not in model.__dict__
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("multi_text,min_votes,order", [("union", 1, "official"), ("intersection", 0, "spatial"),
                                                       (2, 2, "official")])
def test_pruned_equals_hand_built_pipeline(model, multi_text, min_votes, order):
    R = 16
    train = batch()
    with torch.no_grad():
        hand = hand_built(model, PER_IMAGE, R, min_votes, order)
        want = model(**without(hand, "input_ids"))
        with enable(model, num_retain=R, multi_text=multi_text, order=order) as patch:
            seen = []
            lm.spy_forward(patch, seen)
            got = model(**train, referring_expressions=EXPRS)
            if multi_text == "union":  # generate once: left padding, mixed expressions, 1 and 2 images
                prompt, hand_prompt = batch(suffix=False), hand_built(model, PER_IMAGE, R, suffix=False)
                want_ids = model.generate(**without(hand_prompt, "labels"), max_new_tokens=4, do_sample=False)
                got_ids = greedy(model, prompt, referring_expressions=EXPRS)
                L = prompt["input_ids"].shape[1]
                assert torch.equal(got_ids[:, :L], prompt["input_ids"])  # the caller's prompt back in front
                assert torch.equal(got_ids[:, L:], want_ids[:, hand_prompt["input_ids"].shape[1]:])
    assert patch.last_report["image"]["kept"] == [R] * 3
    # what the LLM saw: R' placeholders per image, their token types and labels shrunk with them
    kw = seen[0]  # the forward call (generate's steps follow)
    for k in ("attention_mask", "token_type_ids", "labels"):
        assert torch.equal(kw[k], hand[k]), k
    assert got.logits.shape == want.logits.shape == (2, hand["input_ids"].shape[1], tl.VOCAB)
    real = hand["attention_mask"].bool()
    torch.testing.assert_close(got.logits[real], want.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)


def test_token_types_reach_the_mask_and_right_padding(model):
    """The shrunk token_type_ids change the logits as stock's do (so they reach the prefix-LM mask), and
    right-padded prompts give the left-padded rows' logits."""
    R = 8
    left, right = batch(), batch(side="right")
    kept = left["attention_mask"].sum(1) - (M - R) * torch.tensor([1, 2])  # real tokens the LLM sees per row
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        a = model(**left, referring_expressions=EXPRS)
        causal = model(**without(left, "token_type_ids"), referring_expressions=EXPRS)
        pos = (left["attention_mask"].cumsum(1) - 1).clamp_min(0) + 1  # PaliGemma's positions start at 1
        seen = []
        lm.spy_forward(patch, seen)
        model(**left, position_ids=pos, referring_expressions=EXPRS)
        # transformers 4.45 unmasks every type-0 key after the padding mask when training (labels), padding
        # included, so its stock results depend on the padding side there; compare without labels on it
        keys = ("labels",) if OLD_MASK else ()
        a_pad = model(**without(left, *keys), referring_expressions=EXPRS)
        c = model(**without(right, *keys), referring_expressions=EXPRS)
    assert not torch.allclose(a.logits, causal.logits, atol=1e-4)
    for r, n in enumerate(kept.tolist()):
        torch.testing.assert_close(c.logits[r, :n], a_pad.logits[r, -n:], rtol=1e-4, atol=1e-4)
    if not OLD_MASK:
        torch.testing.assert_close(c.loss, a.loss, rtol=1e-5, atol=1e-6)
    # given positions are renumbered over the dropped placeholders: each row's real tokens keep consecutive
    # positions from its first one; the extra padding of the row that dropped more gets 1, as the padding
    given, shrunk_mask = seen[0]["position_ids"], seen[0]["attention_mask"].bool()
    for r in range(2):
        n = int(shrunk_mask[r].sum())
        assert given[r][shrunk_mask[r]].tolist() == list(range(1, n + 1))
        assert (given[r][~shrunk_mask[r]] == 1).all()


def test_deepcopy_is_patched_on_its_own_weights(model):
    """The generate shim (transformers 5) is copied bound to the copy, and disable() on either removes only its own."""
    prompt = batch(suffix=False)
    with torch.no_grad():
        with enable(model, num_retain=8):
            a = greedy(model, prompt, referring_expressions=EXPRS)
            twin = copy.deepcopy(model)
        assert "forward" not in model.__dict__ and "prepare_inputs_for_generation" not in model.__dict__
        assert torch.equal(greedy(twin, prompt, referring_expressions=EXPRS), a)
        disable_litelvlm(twin)
    assert not {"forward", "generate", "prepare_inputs_for_generation"} & set(twin.__dict__)


def test_sharpened_llm_shows_the_selection_in_the_tokens():
    model = lm.paligemma(llm_std=0.3)
    R = 8
    prompt = batch(suffix=False)
    with torch.no_grad(), enable(model, num_retain=R):
        a = greedy(model, prompt, referring_expressions=EXPRS)
        b = greedy(model, prompt, referring_expressions=OTHER)
        for exprs, got in ((EXPRS, a), (OTHER, b)):
            hand = hand_built(model, [exprs[0], exprs[1], exprs[1]], R, suffix=False)
            want = model.generate(**hand, max_new_tokens=4, do_sample=False)
            assert torch.equal(got[:, prompt["input_ids"].shape[1]:], want[:, hand["input_ids"].shape[1]:])
    assert not torch.equal(a, b)


def test_report_views_hold_the_reference_indices(model):
    R = 16
    train = batch()
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        model(**train, referring_expressions=EXPRS)
        want = reference_indices(model, train["pixel_values"], PER_IMAGE, R)
    for i, (idx, from_sim) in enumerate(want):
        (view,) = patch.last_report["image"]["views"][i]
        assert torch.equal(view["indices"], idx) and torch.equal(view["from_similarity"], from_sim)
        assert view["grid"] == (8, 8)


def test_cache_from_a_pruned_turn_continues(model):
    """Turn 2 with turn 1's cache: its token_type_ids are the shrunk prefill's, then the new tokens' (suffix, 1);
    on transformers 5 that equals turn 2 prefilled from scratch (4.x prefills everything bidirectionally)."""
    R = 8
    prompt = batch(suffix=False)
    gen = dict(max_new_tokens=3, do_sample=False)
    with torch.no_grad(), enable(model, num_retain=R):
        turn1 = model.generate(**prompt, referring_expressions=EXPRS, return_dict_in_generate=True, **gen)
        extra = turn1.sequences.shape[1] - prompt["input_ids"].shape[1] + 2
        follow = torch.randint(3, tl.VOCAB - 3, (2, 2), generator=torch.Generator().manual_seed(4))
        turn2 = dict(input_ids=torch.cat([turn1.sequences, follow], 1),
                     attention_mask=torch.cat([prompt["attention_mask"], torch.ones(2, extra, dtype=torch.long)], 1),
                     token_type_ids=torch.cat([prompt["token_type_ids"], torch.ones(2, extra, dtype=torch.long)], 1),
                     pixel_values=prompt["pixel_values"])
        scratch = model.generate(**turn2, referring_expressions=EXPRS, **gen)
        cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.2x
        cached = model.generate(**turn2, **{cache: copy.deepcopy(turn1.past_key_values)},
                                referring_expressions=EXPRS, **gen)
        wrong = dict(turn2, token_type_ids=turn2["token_type_ids"].clone())
        wrong["token_type_ids"][:, -extra - 1] = 1  # the prompt's last token moved to the suffix
        with pytest.raises(ValueError, match="token_type_ids: differs"):
            model.generate(**wrong, **{cache: copy.deepcopy(turn1.past_key_values)}, **gen)
        bare = model.generate(**without(prompt, "token_type_ids"), referring_expressions=EXPRS,
                              return_dict_in_generate=True, **gen)
        with pytest.raises(ValueError, match="token_type_ids: the cached prompt was prefilled without"):
            model.generate(**turn2, **{cache: copy.deepcopy(bare.past_key_values)}, **gen)
    assert cached.shape == scratch.shape
    if V5:
        assert torch.equal(cached, scratch)


def test_bad_inputs_name_the_argument(model):
    train = batch()
    with torch.no_grad(), enable(model, num_retain=8):
        with pytest.raises(ValueError, match="token_type_ids: expected the shape of input_ids"):
            model(**dict(train, token_type_ids=train["token_type_ids"][:, 1:]), referring_expressions=EXPRS)
        with pytest.raises(TypeError, match="token_type_ids: expected integer"):
            model(**dict(train, token_type_ids=train["token_type_ids"].float()), referring_expressions=EXPRS)
        with pytest.raises(ValueError, match="labels: expected the shape of input_ids"):
            model(**dict(train, labels=train["labels"][:1]), referring_expressions=EXPRS)
        with pytest.raises(ValueError, match="referring_expressions"):
            model(**train)
        bad = dict(train, input_ids=train["input_ids"].clone())
        bad["input_ids"][1, -1] = tl.IMAGE_TOKEN  # one placeholder too many
        with pytest.raises(ValueError, match="input_ids"):
            model(**bad, referring_expressions=EXPRS)
        if "mm_encoder_outputs" in inspect.signature(model.forward).parameters:  # transformers 5.2x
            with pytest.raises(ValueError, match="mm_encoder_outputs: cannot be combined"):
                model(**train, mm_encoder_outputs={"image": None}, referring_expressions=EXPRS)
    disable_litelvlm(model)
    # a PaliGemma built on a CLIP tower (with [CLS]) is refused, naming the config field
    torch.manual_seed(0)
    cfg = transformers.PaliGemmaConfig(vision_config=tl.vision_config(), text_config=tl.gemma_text_config(),
                                       image_token_index=tl.IMAGE_TOKEN, vocab_size=tl.VOCAB, projection_dim=64,
                                       hidden_size=64)
    clip_tower = transformers.PaliGemmaForConditionalGeneration(cfg).eval()
    from litelvlm_kernels.integrations.lvlm import enable_litelvlm

    with pytest.raises(ValueError, match="vision_config"):
        enable_litelvlm(clip_tower, lm.clip(), lm.tokenizer())
    assert "forward" not in clip_tower.__dict__
