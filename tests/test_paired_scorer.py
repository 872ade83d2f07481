"""The paired scorer (docs/design.md section 12): its grid rule, the area map, the image it sees, its signals on the
LVLM's tokens, the budget rules and the public ``select_scores``; against brute force and hand-built references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import _lvlm_models as lm  # noqa: E402
import _qwen_reference as ref  # noqa: E402
from _lvlm_models import tq  # noqa: E402

import litelvlm_kernels as lk  # noqa: E402
from litelvlm_kernels import reference  # noqa: E402
from litelvlm_kernels.flops.vision import TOWERS, paired_cost, tower_macs  # noqa: E402
from litelvlm_kernels.selection.folding import TextFolder  # noqa: E402
from litelvlm_kernels.selection.kinds import paired_scorer_for  # noqa: E402
from litelvlm_kernels.selection.layouts.merged_grid import (  # noqa: E402
    area_matrix,
    axis_overlap,
    resample,
    scorer_grid,
    unpatchify,
)
from litelvlm_kernels.selection.settings import LiteLVLMSettings, kept_count  # noqa: E402
from litelvlm_kernels.testing import assert_selection_close  # noqa: E402

GRIDS = [(3, 4, 5, 7), (12, 4, 16, 5), (6, 6, 4, 4), (5, 9, 5, 9), (1, 7, 3, 2), (7, 3, 7, 9)]


@pytest.mark.parametrize("h,w,hp,wp", GRIDS)
def test_area_matrix_is_the_overlap_areas(h, w, hp, wp):
    W = area_matrix(h, w, hp, wp)
    torch.testing.assert_close(W, ref.area_matrix_brute(h, w, hp, wp), rtol=0, atol=1e-12)
    torch.testing.assert_close(W.sum(1), torch.ones(h * w, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(axis_overlap(h, h), torch.eye(h, dtype=torch.float64))


@pytest.mark.parametrize("h,w,hp,wp", GRIDS)
def test_resample_applies_the_area_matrix(h, w, hp, wp):
    x = torch.randn(2, 3, hp * wp, generator=torch.Generator().manual_seed(h * w))
    want = (x.double() @ area_matrix(h, w, hp, wp).T).float()
    torch.testing.assert_close(resample(x, h, w, hp, wp), want, rtol=1e-6, atol=1e-6)
    if (h, w) == (hp, wp):
        assert torch.equal(resample(x, h, w, hp, wp), x)


def test_resample_keeps_a_nan_patch_to_the_tokens_it_overlaps():
    h, w, hp, wp = 3, 4, 7, 9
    x = torch.zeros(1, hp * wp)
    x[0, 0] = float("nan")  # the top-left patch
    out = resample(x, h, w, hp, wp)
    touched = area_matrix(h, w, hp, wp)[:, 0] > 0
    assert torch.equal(out[0].isnan(), touched) and int(touched.sum()) == 1
    with pytest.raises(ValueError, match="signal"):
        resample(x, h, w, hp, wp + 1)


def test_scorer_grid_rule():
    assert scorer_grid(12, 20, 196, 784) == (12, 20)          # within the bounds: one patch per token
    hp, wp = scorer_grid(3, 4, 64, 256)                        # too few tokens: scaled up by one factor
    assert (hp, wp) == (math.floor(3 * math.sqrt(64 / 12) + 0.5), math.floor(4 * math.sqrt(64 / 12) + 0.5))
    assert scorer_grid(37, 37, 196, 784) == (28, 28)           # too many: scaled down
    hp, wp = scorer_grid(72, 12, 196, 784)                     # a 6:1 image keeps its aspect (no crop, no stretch)
    assert abs(hp / wp - 6) < 0.5 and abs(hp * wp - 784) <= hp + wp
    assert scorer_grid(1, 1, 4, 4) == (2, 2)
    for bad, match in (((3, 4, 0, 5), "scorer_min_patches"), ((3, 4, 9, 5), "exceeds"), ((0, 4, 1, 5), "h")):
        with pytest.raises(ValueError, match=match):
            scorer_grid(*bad)


def test_kept_count_and_settings():
    assert kept_count(10, retain_ratio=0.3) == 3        # 0.3 x 10 = 3.0000000000000004: not rounded up to 4
    assert kept_count(10, retain_ratio=0.31) == 4
    assert kept_count(7, retain_ratio=0.01) == 1        # at least one token
    assert kept_count(7, retain_ratio=1.0) == 7
    assert kept_count(7, num_retain=100) == 7 and kept_count(70, num_retain=9) == 9
    with pytest.raises(ValueError, match="num_retain / retain_ratio"):
        kept_count(7, num_retain=3, retain_ratio=0.5)
    assert LiteLVLMSettings(retain_ratio=0.25).check().kept(12) == 3
    for kw, match in ((dict(retain_ratio=0), "retain_ratio"), (dict(retain_ratio=1.5), "retain_ratio"),
                      (dict(retain_ratio=True), "retain_ratio"), (dict(scorer_min_patches=0), "scorer_min_patches"),
                      (dict(scorer_max_patches=2.5), "scorer_max_patches"),
                      (dict(scorer_min_patches=9, scorer_max_patches=4), "exceeds")):
        with pytest.raises(ValueError, match=match):
            LiteLVLMSettings(**kw).check()


def test_select_scores_is_the_reference_selection():
    g = torch.Generator().manual_seed(0)
    s, c = torch.randn(3, 2, 20, generator=g), torch.rand(3, 20, generator=g)
    num = torch.tensor([2, 1, 0])
    for order in ("official", "spatial"):
        out = lk.select_scores(s, c, num_retain=6, num_texts=num, order=order)
        assert out.tokens is None
        assert_selection_close((out.indices, out.num_similarity, out.from_similarity), s, c, 6, order=order,
                               num_texts=num)
        want = reference.select(s, c, 6, order=order, num_texts=num)
        assert torch.equal(out.indices, want[0])
    with pytest.raises(ValueError, match="num_retain"):
        lk.select_scores(s, c, num_retain=0)
    with pytest.raises(ValueError, match="disagree"):
        lk.select_scores(s, c[:, :5], num_retain=3)


@pytest.mark.parametrize("family", tq.FAMILIES)
def test_unpatchify_is_the_processors_resized_image(family):
    """The rows are the processor's bicubic resize to (gh p, gw p), normalised: unpatchify gives that image back."""
    from PIL import Image

    raw = tq.images(2)
    px = tq.image_processor(family)(images=raw, return_tensors="pt")
    grid, p = px["image_grid_thw"], tq.PATCH[family]
    mean, std = (np.array(v) for v in tq.MEAN_STD[family])
    start = 0
    for img, thw in zip(raw, grid.tolist()):
        rows = px["pixel_values"][start:start + thw[1] * thw[2]]
        start += rows.shape[0]
        got = unpatchify(rows, thw, patch=p, merge=2, temporal=2)
        assert torch.equal(got, ref.unpatchify_loop(rows, thw, p))
        resized = np.asarray(Image.fromarray(img).resize((thw[2] * p, thw[1] * p), Image.BICUBIC)) / 255.0
        want = torch.from_numpy((resized - mean) / std).permute(2, 0, 1).float()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="t=2"):
        unpatchify(rows, [2, thw[1], thw[2]], patch=p, merge=2, temporal=2)


def _scorer(family, **kw):
    mean, std = tq.MEAN_STD[family]
    return paired_scorer_for(lm.clip(), lm.tokenizer(), image_mean=mean, image_std=std, patch=tq.PATCH[family],
                             merge=2, temporal=2, **kw)


@pytest.mark.parametrize("family", tq.FAMILIES)
@pytest.mark.parametrize("bounds", [(None, None), (1, None), (4, 6)])
def test_token_scores_are_the_hand_built_ones(family, bounds):
    """The scorer's signals on the LVLM's tokens == CLIP run by hand on the image, resampled by brute force."""
    scorer = _scorer(family)
    assert scorer.native_patches == 64 and scorer.bounds() == (64, 256)
    batch = tq.inputs(family, (1, 1))
    exprs = ["the red car", "a cat"]
    folded = TextFolder(scorer).prepare(texts=[exprs]).folded  # the inner CLIP scorer's fold, through the paired one
    start = 0
    for thw in batch["image_grid_thw"].tolist():
        rows = batch["pixel_values"][start:start + thw[1] * thw[2]]
        start += rows.shape[0]
        s, c, (hp, wp) = scorer.token_scores(rows, thw, folded, min_patches=bounds[0], max_patches=bounds[1])
        h, w = thw[1] // 2, thw[2] // 2
        assert (hp, wp) == scorer_grid(h, w, *scorer.bounds(*bounds))
        if bounds[0] == 1:
            assert (hp, wp) == (h, w)
        s_ref, c_ref = ref.scorer_reference(rows, thw, family, exprs, hp, wp)
        torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(c, c_ref, rtol=1e-4, atol=1e-7)


def test_paired_scorer_arguments_are_checked():
    with pytest.raises(ValueError, match="image_mean"):
        paired_scorer_for(lm.clip(), lm.tokenizer(), image_mean=(0.5, 0.5), image_std=(1, 1, 1), patch=14, merge=2,
                          temporal=2)
    with pytest.raises(ValueError, match="scorer_image_std"):
        _scorer("qwen2_5_vl", scorer_image_std=(0.5, 0.0, 0.5))
    with pytest.raises(TypeError, match="text_model|vision_model"):
        paired_scorer_for(torch.nn.Linear(2, 2), None, image_mean=(0,) * 3, image_std=(1,) * 3, patch=14, merge=2,
                          temporal=2)
    assert _scorer("qwen3_vl", scorer_image_mean=(0.4, 0.4, 0.4)).scorer_image_mean == (0.4, 0.4, 0.4)
    assert _scorer("qwen3_vl").bounds(max_patches=16) == (16, 16)


def test_paired_cost():
    """The research's table, recomputed: a ViT-B/16 scorer is a few percent of Qwen2.5-VL-7B's tower."""
    r = paired_cost("qwen2.5-vl-7b", "clip-vit-b16", 36, 36)
    assert r["scorer_grid"] == (28, 28) and 0.01 < r["share"] < 0.05
    one = TOWERS["clip-vit-b16"]
    n = 197
    layer = n * (4 * 768 ** 2 + 2 * 768 * 3072) + 2 * n * n * 768
    assert tower_macs(one, 196) == 196 * 3 * 16 * 16 * 768 + 12 * layer
    assert tower_macs(one, 196, scorer=True) == 196 * 3 * 16 * 16 * 768 + 11 * layer + n * 3 * 768 ** 2
