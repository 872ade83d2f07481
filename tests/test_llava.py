"""enable_litelvlm on a stock LlavaForConditionalGeneration (tiny, random, offline; sdpa attention).

Acceptance checks of the LVLM integration: keeping every token in raster order
changes nothing (logits and generated ids equal the stock model's exactly);
with R < M the logits equal a hand-built pipeline that feeds the LLM only the
reference's kept tokens through the same projector and merge; generate() with
left padding, several images per prompt and mixed expressions; labels and
position ids; bad input names the argument; disable() leaves nothing behind.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import _lvlm_models as lm  # noqa: E402
from _lvlm_models import tl  # noqa: E402

from litelvlm_kernels import reference  # noqa: E402
from litelvlm_kernels.integrations.lvlm import disable_litelvlm  # noqa: E402

M = tl.M
EXPRS = lm.EXPRS  # row 0: one image, row 1: two images


@pytest.fixture(scope="module")
def model():
    return lm.lvlm("llava")


enable, greedy = lm.enable, lm.greedy


def test_keep_all_in_raster_order_equals_stock(model, batch):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    with torch.no_grad():
        logits = model(**batch).logits
        ids = greedy(model, batch)
        with enable(model, num_retain=M, order="spatial") as patch:
            assert torch.equal(model(**batch, referring_expressions=EXPRS).logits, logits)
            assert torch.equal(greedy(model, batch, referring_expressions=EXPRS), ids)
            assert {k: patch.last_report["image"][k] for k in ("stock", "kept")} == {"stock": [M] * 3, "kept": [M] * 3}
        with enable(model, num_retain=10 * M, order="spatial"):
            assert torch.equal(model(**batch, referring_expressions=EXPRS).logits, logits)
    # nothing left behind: the class's own methods, same weights and config
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.config.to_dict() == config


def hand_built(model, batch, expressions_per_image, R, min_votes=1, order="official"):
    """The reference's kept tokens through the stock projector, merged into prompts with R' placeholders."""
    px = batch["pixel_values"]
    hidden = lm.select_layer_states(model, px)
    feats = lm.inner(model).multi_modal_projector(hidden)          # [N, M, H]: the stock image features
    kept = []
    for i, e in enumerate(expressions_per_image):
        s, c = lm.scores(hidden[i:i + 1], px[i:i + 1], e)
        idx, _, _ = reference.select(s, c, R, min_votes=min_votes, order=order)
        kept.append(feats[i, idx[0]])
    ids, mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, min(R, M))] * 3, stock=[(tl.IMAGE_TOKEN, M)] * 3)
    embeds = lm.embed_merge(model, ids, tl.IMAGE_TOKEN, torch.cat(kept))
    return ids, mask, embeds


@pytest.mark.parametrize("multi_text,min_votes,order", [("union", 1, "official"), ("intersection", 0, "spatial"),
                                                       (2, 2, "official")])
def test_pruned_equals_hand_built_pipeline(model, batch, multi_text, min_votes, order):
    R = 16
    per_image = [EXPRS[0], EXPRS[1], EXPRS[1]]
    with torch.no_grad():
        ids, mask, embeds = hand_built(model, batch, per_image, R, min_votes, order)
        want = model(inputs_embeds=embeds, attention_mask=mask).logits
        with enable(model, num_retain=R, multi_text=multi_text, order=order) as patch:
            got = model(**batch, referring_expressions=EXPRS).logits
            if multi_text == "union":  # generate once: left padding, mixed expressions, 1 and 2 images
                want_ids = model.generate(input_ids=ids, inputs_embeds=embeds, attention_mask=mask,
                                          max_new_tokens=4, do_sample=False)
                got_ids = greedy(model, batch, referring_expressions=EXPRS)
                # the caller's prompt back in front, then the same new tokens
                assert torch.equal(got_ids[:, :batch["input_ids"].shape[1]], batch["input_ids"])
                assert torch.equal(got_ids[:, batch["input_ids"].shape[1]:], want_ids[:, ids.shape[1]:])
    assert patch.last_report["image"]["kept"] == [R] * 3
    assert got.shape == want.shape == (2, ids.shape[1], tl.VOCAB)
    # only the projector's batch shape differs (R' rows here, M rows in the hand pipeline)
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)


def test_report_views_hold_the_kept_indices(model, batch, tmp_path):
    """last_report["image"]["views"]: per image, per view, the kept indices (as the reference selects them), their
    from_similarity flags and the grid; the documented one-liner draws one with viz."""
    from litelvlm_kernels import viz

    R = 16
    px = batch["pixel_values"]
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        model(**batch, referring_expressions=EXPRS)
        hidden = lm.select_layer_states(model, px)
        for i, e in enumerate([EXPRS[0], EXPRS[1], EXPRS[1]]):
            s, c = lm.scores(hidden[i:i + 1], px[i:i + 1], e)
            idx, _, from_sim = reference.select(s, c, R)
            (view,) = patch.last_report["image"]["views"][i]
            assert torch.equal(view["indices"], idx[0]) and torch.equal(view["from_similarity"], from_sim[0])
            assert view["grid"] == (8, 8)
    path = viz.save_kept_tokens(tmp_path / "kept.png", px[0], **patch.last_report["image"]["views"][0][0])
    assert (tmp_path / "kept.png").is_file() and str(path).endswith("kept.png")


def test_labels_position_ids_and_right_padding(model, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.where((ids == tl.IMAGE_TOKEN) | (mask == 0), -100, ids)
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    R = 8
    hand_ids, hand_mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, R)] * 3,  # what the LLM must see
                                        stock=[(tl.IMAGE_TOKEN, M)] * 3)
    n = hand_mask.sum(1)
    with torch.no_grad(), enable(model, num_retain=R):
        a = model(**batch, referring_expressions=EXPRS, labels=labels)
        b = model(**batch, referring_expressions=EXPRS, labels=labels, position_ids=pos)
        # the same prompts right-padded
        shift = [int((1 - m).sum()) for m in mask]
        right = {k: torch.stack([torch.roll(r, -sh) for r, sh in zip(v, shift)])
                 for k, v in (("input_ids", ids), ("attention_mask", mask))}
        c = model(**right, pixel_values=batch["pixel_values"], referring_expressions=EXPRS)
    assert a.logits.shape[1] == hand_ids.shape[1]
    hand_labels = torch.where((hand_ids == tl.IMAGE_TOKEN) | (hand_mask == 0), -100, hand_ids)
    # row 1 was not padded in the caller's prompt: its first token is nobody's target there, nor here
    hand_labels[1, int((hand_mask[1] == 0).sum())] = -100
    want = torch.nn.functional.cross_entropy(a.logits[:, :-1].flatten(0, 1), hand_labels[:, 1:].flatten())
    torch.testing.assert_close(a.loss, want)  # labels shrunk with the placeholders
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)  # given positions renumbered
    for r in range(2):  # right padding: the real positions come first
        torch.testing.assert_close(c.logits[r, :n[r]], a.logits[r, -n[r]:], rtol=1e-4, atol=1e-4)


def test_missing_expressions_error_or_cls_fallback(model, batch):
    with torch.no_grad(), enable(model, num_retain=8):
        with pytest.raises(ValueError, match="referring_expressions"):
            model(**batch)
        with pytest.raises(ValueError, match=r"referring_expressions\[1\]"):
            model(**batch, referring_expressions=[["the cat"], None])
    px = batch["pixel_values"]
    with torch.no_grad(), enable(model, num_retain=8, missing_expressions="cls", order="spatial") as patch:
        model(**batch, referring_expressions=[["the cat"], []])
        out, _, _ = patch.adapter.image_features(batch, patch.adapter.text_condition([[], [], []]))
        hidden = lm.select_layer_states(model, px)
        _, c = lm.scores(hidden, px, [])
        want = lm.inner(model).multi_modal_projector(
            torch.stack([hidden[i, reference.top_contribution_order(c[i])[:8].sort().values] for i in range(3)]))
    torch.testing.assert_close(torch.stack(out), want, rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_argument(model, batch):
    with pytest.raises(ValueError, match="num_retain"):
        enable(model, num_retain=0)
    with pytest.raises(TypeError, match="num_retain"):
        enable(model, num_retain=True)
    with pytest.raises(ValueError, match="order"):
        enable(model, order="random")
    with pytest.raises(TypeError, match="model"):
        enable(lm.clip())
    assert "forward" not in model.__dict__  # failed enables left nothing behind
    with enable(model, num_retain=8) as patch:
        with pytest.raises(ValueError, match="already enabled"):
            enable(model)
        with pytest.raises(ValueError, match="referring_expressions: got 3"):
            model(**batch, referring_expressions=[["a"], ["b"], ["c"]])
        bad = dict(batch, input_ids=batch["input_ids"].clone())
        bad["input_ids"][1, -1] = tl.IMAGE_TOKEN  # one placeholder too many
        with pytest.raises(ValueError, match="input_ids"):
            model(**bad, referring_expressions=EXPRS)
        patch.settings.num_retain = -1
        with pytest.raises(ValueError, match="num_retain"):
            model(**batch, referring_expressions=EXPRS)
    disable_litelvlm(model)  # idempotent
    assert "forward" not in model.__dict__


def test_metrics_need_an_enabled_model(model, batch):
    from litelvlm_kernels.integrations.metrics import prefill_metrics

    with pytest.raises(ValueError, match="model"):
        prefill_metrics(model, batch, EXPRS)
    with enable(model, num_retain=8), pytest.raises(ValueError, match="repeat"):
        prefill_metrics(model, batch, EXPRS, repeat=0)
