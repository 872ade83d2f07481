"""The stock meaning of every LVLM argument when tokens are pruned (R < M), beside the keep-all contract.

What the pruned call does with each stock argument (docs/integrations.md,
"Stock arguments"): each row loses exactly its removed placeholders and the
caller's padding stays as laid out; ``inputs_embeds`` with pixels find the
placeholders as the stock model does; ``generate(use_cache=False)`` recomputes
every step through the pruned forward; a list ``vision_feature_layer`` scores
on its deepest layer and keeps the same rows of every listed layer;
``shift_labels`` follow the kept tokens; a base model (``LlavaModel``) is
patched too.
"""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("transformers")

import _keep_all_cases as cases  # noqa: E402
import _lvlm_models as lm  # noqa: E402
from _lvlm_models import tl  # noqa: E402
from test_keep_all_contract import run_both, same  # noqa: E402

from litelvlm_kernels import reference  # noqa: E402

M = tl.M
EXPRS = [["the cat"], ["a red car", "the man on the left"]]
R = 8


@pytest.mark.parametrize("family", ["llava", "llava_next", "paligemma"])
def test_each_row_loses_only_its_dropped_placeholders(family):
    """R < M: the caller's padding (a column every row pads, right padding) stays; the shrunk length is the
    stock length minus the fewest placeholders any row dropped; each row's real tokens give the same logits in
    every layout."""
    model = cases.model(family)
    real = {}
    with torch.no_grad(), lm.enable(model, num_retain=R) as patch:
        stock_forward = patch._orig_forward
        for layout in ("left", "right", "pad_column"):
            batch = cases.inputs(family, layout)
            seen = []
            lm.spy_forward(patch, seen)
            out = model(**batch, referring_expressions=EXPRS)
            patch._orig_forward = stock_forward
            rows = patch.last_report["rows"]
            dropped = [s - k for s, k in zip(rows["visual_stock"], rows["visual_kept"])]
            assert out.logits.shape[1] == batch["input_ids"].shape[1] - min(dropped)
            mask = seen[0]["attention_mask"].bool()
            assert mask.sum(1).tolist() == rows["tokens_kept"]
            assert [int(m.sum()) for m in batch["attention_mask"]] == rows["tokens_stock"]
            if layout == "pad_column":  # the column every row pads is still there, still padding
                assert not mask[:, 0].any()
            real[layout] = [out.logits[b][mask[b]] for b in range(2)]
    for layout in ("right", "pad_column"):
        for b in range(2):
            torch.testing.assert_close(real[layout][b], real["left"][b], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llava", "llava_next_video", "paligemma"])
def test_generate_without_cache_prunes_every_step(family):
    """use_cache=False: the stock loop, every step's forward pruned; the same tokens as with a cache."""
    model = cases.model(family)
    batch = cases.inputs(family, "left")
    exprs = EXPRS if family != "llava_next_video" else ["the cat", "a red car"]
    gen = dict(max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_hidden_states=True)
    with torch.no_grad(), lm.enable(model, num_retain=R) as patch:
        cached = model.generate(**batch, referring_expressions=exprs, **gen)
        fresh = model.generate(**batch, referring_expressions=exprs, use_cache=False, **gen)
        shrunk = patch.last_report["rows"]
    assert torch.equal(cached.sequences, fresh.sequences)
    L = batch["input_ids"].shape[1]
    assert torch.equal(fresh.sequences[:, :L], batch["input_ids"])
    # per step, the whole (shrunk) sequence: the documented length of per-position outputs
    dropped = min(s - k for s, k in zip(shrunk["visual_stock"], shrunk["visual_kept"]))
    assert [h[0].shape[1] for h in fresh.hidden_states] == [L - dropped + i for i in range(3)]


@pytest.mark.parametrize("family", ["llava", "llava_onevision"])
def test_inputs_embeds_with_pixels_pruned(family):
    model = cases.model(family)
    batch = cases.inputs(family, "left")
    embeds = model.get_input_embeddings()(batch["input_ids"])
    no_ids = {k: v for k, v in batch.items() if k != "input_ids"}
    with torch.no_grad(), lm.enable(model, num_retain=R):
        by_ids = model(**batch, referring_expressions=EXPRS)
        by_embeds = model(**no_ids, inputs_embeds=embeds, referring_expressions=EXPRS)
        ids_gen = lm.greedy(model, batch, referring_expressions=EXPRS)
        embeds_gen = model.generate(**no_ids, inputs_embeds=embeds, referring_expressions=EXPRS,
                                    max_new_tokens=4, do_sample=False)
    same(by_embeds.logits, by_ids.logits)
    assert torch.equal(embeds_gen, ids_gen[:, batch["input_ids"].shape[1]:])  # stock: new tokens only


@functools.lru_cache(maxsize=None)
def layered(layers):
    return tl.tiny_lvlm("llava", lm.clip(), attn="eager", feature_layer=list(layers))


@pytest.mark.parametrize("layers", [(-1,), (-1, -2), (-2, -3)])
def test_list_vision_feature_layer(layers):
    """Keep-all: the stock concatenation; R < M: scored on the deepest listed layer, the same kept rows of every
    listed layer's states concatenated, through the stock projector."""
    model = layered(layers)
    batch = cases.inputs("llava", "left")
    stock, patched = run_both(model, lambda m: m(**batch))
    same(stock, patched)
    px = batch["pixel_values"]
    with torch.no_grad():
        hs = model.model.vision_tower(px, output_hidden_states=True).hidden_states
        deepest = max(layers, key=lambda x: x % len(hs))
        feats = model.model.multi_modal_projector(torch.cat([hs[x] for x in layers], -1)[:, 1:])
        kept = []
        for i, e in enumerate([EXPRS[0], EXPRS[1], EXPRS[1]]):
            s, c = lm.scores(hs[deepest][i:i + 1, 1:], px[i:i + 1], e)
            kept.append(feats[i, reference.select(s, c, R)[0][0]])
        ids, mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, R)] * 3, stock=[(tl.IMAGE_TOKEN, M)] * 3)
        want = model(inputs_embeds=lm.embed_merge(model, ids, tl.IMAGE_TOKEN, torch.cat(kept)),
                     attention_mask=mask).logits
        with lm.enable(model, num_retain=R):
            got = model(**batch, referring_expressions=EXPRS).logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)


def test_per_call_feature_layer_and_strategy_as_stock():
    """A call's own vision_feature_layer (and, for LLaVA, vision_feature_select_strategy) mean what they mean
    to the stock model."""
    model = cases.model("llava")
    batch = cases.inputs("llava", "left")
    stock, patched = run_both(model, lambda m: m(**batch, vision_feature_layer=-3))
    same(stock, patched)
    full = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, M + 1)] * 3)
    full = dict(batch, input_ids=full[0], attention_mask=full[1])
    stock, patched = run_both(model, lambda m: m(**full, vision_feature_select_strategy="full"))
    same(stock, patched)
    with torch.no_grad(), lm.enable(model, num_retain=R) as patch:
        model(**full, vision_feature_select_strategy="full", referring_expressions=EXPRS)
    assert patch.last_report["image"]["kept"] == [R + 1] * 3  # [CLS] and the R kept patches


def test_shift_labels_follow_the_kept_tokens():
    model = cases.model("llava")
    batch = cases.inputs("llava", "left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.where((ids == tl.IMAGE_TOKEN) | (mask == 0), -100, ids)
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    stock, patched = run_both(model, lambda m: m(**batch, labels=labels, shift_labels=shifted))
    same(stock, patched)
    with torch.no_grad(), lm.enable(model, num_retain=R):
        by_labels = model(**batch, labels=labels, referring_expressions=EXPRS).loss
        by_shift = model(**batch, labels=labels, shift_labels=shifted, referring_expressions=EXPRS).loss
        with pytest.raises(ValueError, match="shift_labels"):
            model(**batch, labels=labels, shift_labels=shifted[:, 1:], referring_expressions=EXPRS)
    torch.testing.assert_close(by_shift, by_labels)  # the text after each image is still predicted


def test_base_model_pruned_is_the_full_models_trunk():
    model = cases.model("llava")
    base = cases.base_model("llava")
    batch = cases.inputs("llava", "left")
    with torch.no_grad():
        with lm.enable(model, num_retain=R):
            full = model(**batch, referring_expressions=EXPRS)
        with lm.enable(base, num_retain=R) as patch:
            trunk = base(**batch, referring_expressions=EXPRS)
            assert "generate" not in base.__dict__
        assert "forward" not in base.__dict__ and patch.enabled is False
    same(model.lm_head(trunk.last_hidden_state), full.logits)
    if "image_outputs" in trunk:   # transformers 5.2x: the kept features per image
        assert [len(f) for f in trunk.image_outputs.pooler_output] == [R] * 3
    else:                          # 4.x: all images' kept features, concatenated
        assert trunk.image_hidden_states.shape[0] == 3 * R
