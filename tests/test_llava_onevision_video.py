"""enable_litelvlm on stock LlavaOnevisionForConditionalGeneration: pooled video frames (and a video beside an image).

The hand-built side never uses the adapter: the stock model's own ``apply_pooling`` pools the features and
carries the reference scores as extra channels (``test_llava_onevision.py`` does the same for images).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

import _lvlm_models as lm  # noqa: E402
import test_llava_onevision as ov  # noqa: E402  (the image tests' helpers: geometry through the stock code)
from _lvlm_models import tl  # noqa: E402

M, G, SIZES, FRAMES, VIDEO_EXPRS = tl.M, ov.G, ov.SIZES, ov.FRAMES, ov.VIDEO_EXPRS
inner, views_of, structure, tower_states, scored_states = ov.inner, ov.views_of, ov.structure, ov.tower_states, \
    ov.scored_states
enable = lm.enable


@pytest.fixture(scope="module")
def model():
    return lm.onevision()


@pytest.fixture(scope="module")
def video(model):
    P = math.ceil(G / 2) ** 2
    ids, mask = tl.prompt_ids([1, 1], [(tl.VIDEO_TOKEN, FRAMES * P + 1)] * 2)
    return dict(input_ids=ids, attention_mask=mask, pixel_values_videos=lm.pixels(2, FRAMES, 3, tl.IMAGE, tl.IMAGE)), P


def test_video_keep_all_equals_stock(model, video):
    batch, P = video
    lm.assert_video_keep_all(model, batch, P, FRAMES, VIDEO_EXPRS, closing=1, image_newline="all")


def test_images_and_video_together_keep_all(model):
    """One prompt with an image (AnyRes, downsampled), one with a video: both modalities in one call."""
    P = math.ceil(G / 2) ** 2
    V = [views_of(model, SIZES[1])]
    (n, _), = structure(model, V, SIZES[1:2])
    rows = [tl.prompt_ids([1], [(tl.IMAGE_TOKEN, n)])[0][0], tl.prompt_ids([1], [(tl.VIDEO_TOKEN, 2 * P + 1)],
                                                                          seed=1)[0][0]]
    L = max(r.numel() for r in rows)
    ids = torch.stack([torch.nn.functional.pad(r, (L - r.numel(), 0), value=tl.PAD) for r in rows])
    mask = (ids != tl.PAD).long()
    batch = dict(input_ids=ids, attention_mask=mask, pixel_values=lm.pixels(1, 5, 3, tl.IMAGE, tl.IMAGE),
                 image_sizes=SIZES[1:2], pixel_values_videos=lm.pixels(1, 2, 3, tl.IMAGE, tl.IMAGE, seed=4))
    with torch.no_grad():
        logits = model(**batch).logits
        with enable(model, num_retain=M, image_newline="all") as patch:
            assert torch.equal(model(**batch, referring_expressions=[["the cat"], "the dog"]).logits, logits)
    assert patch.last_report["image"]["kept"] == [n] and patch.last_report["video"]["kept"] == [2 * P + 1]


@pytest.mark.parametrize("video_budget,R,newline", [("per_frame", 3, "kept_rows"), ("per_clip", 10, "none")])
def test_video_pruned_equals_hand_built(model, video, video_budget, R, newline):
    batch, P = video
    pool = inner(model).apply_pooling
    with torch.no_grad():
        frames = batch["pixel_values_videos"].flatten(0, 1)
        feats = pool(lm.inner(model).multi_modal_projector(tower_states(model, frames)))  # [B F, P, H], as stock
        states = scored_states(model, frames)
        nl = inner(model).image_newline[None]
        hand, kept = [], []
        for b, e in enumerate(VIDEO_EXPRS):
            fr = slice(b * FRAMES, (b + 1) * FRAMES)
            s, c = lm.siglip_scores(states[fr], frames[fr], [e] if isinstance(e, str) else e)
            maps = pool(torch.cat([s.transpose(1, 2), c[..., None]], -1))   # the same pooling as the features
            s, c = maps[..., :-1].transpose(1, 2), maps[..., -1]
            mine, chosen = lm.video_reference(feats[fr], s, c, R, video_budget)
            hand.append(mine)
            kept.append(chosen)
            if newline != "none":
                hand.append(nl)
        n = (R * FRAMES if video_budget == "per_frame" else R) + (newline != "none")
        ids, mask = tl.prompt_ids([1, 1], [(tl.VIDEO_TOKEN, n)] * 2)
        want = model(inputs_embeds=lm.embed_merge(model, ids, tl.VIDEO_TOKEN, torch.cat(hand)),
                     attention_mask=mask).logits
        with enable(model, num_retain=R, video_budget=video_budget, image_newline=newline) as patch:
            got = model(**batch, referring_expressions=VIDEO_EXPRS).logits
    views = patch.last_report["video"]["views"]
    side = math.ceil(G / 2)
    assert [len(v) for v in views] == [FRAMES] * 2 and all(d["grid"] == (side, side) for v in views for d in v)
    assert [{f * P + int(t) for f, d in enumerate(v) for t in d["indices"]} for v in views] == kept
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)


