"""enable_litelvlm on stock LlavaOnevisionForConditionalGeneration (SigLIP tower; AnyRes images, multi-image
views, pooled video frames).

Tiny, random, offline, sdpa. The hand-built side never uses the adapter: the
stock model's own ``pack_image_features`` / ``apply_pooling`` build the stock
features and carry the reference scores (``litelvlm_kernels.reference`` with
the SigLIP fold and the pooling head's contribution, ``_lvlm_models.siglip_scores``)
as extra channels; which tile a downsampled cell belongs to is read off
coordinate ramps pushed through the same ``pack_image_features`` (the point
its bilinear sample is taken at); the reference's kept tokens then pick
positions of the stock sequence.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

pytest.importorskip("transformers")

import _lvlm_models as lm  # noqa: E402
from _lvlm_models import tl  # noqa: E402

from litelvlm_kernels import reference  # noqa: E402

M, G = tl.M, tl.IMAGE // tl.PATCH
# (H, W): 1 x 2 tiles; 2 x 2 cropped to 16 x 12 and downsampled to 13 x 9 (cell centres on both tile borders: row 6,
# column 4); 2 x 1
SIZES = torch.tensor([[50, 120], [84, 68], [128, 40]])
EXPRS = [["the cat"], ["a red car", "the man on the left"]]
PER_IMAGE = [EXPRS[0], EXPRS[1], EXPRS[1]]
FRAMES = 4
VIDEO_EXPRS = ["the dog on the right", ["a red car", "the man"]]

enable, greedy = lm.enable, lm.greedy


@pytest.fixture(scope="module")
def model():
    return lm.onevision()


def inner(model):
    return model.model if hasattr(model, "model") and hasattr(model.model, "apply_pooling") else model


def pack(model, per_image, sizes, newline=None):
    out, lens = inner(model).pack_image_features(list(per_image), sizes, image_newline=newline,
                                                 vision_aspect_ratio=model.config.vision_aspect_ratio)
    return list(out.split(lens.tolist())) if isinstance(out, torch.Tensor) else list(out)  # 4.45: concatenated


def views_of(model, size, multi_view=True):
    if not multi_view:
        return 1
    mod = __import__(type(model).__module__, fromlist=["x"])
    nh, nw = mod.get_anyres_image_grid_shape(size.tolist(), model.config.image_grid_pinpoints, tl.IMAGE)
    return 1 + nh * nw


def structure(model, V, sizes):
    """Per image: (stock length, positions of the newlines) from the stock packing of zeros with a marked newline."""
    marked = pack(model, [torch.zeros(v, M, 1) for v in V], sizes, newline=torch.ones(1))
    return [(m.shape[0], m[:, 0].nonzero().flatten().tolist()) for m in marked]


def ramps(v, nw):
    """[v, M, 2]: each tile token's (row, column) in the full tile grid (the base view: its own grid)."""
    k = torch.arange(M)
    out = [torch.stack([k // G, k % G], -1).float()]
    for t in range(v - 1):
        out.append(torch.stack([(t // nw) * G + k // G, (t % nw) * G + k % G], -1).float())
    return torch.stack(out)


def tile_of_cells(model, v, size):
    """Per final grid cell (raster, newlines excluded): the tile holding the point its bilinear sample is taken at."""
    mod = __import__(type(model).__module__, fromlist=["x"])
    nh, nw = mod.get_anyres_image_grid_shape(size.tolist(), model.config.image_grid_pinpoints, tl.IMAGE)
    yx = pack(model, [ramps(v, nw)], size[None])[0][M:]               # sample points, in source cell units
    # cell centres in tile units; one within 1e-4 of a border is ON it (exact in rational arithmetic, float noise
    # here) and goes to the later tile, the documented rule
    t = ((yx + 0.5) / G + 1e-4).floor().long()
    return t[:, 0].clamp(max=nh - 1) * nw + t[:, 1].clamp(max=nw - 1)


def stock_batch(model, sizes, rows, bni=None, seed=3):
    multi = [True] * len(sizes) if bni is None else [n == 1 for n in bni for _ in range(n)]
    V = [views_of(model, s, mv) for s, mv in zip(sizes, multi)]
    lens = [n for n, _ in structure(model, V, sizes)]
    ids, mask = tl.prompt_ids(rows, [(tl.IMAGE_TOKEN, n) for n in lens])
    batch = dict(input_ids=ids, attention_mask=mask, pixel_values=lm.pixels(len(sizes), 5, 3, tl.IMAGE, tl.IMAGE,
                                                                             seed=seed), image_sizes=sizes)
    if bni is not None:
        batch["batch_num_images"] = torch.tensor(bni)
    return batch, V, lens


@pytest.fixture(scope="module")
def anyres(model):
    return stock_batch(model, SIZES, [1, 2])            # every image alone-in-prompt style (no batch_num_images)


@pytest.fixture(scope="module")
def multi(model):
    """Row 1 has two images: base views only. None before transformers 4.46 (no batch_num_images: every image
    is AnyRes)."""
    if "batch_num_images" not in inspect.signature(type(model).forward).parameters:
        return None
    return stock_batch(model, SIZES, [1, 2], bni=[1, 2])


def test_geometry_matches_stock(model, anyres):
    from litelvlm_kernels.integrations.llava_onevision import geometry

    _, V, lens = anyres
    geos = [geometry(model, s, model.config.vision_aspect_ratio) for s in SIZES]
    assert [g["stock"] for g in geos] == lens and [g["views"] for g in geos] == V
    grids = [g["grid"] for g in geos]
    assert grids[1] == (13, 9), "the 2 x 2 image must exercise the anyres_max downsample"
    for s, v, geo in zip(SIZES, V, geos):  # the documented rule: a cell belongs to the tile holding its centre
        owner = tile_of_cells(model, v, s)
        for t in range(v - 1):
            assert geo["cells"][t + 1].tolist() == (M + (owner == t).nonzero().flatten()).tolist()


def test_keep_all_equals_stock(model, anyres, multi):
    with torch.no_grad():
        for batch, _, lens in filter(None, (anyres, multi)):
            logits = model(**batch).logits
            for budget, R in (("per_tile", M), ("global", 10_000)):
                with enable(model, num_retain=R, budget=budget, image_newline="all") as patch:
                    got = model(**batch, referring_expressions=EXPRS).logits
                assert torch.equal(got, logits), budget
                assert patch.last_report["image"]["stock"] == lens == patch.last_report["image"]["kept"]
        batch, V, _ = anyres  # the views concatenated ([sum V, 3, H, W]), which the stock model also takes
        flat = dict(batch, pixel_values=torch.cat([batch["pixel_values"][i, :v] for i, v in enumerate(V)]))
        stock_flat = model(**flat).logits
        with enable(model, num_retain=M, image_newline="all"):
            assert torch.equal(model(**flat, referring_expressions=EXPRS).logits, stock_flat)
        ids = greedy(model, batch)
        with enable(model, num_retain=M, image_newline="all"):
            assert torch.equal(greedy(model, batch, referring_expressions=EXPRS), ids)


def tower_states(model, px):
    """The stock hidden_states[-1] (what the projector reads with "full"; post-layernormed under 4.5x)."""
    return lm.inner(model).vision_tower(px, output_hidden_states=True).hidden_states[-1]


def scored_states(model, px):
    """x_j of the similarity: the tower's last layer's own state, on every version."""
    return lm.siglip_layer_states(px, model.config.vision_config.num_hidden_layers)


def reference_kept(model, px_views, size, e, R, budget, multi_view=True):
    """Kept positions into the image's stock tokens without newlines (base 0..M-1, then the grid in raster)."""
    s, c = lm.siglip_scores(scored_states(model, px_views), px_views, e)  # [v, T, M], [v, M] on the tower grid
    T = s.shape[1]
    maps = torch.cat([s.transpose(1, 2), c[..., None]], -1)
    final = pack(model, [maps], size[None])[0]                          # the same spatial ops as the features
    v = px_views.shape[0]
    owner = tile_of_cells(model, v, size) if multi_view else torch.empty(0, dtype=torch.long)
    cells = [torch.arange(M)] + [M + (owner == t).nonzero().flatten() for t in range(v - 1)]
    if budget == "per_tile":
        kept = [cl[reference.select(final[cl, :T].T[None], final[cl, T][None], R, order="spatial")[0][0]]
                for cl in cells if cl.numel()]
        return torch.cat(kept).sort().values
    share = torch.cat([final[cl, T] / final[cl, T].sum() for cl in cells])
    flat = torch.cat(cells)
    idx = reference.select(final[flat, :T].T[None], share[None], R, order="spatial")[0][0]
    return flat[idx].sort().values


def keep_positions(stock_len, newlines, kept, mode, multi_view=True):
    """Positions of the stock sequence fed to the LLM: kept tokens (no-newline positions), newlines per mode."""
    nl = set(newlines)
    token_pos = [p for p in range(stock_len) if p not in nl]
    keep, row_has, kept = [], False, set(kept.tolist())
    for p in range(stock_len):
        if p in nl:
            if mode == "all" or (mode == "kept_rows" and (row_has or not multi_view)):
                keep.append(p)
            row_has = False
        elif token_pos.index(p) in kept:
            keep.append(p)
            row_has = token_pos.index(p) >= M
    return torch.tensor(keep)


def hand_built(model, batch, V, R, budget, newline, per_image, multi_views):
    """Logits of the stock LLM fed only the reference's kept tokens, and the kept positions per image."""
    sizes = batch["image_sizes"]
    with torch.no_grad():
        px = torch.cat([batch["pixel_values"][i, :v] for i, v in enumerate(V)])
        feats = lm.inner(model).multi_modal_projector(tower_states(model, px))  # "full": every patch
        packed = pack(model, feats.split(V), sizes, newline=inner(model).image_newline)
        shape = structure(model, V, sizes)
        starts = [0, *torch.tensor(V).cumsum(0).tolist()]
        hand, counts, kept_all = [], [], []
        for i in range(len(V)):
            kept = reference_kept(model, px[starts[i]:starts[i + 1]], sizes[i], per_image[i], R, budget,
                                  multi_views[i])
            kept_all.append(kept)
            pos = keep_positions(*shape[i], kept, newline, multi_views[i])
            hand.append(packed[i][pos])
            counts.append(len(pos))
        ids, mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, n) for n in counts],
                                  stock=[(tl.IMAGE_TOKEN, n) for n, _ in shape])
        embeds = lm.embed_merge(model, ids, tl.IMAGE_TOKEN, torch.cat(hand))
        return model(inputs_embeds=embeds, attention_mask=mask).logits, mask, counts, kept_all


def reported_positions(model, views, size, multi_view=True):
    """The report's per-view indices mapped back to positions into the image's tokens without newlines."""
    from litelvlm_kernels.integrations.llava_onevision import geometry

    geo = geometry(model, size, model.config.vision_aspect_ratio, multi_view)
    assert [d["grid"] for d in views] == geo["cell_grids"]
    return torch.cat([cl[d["indices"]] for d, cl in zip(views, geo["cells"])]).sort().values


@pytest.mark.parametrize("budget,newline", [("per_tile", "kept_rows"), ("global", "all"), ("per_tile", "none")])
def test_pruned_equals_hand_built(model, anyres, budget, newline):
    batch, V, _ = anyres
    R = 6
    want, mask, counts, kept = hand_built(model, batch, V, R, budget, newline, PER_IMAGE, [True] * 3)
    with torch.no_grad(), enable(model, num_retain=R, budget=budget, image_newline=newline) as patch:
        got = model(**batch, referring_expressions=EXPRS).logits
    report = patch.last_report["image"]
    assert report["kept"] == counts and [len(v) for v in report["views"]] == V
    for i, views in enumerate(report["views"]):
        assert torch.equal(reported_positions(model, views, SIZES[i]), kept[i])
    assert got.shape == want.shape
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)


def test_multi_image_pruned_equals_hand_built(model, multi):
    if multi is None:
        pytest.skip("this transformers has no batch_num_images (multi-image prompts)")
    batch, V, _ = multi
    R = 5
    mv = [True, False, False]
    want, mask, counts, kept = hand_built(model, batch, V, R, "per_tile", "kept_rows", PER_IMAGE, mv)
    with torch.no_grad(), enable(model, num_retain=R) as patch:
        got = model(**batch, referring_expressions=EXPRS).logits
        out = greedy(model, batch, referring_expressions=EXPRS)
    report = patch.last_report["image"]
    assert counts[1:] == [R + 1, R + 1] and report["kept"] == counts
    for i, views in enumerate(report["views"]):
        assert torch.equal(reported_positions(model, views, SIZES[i], mv[i]), kept[i])
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, :batch["input_ids"].shape[1]], batch["input_ids"])


# --------------------------------------------------------------------------- tokens, errors


def test_expressions_change_generated_tokens():
    """An LLM sharpened to std 0.3 (``tl.sharpen``): two expressions keep different tokens and generate differently."""
    model = lm.onevision(llm_std=0.3)
    batch, _, _ = stock_batch(model, SIZES[1:2], [1])
    outs, kept = [], []
    with torch.no_grad(), enable(model, num_retain=4) as patch:
        for e in (["the cat"], ["a red car"]):
            outs.append(greedy(model, batch, referring_expressions=[e], max_new_tokens=6))
            kept.append([d["indices"].tolist() for d in patch.last_report["image"]["views"][0]])
    assert kept[0] != kept[1]
    assert not torch.equal(outs[0], outs[1])


def test_no_expressions_context_only(model, anyres):
    """missing_expressions="cls": T = 0, pure contribution ranking (the score maps carry one channel)."""
    batch, V, _ = anyres
    with torch.no_grad(), enable(model, num_retain=4, missing_expressions="cls") as patch:
        model(**batch)
    views = patch.last_report["image"]["views"]
    assert [len(v) for v in views] == V
    assert all(len(d["indices"]) == min(4, d["grid"][0] * d["grid"][1]) and not d["from_similarity"].any()
               for v in views for d in v)


def test_bad_inputs_named(model, anyres, multi):
    batch, _, _ = anyres
    with enable(model, num_retain=8):
        with pytest.raises(ValueError, match="image_sizes"):
            model(**{k: v for k, v in batch.items() if k != "image_sizes"}, referring_expressions=EXPRS)
        with pytest.raises(ValueError, match="image_sizes"):
            model(**dict(batch, image_sizes=SIZES[:2]), referring_expressions=EXPRS)
        if multi is not None:
            with pytest.raises(ValueError, match="batch_num_images"):
                model(**dict(multi[0], batch_num_images=torch.tensor([1, 1])), referring_expressions=EXPRS)
        with pytest.raises(ValueError, match="pixel_values"):
            model(**dict(batch, pixel_values=batch["pixel_values"][:, :2]), referring_expressions=EXPRS)
        with pytest.raises(ValueError, match="input_ids"):  # placeholders of another image size
            model(**dict(batch, image_sizes=SIZES[[1, 1, 1]]), referring_expressions=EXPRS)
        with pytest.raises(TypeError, match="vision_feature_layer"):
            model(**batch, referring_expressions=EXPRS, vision_feature_layer="last")
        with pytest.raises(ValueError, match="vision_feature_select_strategy"):
            model(**batch, referring_expressions=EXPRS, vision_feature_select_strategy="default")
        with pytest.raises(ValueError, match="referring_expressions"):
            model(**batch)


def test_default_strategy_refused():
    cfg = lm.onevision().config.to_dict()
    cfg["vision_feature_select_strategy"] = "default"
    model = type(lm.onevision())(type(lm.onevision().config)(**cfg))
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        enable(model)


def test_clip_tower_default_strategy_keep_all():
    """Not a released checkpoint, but the rule is the tower's: a CLIP tower needs "default" (drop [CLS]), and then
    keeping everything is the stock model too (images and video)."""
    import transformers

    from litelvlm_kernels.selection.towers import find_tower

    torch.manual_seed(1)
    cfg = transformers.LlavaOnevisionConfig(
        vision_config=tl.vision_config(), text_config=tl.text_config(), image_token_index=tl.IMAGE_TOKEN,
        video_token_index=tl.VIDEO_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_grid_pinpoints=tl.GRID_PINPOINTS, vision_aspect_ratio=tl.ONEVISION_ASPECT)
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg).eval()
    find_tower(lm.inner(model).vision_tower, "vision").load_state_dict(find_tower(lm.clip(), "vision").state_dict())
    batch, _, _ = stock_batch(model, SIZES[:2], [1, 1])
    ids, mask = tl.prompt_ids([1, 1], [(tl.VIDEO_TOKEN, 2 * math.ceil(G / 2) ** 2 + 1)] * 2)
    videos = dict(input_ids=ids, attention_mask=mask, pixel_values_videos=lm.pixels(2, 2, 3, tl.IMAGE, tl.IMAGE))
    with torch.no_grad():
        for b in (batch, videos):
            want = model(**b).logits
            with enable(model, num_retain=M, image_newline="all"):
                assert torch.equal(model(**b, referring_expressions=["the cat", "a dog"]).logits, want)
    cfg.vision_feature_select_strategy = "full"
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        enable(transformers.LlavaOnevisionForConditionalGeneration(cfg))
