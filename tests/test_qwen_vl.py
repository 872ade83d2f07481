"""enable_litelvlm on Qwen2.5-VL and Qwen3-VL with a paired scorer (docs/design.md section 12).

Keeping every token is the stock model field for field (tests/test_keep_all_contract.py runs both families).
Here, with fewer kept tokens: the selection is the reference selection of the hand-built scorer signals, and
the LLM output is a hand-built pipeline that feeds the LLM only the kept rows at their stock M-RoPE positions
(and, for Qwen3-VL, the DeepStack rows of the same indices); generate() and a cached second turn follow the
stock decode rule; expressions and budgets change the kept tokens; bad inputs are refused by name.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import _keep_all_cases as cases  # noqa: E402
import _lvlm_models as lm  # noqa: E402
import _qwen_reference as ref  # noqa: E402
from _lvlm_models import tq  # noqa: E402

from litelvlm_kernels.integrations.generation import output_cache  # noqa: E402
from litelvlm_kernels.integrations.lvlm import enable_litelvlm  # noqa: E402
from litelvlm_kernels.testing import assert_selection_close  # noqa: E402

EXPRS = [["the cat"], ["a red car", "the man on the left"]]  # row 0: one image, row 1: two
OTHER = [["the sky"], ["a tree", "the dog on the right"]]
R = 3
FAMILIES = tq.FAMILIES


def enable(model, **settings):
    return enable_litelvlm(model, lm.clip(), lm.tokenizer(), **settings)


def kept_of(report) -> list:
    return [views[0]["indices"] for views in report["image"]["views"]]


def per_image(batch, exprs):
    """(rows, thw, the image's expressions) of each image, in order."""
    start, out, rows_of = 0, [], [0] + [1] * (len(batch["image_grid_thw"]) - 1)
    for b, thw in zip(rows_of, batch["image_grid_thw"].tolist()):
        out.append((batch["pixel_values"][start:start + thw[1] * thw[2]], thw, exprs[b]))
        start += thw[1] * thw[2]
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_forward_is_the_hand_built_pipeline(family):
    model, batch = lm.qwen(family), tq.inputs(family)
    seen = []
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        lm.spy_forward(patch, seen)
        out = model(**batch, referring_expressions=EXPRS)
        report = patch.last_report
    kept = kept_of(report)
    assert report["image"]["kept"] == [R] * 3
    assert report["image"]["stock"] == (batch["image_grid_thw"].prod(-1) // 4).tolist()
    # the selection: the reference rule on the hand-built signals (the scorer grid by the default bounds)
    scorer = patch.adapter.pruner.scorer
    for (rows, thw, exprs), k, view in zip(per_image(batch, EXPRS), kept, report["image"]["views"]):
        hp, wp = scorer.grid(thw[1] // 2, thw[2] // 2)
        s, c = ref.scorer_reference(rows, thw, family, exprs, hp, wp)
        assert torch.equal(k, k.sort().values)  # ascending raster order, whatever ``order`` says
        fsim = view[0]["from_similarity"][None]
        assert_selection_close((k[None], fsim.sum(1, dtype=torch.int32), fsim), s, c, R, order="spatial")
    # the LLM: only the kept rows, at their stock positions (get_rope_index of the full prompt, gathered)
    sh = ref.shrunk(model, batch, kept)
    call = seen[0]
    assert torch.equal(call["input_ids"], sh["ids"]) and torch.equal(call["position_ids"], sh["pos"])
    enc = call["mm_encoder_outputs"]["image"]
    assert all(torch.equal(a, b) for a, b in zip(enc.pooler_output, sh["pooled"]))
    if family == "qwen3_vl":  # DeepStack: every level cut with the same indices
        assert len(enc.deepstack_features) == 2
        for got, want in zip(enc.deepstack_features, sh["deepstack"]):
            assert all(torch.equal(a, b) for a, b in zip(got, want))
    m = sh["mask"].bool()
    torch.testing.assert_close(out.logits[m], ref.hand_logits(model, sh)[m], rtol=1e-5, atol=1e-5)
    # positions matter: renumbered 0 .. L' - 1 they give other logits
    flat = torch.arange(sh["ids"].shape[1]).expand(3, *sh["ids"].shape)
    assert not torch.allclose(ref.hand_logits(model, sh, pos=flat)[m], out.logits[m], atol=1e-3)
    if family == "qwen3_vl":  # and so do the DeepStack rows: the unpruned first rows instead give other logits
        bad = dict(sh, deepstack=[[f[:R] for f in level] for level in
                                  model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"],
                                                                 return_dict=True).deepstack_features])
        assert not torch.allclose(ref.hand_logits(model, bad)[m], out.logits[m], atol=1e-3)
    assert torch.equal(model.model.rope_deltas[:, 0], sh["max_pos"] + 1 - sh["mask"].sum(1))


@pytest.mark.parametrize("family", FAMILIES)
def test_right_padding_and_caller_positions(family):
    """The same prompts right-padded give the same logits; explicit stock position_ids (2-D, 3 or 4 rows) too."""
    model, batch = lm.qwen(family), tq.inputs(family)
    right = cases.layout(batch, [1, 2], "right", ("image_grid_thw",))
    pos, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"],
                                        attention_mask=batch["attention_mask"])
    text = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    seen = []
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        lm.spy_forward(patch, seen)
        left = model(**batch, referring_expressions=EXPRS).logits
        rt = model(**right, referring_expressions=EXPRS).logits
        three = model(**batch, position_ids=pos, referring_expressions=EXPRS).logits
        four = model(**batch, position_ids=torch.cat([text[None], pos]), referring_expressions=EXPRS).logits
        with pytest.raises(ValueError, match="position_ids"):
            model(**batch, position_ids=pos[:2], referring_expressions=EXPRS)
    for b in range(2):
        real_l, real_r = seen[0]["attention_mask"][b].bool(), seen[1]["attention_mask"][b].bool()
        torch.testing.assert_close(rt[b][real_r], left[b][real_l], rtol=1e-5, atol=1e-5)
    assert torch.equal(three, left) and torch.equal(four, left)
    assert torch.equal(seen[3]["position_ids"][1:], seen[0]["position_ids"])  # the text row: numbered, then kept


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_and_a_cached_second_turn(family):
    """Greedy tokens == the hand-built loop (decode position = last + 1); turn 2 on turn 1's cache == turn 2 from
    scratch == the hand-built continuation, even after another call changed the model's rope_deltas."""
    model, batch = lm.qwen(family), tq.inputs(family)
    gen = dict(max_new_tokens=4, do_sample=False)
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        turn1 = model.generate(**batch, referring_expressions=EXPRS, return_dict_in_generate=True, **gen)
        kept = kept_of(patch.last_report)
        L = batch["input_ids"].shape[1]
        new = turn1.sequences[:, L:]
        sh = ref.shrunk(model, batch, kept)
        assert torch.equal(new, ref.hand_greedy(model, sh, 4))
        assert not (new == tq.IMAGE_TOKEN).any()
        follow = torch.randint(3, 200, (2, 3), generator=torch.Generator().manual_seed(4))
        ids2 = torch.cat([turn1.sequences, follow], 1)
        extra = ids2.shape[1] - L
        mask2 = torch.cat([batch["attention_mask"], torch.ones(2, extra, dtype=torch.long)], 1)
        turn2 = dict(batch, input_ids=ids2, attention_mask=mask2,
                     mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros(2, extra, dtype=torch.long)],
                                                 1))
        scratch = model.generate(**turn2, referring_expressions=EXPRS, **gen)
        model(**tq.inputs(family, (1,), seed=5), referring_expressions=[["a dog"]])  # another prompt's rope_deltas
        cached = model.generate(**turn2, cache=copy.deepcopy(output_cache(turn1)), referring_expressions=EXPRS, **gen)
        no_pixels = model.generate(input_ids=ids2, attention_mask=mask2, cache=copy.deepcopy(output_cache(turn1)),
                                   **gen)
    ids = torch.cat([sh["ids"], new, follow], 1)
    mask = torch.cat([sh["mask"], torch.ones(2, extra, dtype=torch.long)], 1)
    pos = torch.cat([sh["pos"], (sh["max_pos"][:, None] + 1 + torch.arange(extra))[None].expand(3, -1, -1)], 2)
    want = ref.hand_greedy(model, sh, 4, ids, mask, pos)
    assert torch.equal(scratch[:, ids2.shape[1]:], want)
    assert torch.equal(cached, scratch) and torch.equal(no_pixels, scratch)


@pytest.mark.parametrize("family", FAMILIES)
def test_expressions_and_budgets_change_the_tokens(family):
    model, batch = lm.qwen(family), tq.inputs(family)
    gen = dict(max_new_tokens=4, do_sample=False)
    n = (batch["image_grid_thw"].prod(-1) // 4).tolist()
    with torch.no_grad():
        with enable(model, num_retain=R) as patch:
            a = model.generate(**batch, referring_expressions=EXPRS, **gen)
            kept_a = kept_of(patch.last_report)
            b = model.generate(**batch, referring_expressions=OTHER, **gen)
            kept_b = kept_of(patch.last_report)
        with enable(model, retain_ratio=0.4) as patch:
            model(**batch, referring_expressions=EXPRS)
            assert patch.last_report["image"]["kept"] == [-(-2 * k // 5) for k in n]  # ceil(0.4 N), N per image
        with enable(model, num_retain=R, scorer_min_patches=1) as patch:  # a 1:1 scorer grid: other signals
            model(**batch, referring_expressions=EXPRS)
            kept_c = kept_of(patch.last_report)
    assert any(not torch.equal(x, y) for x, y in zip(kept_a, kept_b))
    assert any(not torch.equal(x, y) for x, y in zip(kept_a, kept_c))
    assert not torch.equal(a, b)


def test_a_siglip_scorer():
    """The paired scorer may be a SigLIP (its pooling head plays [CLS]); one expression keeps its bottom-R'."""
    model, batch = lm.qwen("qwen2_5_vl"), tq.inputs("qwen2_5_vl")
    with torch.no_grad(), enable_litelvlm(model, lm.siglip(), lm.siglip_tok(), num_retain=R) as patch:
        assert patch.adapter.pruner.scorer.inner.kind == "siglip"
        out = model(**batch, referring_expressions=EXPRS)
        assert patch.last_report["image"]["kept"] == [R] * 3 and torch.isfinite(out.logits).all()


def test_bad_inputs_are_named(monkeypatch):
    model, batch = lm.qwen("qwen3_vl"), tq.inputs("qwen3_vl")
    llava = lm.lvlm("llava")
    video = dict(pixel_values_videos=torch.randn(8, 3 * 2 * 16 * 16), video_grid_thw=torch.tensor([[2, 2, 2]]))
    with pytest.raises(ValueError, match="image_std"):
        enable(model, image_mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="num_retain / retain_ratio"):
        enable(model, num_retain=3, retain_ratio=0.5)
    with pytest.raises(ValueError, match="retain_ratio"):
        enable(llava, retain_ratio=0.5)
    with pytest.raises(ValueError, match="image_mean"):
        enable(llava, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    with pytest.raises(ValueError, match="visual_projection"):
        enable(model, visual_projection=lm.clip().visual_projection)
    with pytest.raises(ValueError, match="text_model"):
        enable_litelvlm(model, None, None)
    from litelvlm_kernels.integrations.hf import LiteLVLMPruner
    with pytest.raises(TypeError, match="pruner"):
        enable_litelvlm(model, pruner=LiteLVLMPruner(lm.clip(), tokenizer=lm.tokenizer()))
    # the installed module (building a model may replace sys.modules' entry; the library reads the current one)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.57.1")
    with pytest.raises(ValueError, match="transformers 4.57.1"):
        enable(model)
    monkeypatch.undo()
    with torch.no_grad(), enable(model, num_retain=R):
        enc = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"], return_dict=True)
        text = {k: batch[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
        for call in (model, lambda **kw: model.generate(**kw, max_new_tokens=2)):
            with pytest.raises(ValueError, match="pixel_values_videos"):
                call(**text, **video)
            with pytest.raises(ValueError, match="mm_encoder_outputs"):
                call(**text, mm_encoder_outputs={"image": enc}, referring_expressions=EXPRS)
            with pytest.raises(ValueError, match="mm_encoder_outputs"):
                call(**batch, mm_encoder_outputs={"image": enc}, referring_expressions=EXPRS)
        for bad, match in ((dict(pixel_values=batch["pixel_values"][:, :5]), "pixel_values"),
                           (dict(pixel_values=batch["pixel_values"][:-4]), "pixel_values"),
                           (dict(image_grid_thw=None), "image_grid_thw"),
                           (dict(image_grid_thw=batch["image_grid_thw"] * torch.tensor([2, 1, 1])), "image_grid_thw"),
                           (dict(mm_token_type_ids=batch["mm_token_type_ids"][:, 1:]), "mm_token_type_ids")):
            with pytest.raises(ValueError, match=match):
                model(**dict(batch, **bad), referring_expressions=EXPRS)
    with torch.no_grad(), enable(model, num_retain=1), pytest.raises(ValueError, match="number of texts"):
        model(**batch, referring_expressions=EXPRS)  # 2 texts cannot share R' = 1 token
