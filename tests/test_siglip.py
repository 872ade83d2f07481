"""SigLIP towers: the pruner (what plays [EOS] and [CLS], checked against the reference and the head) and LLaVA
with a SigLIP tower as LLaVA-Interleave ships it ("full", the original's last layer dropped).

Tiny random models built offline (tests/_lvlm_models.py): the SigLIP checkpoint's head, post-layernorm and last
layer are the ones the LVLM's tower lacks.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

import _lvlm_models as lm  # noqa: E402
from _lvlm_models import tl  # noqa: E402
from _threads import run_in_threads  # noqa: E402

from litelvlm_kernels import reference  # noqa: E402
from litelvlm_kernels.integrations.lvlm import enable_litelvlm  # noqa: E402
from litelvlm_kernels.integrations.pruner import LiteLVLMPruner  # noqa: E402
from litelvlm_kernels.selection.towers import find_tower  # noqa: E402
from litelvlm_kernels.testing import assert_selection_close  # noqa: E402

M = tl.M
EXPRS = lm.EXPRS  # row 0: one image, row 1: two images
PER_IMAGE = [EXPRS[0], EXPRS[1], EXPRS[1]]


@pytest.fixture(scope="module")
def model():
    return lm.lvlm("llava_siglip")


@pytest.fixture(scope="module")
def pruner(model):
    return LiteLVLMPruner(lm.inner(model).vision_tower, lm.siglip(), lm.siglip_tok(), select_layer=-1)


def tower_states(model, px):
    """The LVLM tower's hidden_states[-1] (what stock LLaVA projects with "full"): every row a patch. Under
    transformers 4.5x that is the post-layernormed output, under 4.45 / 5.x the last layer's own state."""
    return lm.inner(model).vision_tower(px, output_hidden_states=True).hidden_states[-1]


def scored_states(model, px):
    """x_j of the similarity: the last layer's own state (never post-layernormed), on every version."""
    return lm.siglip_layer_states(px, len(find_tower(lm.inner(model).vision_tower, "vision").encoder.layers))


# ---- the pruner ------------------------------------------------------------------------------------------------

def test_towers_differ_as_the_checkpoints_do(model):
    """The fixture is what the method must handle: the LVLM tower has one layer fewer than the SigLIP checkpoint."""
    tower = find_tower(lm.inner(model).vision_tower, "vision")
    assert len(tower.encoder.layers) == len(find_tower(lm.siglip(), "vision").encoder.layers) - 1
    assert getattr(tower, "head", None) is None


@pytest.mark.parametrize("keep", ["lowest", "highest"])
@pytest.mark.parametrize("multi_text,min_votes,order", [("union", 1, "official"), ("intersection", 0, "spatial")])
def test_pruner_selects_as_the_reference(model, pruner, keep, multi_text, min_votes, order):
    px = lm.pixels(3, 3, tl.IMAGE, tl.IMAGE, seed=5)
    texts = ["the cat", "a red car on the left"]
    with torch.no_grad():
        res = pruner.prune(px, texts=texts, num_retain=12, multi_text=multi_text, order=order, similarity_keep=keep)
        hidden = tower_states(model, px)
        s, c = lm.siglip_scores(scored_states(model, px), px, texts)
    # equal to the reference's selection on its own (unfolded) scores, up to swaps at rounding-level near-ties
    assert_selection_close((res.indices, res.num_similarity, res.from_similarity), -s if keep == "highest" else s,
                           c, 12, min_votes=min_votes, order=order)
    assert torch.equal(res.tokens, torch.stack([hidden[b, res.indices[b]] for b in range(3)]))
    assert res.num_tokens == M


def test_directions_differ(pruner):
    """similarity_keep is not ignored: the two ends of the ranking keep different tokens."""
    px = lm.pixels(1, 3, tl.IMAGE, tl.IMAGE, seed=6)
    with torch.no_grad():
        low = pruner.prune(px, texts=["the cat"], num_retain=8, k_per_text=8)
        high = pruner.prune(px, texts=["the cat"], num_retain=8, k_per_text=8, similarity_keep="highest")
    assert not set(low.indices[0].tolist()) & set(high.indices[0].tolist())


def test_text_is_padded_as_trained(pruner):
    """SigLIP pools the LAST position: texts are padded to max_position_embeddings (not to the longest), no mask."""
    cond = pruner.prepare_text(texts=[["the cat"], ["a red car on the left of the tree"]])
    want = lm.siglip_text_embeds(["the cat", "a red car on the left of the tree"])
    torch.testing.assert_close(cond.text_embeds[:, 0], want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="attention_mask"):
        pruner.prepare_text(input_ids=torch.ones(1, tl.SIGLIP_TEXT_LEN, dtype=torch.long),
                            attention_mask=torch.ones(1, tl.SIGLIP_TEXT_LEN, dtype=torch.long))


def test_fold_matches_the_head(pruner):
    """The fold's projection and bias are the head's value + output maps: e . (W proj LN(x) + bias) computed by the
    pruner's folded text equals e . out_proj(v_proj(LN(x))) run through nn.MultiheadAttention's own weights."""
    head = lm.siglip().vision_model.head.attention
    y = torch.randn(5, 64)
    D = head.embed_dim
    v = torch.nn.functional.linear(y, head.in_proj_weight[2 * D:], head.in_proj_bias[2 * D:])
    direct = head.out_proj(v)
    torch.testing.assert_close(y @ pruner.proj_weight.T + pruner.proj_bias, direct, rtol=1e-5, atol=1e-5)


def test_contribution_modes(model):
    """head_contribution="heads" is the documented cheap variant: another ranking than "exact" in general."""
    tower = lm.inner(model).vision_tower
    exact = LiteLVLMPruner(tower, lm.siglip(), lm.siglip_tok(), select_layer=-1)
    heads = LiteLVLMPruner(tower, lm.siglip(), lm.siglip_tok(), select_layer=-1, head_contribution="heads")
    px = lm.pixels(2, 3, tl.IMAGE, tl.IMAGE, seed=7)
    with torch.no_grad():
        ce, ch = exact.capture(px).contribution, heads.capture(px).contribution
    assert ce.shape == ch.shape == (2, M) and not torch.allclose(ce, ch)


def test_bad_construction_is_named(model):
    tower = lm.inner(model).vision_tower
    with pytest.raises(TypeError, match="text_model= .*vision_head="):
        LiteLVLMPruner(tower, lm.siglip().text_model, lm.siglip_tok(), select_layer=-1)  # no head anywhere
    with pytest.raises(ValueError, match="visual_projection"):
        LiteLVLMPruner(tower, lm.siglip(), lm.siglip_tok(), visual_projection=torch.zeros(64, 64))
    with pytest.raises(ValueError, match="head_contribution"):
        LiteLVLMPruner(tower, lm.siglip(), lm.siglip_tok(), head_contribution="fast")
    with pytest.raises(ValueError, match="vision_head"):
        LiteLVLMPruner(lm.clip(), lm.clip(), lm.tokenizer(), vision_head=lm.siglip())
    with pytest.raises(ValueError, match="tokenizer"):
        LiteLVLMPruner(tower, lm.siglip(), lm.tokenizer())  # CLIP's tokenizer: ids beyond SigLIP's vocabulary
    # the head may also come from vision_head= with a text-only model
    p = LiteLVLMPruner(tower, lm.siglip().text_model, lm.siglip_tok(), vision_head=lm.siglip().vision_model,
                       select_layer=-1)
    assert not p.has_cls


def test_scale_is_refused(pruner):
    with pytest.raises(ValueError, match="scale"):
        pruner.prune(lm.pixels(1, 3, tl.IMAGE, tl.IMAGE), texts=["the cat"], num_retain=8, scale=0.1)


def test_capture_vision_still_refuses_siglip(model):
    """The CLIP capture never takes a SigLIP patch for [CLS]."""
    from litelvlm_kernels.selection.capture import capture_vision

    with pytest.raises(TypeError, match="no \\[CLS\\]"):
        capture_vision(lm.inner(model).vision_tower, lm.pixels(1, 3, tl.IMAGE, tl.IMAGE))


# ---- LLaVA with a SigLIP tower ----------------------------------------------------------------------------------

def test_keep_all_equals_stock(model, batch):
    """No [CLS] and "full": an image takes M placeholders (not M + 1) and keeping all is the stock model."""
    with torch.no_grad():
        logits = model(**batch).logits
        ids = lm.greedy(model, batch)
        with lm.enable(model, num_retain=M, order="spatial") as patch:
            assert torch.equal(model(**batch, referring_expressions=EXPRS).logits, logits)
            assert torch.equal(lm.greedy(model, batch, referring_expressions=EXPRS), ids)
            assert patch.last_report["image"]["stock"] == [M] * 3 and patch.last_report["image"]["kept"] == [M] * 3


def hand_built(model, batch, R, keep="lowest", order="official"):
    """The reference's kept rows of the stock features, merged into prompts with R' placeholders."""
    px = batch["pixel_values"]
    feats = lm.inner(model).multi_modal_projector(tower_states(model, px))
    hidden = scored_states(model, px)
    kept = []
    for i, e in enumerate(PER_IMAGE):
        s, c = lm.siglip_scores(hidden[i:i + 1], px[i:i + 1], e)
        idx, _, _ = reference.select(-s if keep == "highest" else s, c, R, order=order)
        kept.append(feats[i, idx[0]])
    ids, mask = tl.prompt_ids([1, 2], [(tl.IMAGE_TOKEN, min(R, M))] * 3, stock=[(tl.IMAGE_TOKEN, M)] * 3)
    return ids, mask, lm.embed_merge(model, ids, tl.IMAGE_TOKEN, torch.cat(kept))


@pytest.mark.parametrize("keep,order", [("lowest", "official"), ("highest", "spatial")])
def test_pruned_equals_hand_built(model, batch, keep, order):
    R = 12
    with torch.no_grad():
        ids, mask, embeds = hand_built(model, batch, R, keep, order)
        want = model(inputs_embeds=embeds, attention_mask=mask).logits
        want_ids = model.generate(input_ids=ids, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4,
                                  do_sample=False)
        with lm.enable(model, num_retain=R, order=order, similarity_keep=keep) as patch:
            got = model(**batch, referring_expressions=EXPRS).logits
            got_ids = lm.greedy(model, batch, referring_expressions=EXPRS)
            views = patch.last_report["image"]["views"]
    L = batch["input_ids"].shape[1]
    assert torch.equal(got_ids[:, :L], batch["input_ids"]) and torch.equal(got_ids[:, L:], want_ids[:, ids.shape[1]:])
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-5, atol=1e-5)
    assert [len(v) for v in views] == [1, 1, 1] and views[0][0]["grid"] == (8, 8)


def test_expressions_change_the_tokens(batch):
    """With a sharpened LLM, other expressions give other generated tokens: the selection reaches the LLM."""
    model = lm.lvlm("llava_siglip", llm_std=0.3)
    with torch.no_grad(), lm.enable(model, num_retain=8):
        a = lm.greedy(model, batch, referring_expressions=EXPRS, max_new_tokens=6)
        b = lm.greedy(model, batch, referring_expressions=[["the sky"], ["a dog", "the tree"]], max_new_tokens=6)
    assert not torch.equal(a, b)


def test_default_strategy_is_refused(model):
    """Stock LLaVA's "default" drops row 0 as [CLS]: on SigLIP that is a real patch, so it is refused, named."""
    m = copy.deepcopy(model)
    m.config.vision_feature_select_strategy = "default"
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        lm.enable(m)


def test_deepcopy_keeps_its_own_head(model, batch):
    """A deep copy of an enabled model is pruned with the copy's weights (the SigLIP head included)."""
    with lm.enable(model, num_retain=12):
        twin = copy.deepcopy(model)
    patch = twin._litelvlm_patch
    assert patch.adapter.pruner.scorer.source is not lm.siglip().vision_model
    with torch.no_grad():
        want = None
        with lm.enable(model, num_retain=12):
            want = model(**batch, referring_expressions=EXPRS).logits
        got = twin(**batch, referring_expressions=EXPRS).logits
    assert torch.equal(got, want)
    patch.disable()


def test_shared_by_threads_equals_serial(model, batch, pruner):
    """A SigLIP pruner and a patched SigLIP LLaVA shared by 2 threads (the server pattern): every call as serial."""
    inputs = [(lm.pixels(1, 3, tl.IMAGE, tl.IMAGE, seed=s), e) for s, e in ((5, ["the cat"]), (6, ["a red car"]))]
    calls = [(batch, EXPRS), (dict(batch, pixel_values=lm.pixels(3, 3, tl.IMAGE, tl.IMAGE, seed=9)),
                              [["the sky"], ["a dog", "the tree"]])]
    with torch.no_grad():
        serial = [pruner.prune(px, texts=e, num_retain=8).indices for px, e in inputs]
        got = run_in_threads(lambda i: pruner.prune(inputs[i][0], texts=inputs[i][1], num_retain=8).indices,
                             [i % 2 for i in range(100)])
        with lm.enable(model, num_retain=12):
            serial_logits = [model(**kw, referring_expressions=e).logits for kw, e in calls]
            logits = run_in_threads(lambda j: model(**calls[j][0], referring_expressions=calls[j][1]).logits,
                                    [i % 2 for i in range(40)])
    assert not torch.equal(serial[0], serial[1]) and not torch.equal(serial_logits[0], serial_logits[1])
    assert all(torch.equal(g, serial[i % 2]) for i, g in enumerate(got))
    assert all(torch.equal(g, serial_logits[i % 2]) for i, g in enumerate(logits))


def test_torch_compile_of_a_patched_model(model, batch):
    """torch.compile over the patched SigLIP LLaVA (capture, head contribution, ops) gives the eager logits."""
    with torch.no_grad(), lm.enable(model, num_retain=12):
        eager = model(**batch, referring_expressions=EXPRS).logits
        got = torch.compile(model, backend="aot_eager")(**batch, referring_expressions=EXPRS).logits
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)


# ---- mixed dtypes, and errors that name the argument -------------------------------------------------------------

def test_bf16_lvlm_with_an_fp32_siglip_checkpoint(model, batch):
    """A bf16 LVLM whose SigLIP checkpoint was left in fp32 (from_pretrained's default): the tower's states are cast
    to the checkpoint's dtype where its layer, post-layernorm and head take over (siglip.py, "Dtypes"), instead of
    failing inside a matmul ("mat1 and mat2 must have the same dtype")."""
    from litelvlm_kernels.selection.towers import layer_output

    m16 = copy.deepcopy(model).to(torch.bfloat16)
    sig = lm.siglip()  # fp32
    tower = lm.inner(m16).vision_tower
    px = lm.pixels(2, 3, tl.IMAGE, tl.IMAGE, seed=5).bfloat16()
    pruner = LiteLVLMPruner(tower, sig, lm.siglip_tok(), select_layer=-1)
    with torch.no_grad():
        cap = pruner.capture(px)
        res = pruner.prune(px, texts=["the cat"], num_retain=8)
        # by hand: the bf16 tower's state, then the fp32 checkpoint's dropped layer, post-layernorm and head
        h = cap.hidden.float()
        for layer in sig.vision_model.encoder.layers[len(find_tower(tower, "vision").encoder.layers):]:
            h = layer_output(layer(h, None))
        q, k, v = lm.siglip_head_qkv(sig.vision_model.post_layernorm(h))
        attn = sig.vision_model.head.attention
        want = reference.map_contribution_direct(q, k, v, attn.out_proj.weight, attn.num_heads)
    assert cap.hidden.dtype == torch.bfloat16 and cap.contribution.dtype == torch.float32
    torch.testing.assert_close(cap.contribution, want, rtol=1e-5, atol=1e-7)
    assert res.tokens.dtype == torch.bfloat16 and res.indices.shape == (2, 8)
    b16 = dict(batch, pixel_values=batch["pixel_values"].bfloat16())
    with torch.no_grad():
        stock_dtype = m16(**b16).logits.dtype  # bf16; transformers 4.45 upcasts the logits to fp32
        with lm.enable(m16, num_retain=8) as patch:
            out = m16(**b16, referring_expressions=EXPRS)
            ids = lm.greedy(m16, b16, referring_expressions=EXPRS)
    assert out.logits.dtype == stock_dtype and torch.isfinite(out.logits.float()).all()
    assert patch.last_report["image"]["kept"] == [8] * 3 and ids.shape[1] == batch["input_ids"].shape[1] + 4


def test_fp32_lvlm_with_a_bf16_siglip_checkpoint(model):
    """The other way round: the fp32 tower's states go to the bf16 checkpoint's parts in bf16."""
    pruner = LiteLVLMPruner(lm.inner(model).vision_tower, copy.deepcopy(lm.siglip()).to(torch.bfloat16),
                            lm.siglip_tok(), select_layer=-1)
    with torch.no_grad():
        res = pruner.prune(lm.pixels(1, 3, tl.IMAGE, tl.IMAGE, seed=5), texts=["the cat"], num_retain=8)
    assert res.tokens.dtype == torch.float32 and res.indices.shape == (1, 8)


def _siglip_of_width(width: int):
    import transformers

    tc = dict(vocab_size=len(lm.siglip_tok()), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
              num_attention_heads=4, max_position_embeddings=tl.SIGLIP_TEXT_LEN)
    vc = {k: v for k, v in tl.siglip_vision_config(3, use_head=True).items() if k != "model_type"}
    vc.update(hidden_size=width, intermediate_size=2 * width)
    return transformers.SiglipModel(transformers.SiglipConfig(text_config=tc, vision_config=vc)).eval()


def test_a_wrong_checkpoint_is_named_by_the_argument_it_came_in(model):
    """A SiglipModel of another width or depth passed as text_model= is reported as text_model (not vision_head);
    passed as vision_head=, as vision_head. One layer is "1 layer"."""
    tower = lm.inner(model).vision_tower  # width 64, 2 layers
    narrow, shallow = _siglip_of_width(32), tl.tiny_siglip(lm.siglip_tok(), layers=1)
    with pytest.raises(ValueError, match="^text_model: a SigLIP head of width 32 does not fit a vision tower of "
                                         "width 64"):
        LiteLVLMPruner(tower, narrow, lm.siglip_tok(), select_layer=-1)
    with pytest.raises(ValueError, match=r"^text_model: the SigLIP checkpoint has 1 layer, fewer than the vision "
                                         r"tower's 2;"):
        LiteLVLMPruner(tower, shallow, lm.siglip_tok(), select_layer=-1)
    with pytest.raises(ValueError, match="^vision_head: a SigLIP head of width 32"):
        LiteLVLMPruner(tower, lm.siglip().text_model, lm.siglip_tok(), vision_head=narrow.vision_model,
                       select_layer=-1)
    with pytest.raises(ValueError, match="^vision_head: the SigLIP checkpoint has 1 layer,"):
        LiteLVLMPruner(tower, lm.siglip(), lm.siglip_tok(), vision_head=shallow.vision_model, select_layer=-1)
    with pytest.raises(ValueError, match="^text_model: a SigLIP head of width 32"):
        enable_litelvlm(model, narrow, lm.siglip_tok())  # the LVLM path: the same argument, the same name
    assert "forward" not in model.__dict__  # the refused call left the model unpatched


@pytest.mark.parametrize("where", ["pruner", "lvlm"])
def test_blank_expression_error_speaks_of_no_cls(model, batch, pruner, where):
    """SigLIP towers have no [CLS]: the blank-expression error does not send the user to "[CLS] context"."""
    with pytest.raises(ValueError, match="blank expression") as err:
        if where == "pruner":
            pruner.prepare_text(texts=[["the cat"], ["  "]])
        else:
            with torch.no_grad(), lm.enable(model, num_retain=8):
                model(**batch, referring_expressions=[["the cat"], ["a red car", " "]])
    assert "[CLS]" not in str(err.value) and "context tokens only" in str(err.value)
