"""enable_litelvlm on stock LlavaNextForConditionalGeneration (AnyRes tiles) and LlavaNextVideo... (frames).

Tiny, random, offline, sdpa. The hand-built side never uses the adapter: the
stock model's own ``pack_image_features`` run on token tags tells which
(view, token) sits at each position of the stock image sequence (and where
the newlines are); the reference's kept tokens then pick positions of the
stock features.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

import _lvlm_models as lm  # noqa: E402
from _lvlm_models import tl  # noqa: E402

from litelvlm_kernels import reference  # noqa: E402

M = tl.M
SIZES = torch.tensor([[50, 120], [100, 90], [128, 40]])  # (H, W): wide 1 x 2, 2 x 2, tall 2 x 1 tiles
EXPRS = [["the cat"], ["a red car", "the man on the left"]]
PER_IMAGE = [EXPRS[0], EXPRS[1], EXPRS[1]]


enable, greedy = lm.enable, lm.greedy


@pytest.fixture(scope="module")
def next_model():
    return lm.lvlm("llava_next")


def views_of(model, size):
    mod = __import__(type(model).__module__, fromlist=["x"])
    nh, nw = mod.get_anyres_image_grid_shape(size.tolist(), model.config.image_grid_pinpoints, tl.IMAGE)
    return 1 + nh * nw


def stock_pack(model, per_image_tensors):
    """The stock model's packing of per-image [views, M, C] tensors (newline: zeros)."""
    inner = lm.inner(model)
    C = per_image_tensors[0].shape[-1]
    return _per_image(*inner.pack_image_features(list(per_image_tensors), SIZES, "default",
                                                 image_newline=torch.zeros(C)))


def _per_image(packed, lens):
    """transformers >= 4.46 return one tensor per image, 4.45 one concatenated tensor and the lengths."""
    return packed.split(lens.tolist()) if isinstance(packed, torch.Tensor) else packed


@pytest.fixture(scope="module")
def next_batch(next_model):
    with torch.no_grad():
        V = [views_of(next_model, s) for s in SIZES]
        px = lm.pixels(3, max(V), 3, tl.IMAGE, tl.IMAGE)
        tags = [torch.arange(1, v * M + 1, dtype=torch.float).view(v, M, 1) for v in V]
        packed_tags = [t.flatten().long() for t in stock_pack(next_model, tags)]
    ids, mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, len(t)) for t in packed_tags])
    return dict(input_ids=ids, attention_mask=mask, pixel_values=px, image_sizes=SIZES), V, packed_tags


def test_next_keep_all_equals_stock(next_model, next_batch):
    batch, _, tags = next_batch
    with torch.no_grad():
        logits, ids = next_model(**batch).logits, greedy(next_model, batch)
        for budget, R in (("per_tile", M), ("global", 10_000)):
            with enable(next_model, num_retain=R, budget=budget, order="spatial") as patch:
                assert torch.equal(next_model(**batch, referring_expressions=EXPRS).logits, logits), budget
                if budget == "per_tile":  # one generate() suffices: the prefill logits are the same
                    assert torch.equal(greedy(next_model, batch, referring_expressions=EXPRS), ids)
            assert patch.last_report["image"]["stock"] == [len(t) for t in tags]  # exact placeholder counts


def test_concatenated_views_as_stock(next_model, next_batch):
    """pixel_values [sum V, 3, H, W] (each image's views concatenated, which the stock model also takes) gives the
    same pruned logits as the padded [N, V_max, 3, H, W]; a wrong view count is named."""
    batch, V, _ = next_batch
    flat = torch.cat([batch["pixel_values"][i, :v] for i, v in enumerate(V)])
    with torch.no_grad(), enable(next_model, num_retain=8):
        want = next_model(**batch, referring_expressions=EXPRS).logits
        got = next_model(**dict(batch, pixel_values=flat), referring_expressions=EXPRS).logits
        with pytest.raises(ValueError, match="pixel_values: .* views"):
            next_model(**dict(batch, pixel_values=flat[:-1]), referring_expressions=EXPRS)
    assert torch.equal(got, want)


def reference_kept(model, px_views, e, valid, R, joint):
    """Reference selection over an image's views: set of kept tags (view * M + token + 1)."""
    hidden = lm.select_layer_states(model, px_views)
    s, c = lm.scores(hidden, px_views, e)
    kept = set()
    if not joint:
        for v in range(s.shape[0]):
            sv = s[v:v + 1].masked_fill(~valid[v], float("inf"))
            cv = c[v:v + 1].masked_fill(~valid[v], float("-inf"))
            idx, _, _ = reference.select(sv, cv, R, order="spatial")
            kept |= {v * M + int(t) + 1 for t in idx[0] if valid[v, t]}
        return kept
    real = [valid[v].nonzero().flatten() for v in range(s.shape[0])]
    sj = torch.cat([s[v][:, real[v]] for v in range(s.shape[0])], -1).unsqueeze(0)
    cj = torch.cat([c[v][real[v]] / c[v][real[v]].sum() for v in range(s.shape[0])]).unsqueeze(0)
    idx, _, _ = reference.select(sj, cj, R, order="spatial")
    flat = torch.cat([v * M + real[v] + 1 for v in range(s.shape[0])])
    return {int(flat[i]) for i in idx[0]}


def keep_positions(tags, kept, newline):
    """Positions of the stock sequence fed to the LLM: kept tokens, and newlines per ``newline`` mode."""
    keep, row_has = [], False
    for p, t in enumerate(tags.tolist()):
        if t == 0:  # a newline closes a row of the cropped grid
            if newline == "all" or (newline == "kept_rows" and row_has):
                keep.append(p)
            row_has = False
        elif t in kept:
            keep.append(p)
            row_has = t > M  # tags 1..M: the base view, before the grid rows
    return torch.tensor(keep)


@pytest.mark.parametrize("budget,newline", [("per_tile", "kept_rows"), ("global", "kept_rows"),
                                            ("per_tile", "none"), ("global", "all")])
def test_next_pruned_equals_hand_built(next_model, next_batch, budget, newline):
    batch, V, tags = next_batch
    R = 16
    inner = lm.inner(next_model)
    with torch.no_grad():
        px = torch.cat([batch["pixel_values"][i, :v] for i, v in enumerate(V)])
        feats = inner.multi_modal_projector(lm.select_layer_states(next_model, px))
        starts = [0, *torch.tensor(V).cumsum(0).tolist()]
        newline_param = inner.image_newline
        packed = _per_image(*inner.pack_image_features(list(feats.split(V)), SIZES, "default",
                                                       image_newline=newline_param))
        hand, counts, kept_tags = [], [], []
        for i in range(3):
            valid = torch.zeros(V[i], M, dtype=torch.bool)
            real = tags[i][tags[i] > 0] - 1
            valid.view(-1)[real] = True
            kept = reference_kept(next_model, px[starts[i]:starts[i + 1]], PER_IMAGE[i], valid, R, budget == "global")
            kept_tags.append(kept)
            pos = keep_positions(tags[i], kept, newline)
            hand.append(packed[i][pos])
            counts.append(len(pos))
        ids, mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, n) for n in counts],
                                  stock=[(tl.IMAGE_TOKEN, len(t)) for t in tags])
        embeds = lm.embed_merge(next_model, ids, tl.IMAGE_TOKEN, torch.cat(hand))
        want = next_model(inputs_embeds=embeds, attention_mask=mask).logits
        with enable(next_model, num_retain=R, budget=budget, image_newline=newline) as patch:
            got = next_model(**batch, referring_expressions=EXPRS).logits
    assert patch.last_report["image"]["kept"] == counts
    views = patch.last_report["image"]["views"]  # per image, per view: the kept indices into the view's M tokens
    assert [len(v) for v in views] == V and all(d["grid"] == (8, 8) for v in views for d in v)
    assert [{w * M + int(t) + 1 for w, d in enumerate(v) for t in d["indices"]} for v in views] == kept_tags
    assert got.shape == want.shape
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)


def test_next_needs_image_sizes(next_model, next_batch):
    batch, _, _ = next_batch
    with enable(next_model, num_retain=8), pytest.raises(ValueError, match="image_sizes"):
        next_model(**dict(batch, image_sizes=SIZES[:2]), referring_expressions=EXPRS)


# --------------------------------------------------------------------------- video

FRAMES = 4


@pytest.fixture(scope="module")
def video_model():
    return lm.lvlm("llava_next_video")


@pytest.fixture(scope="module")
def video_batch(video_model):
    P = (int(M ** 0.5) // video_model.config.spatial_pool_stride) ** 2
    ids, mask = tl.prompt_ids([1, 1], [(tl.VIDEO_TOKEN, FRAMES * P)] * 2)
    return dict(input_ids=ids, attention_mask=mask, pixel_values_videos=lm.pixels(2, FRAMES, 3, tl.IMAGE, tl.IMAGE)), P


VIDEO_EXPRS = ["the dog on the right", ["a red car", "the man"]]


def test_video_keep_all_equals_stock(video_model, video_batch):
    batch, P = video_batch
    lm.assert_video_keep_all(video_model, batch, P, FRAMES, VIDEO_EXPRS, order="spatial")


@pytest.mark.parametrize("video_budget,R", [("per_frame", 4), ("per_clip", 12)])
def test_video_pruned_equals_hand_built(video_model, video_batch, video_budget, R):
    batch, P = video_batch
    inner = lm.inner(video_model)
    stride = video_model.config.spatial_pool_stride
    g = int(M ** 0.5)
    with torch.no_grad():
        frames = batch["pixel_values_videos"].flatten(0, 1)
        pooled = inner.vision_resampler(lm.select_layer_states(video_model, frames))
        feats = inner.multi_modal_projector(pooled)
        hand, kept = [], []
        for b, e in enumerate(VIDEO_EXPRS):
            fr = slice(b * FRAMES, (b + 1) * FRAMES)
            s, c = lm.scores(pooled[fr], frames[fr], [e] if isinstance(e, str) else e)
            c = F.avg_pool2d(c.view(-1, 1, g, g), stride, stride).flatten(1)  # a pooled token: mean of its patches
            mine, chosen = lm.video_reference(feats[fr], s, c, R, video_budget)
            hand.append(mine)
            kept.append(chosen)
        n = R * FRAMES if video_budget == "per_frame" else R
        ids, mask = tl.prompt_ids([1, 1], [(tl.VIDEO_TOKEN, n)] * 2)
        embeds = lm.embed_merge(video_model, ids, tl.VIDEO_TOKEN, torch.cat(hand))
        want = video_model(inputs_embeds=embeds, attention_mask=mask).logits
        with enable(video_model, num_retain=R, video_budget=video_budget) as patch:
            got = video_model(**batch, referring_expressions=VIDEO_EXPRS).logits
            views = patch.last_report["video"]["views"]  # per video, per frame: indices into its P pooled tokens
            out = greedy(video_model, batch, referring_expressions=VIDEO_EXPRS)
    side = int(P ** 0.5)
    assert [len(v) for v in views] == [FRAMES] * 2 and all(d["grid"] == (side, side) for v in views for d in v)
    assert [{f * P + int(t) for f, d in enumerate(v) for t in d["indices"]} for v in views] == kept
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)
    assert out.shape[0] == 2 and torch.equal(out[:, :batch["input_ids"].shape[1]], batch["input_ids"])


def test_video_conv_pooling_refused():
    cfg = lm.lvlm("llava_next_video").config.to_dict()
    model = type(lm.lvlm("llava_next_video"))(type(lm.lvlm("llava_next_video").config)(
        **{**cfg, "spatial_pool_mode": "conv"}))
    with pytest.raises(ValueError, match="spatial_pool_mode"):
        enable(model)
