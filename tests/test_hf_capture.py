"""The hook-free capture of a Hugging Face CLIP tower (``selection.capture``): bit for bit the stock forward.

The same tiny randomly initialised CLIP towers as ``test_hf.py`` (its fixtures), run by hand and by the stock
forward with hooks, against ``capture_vision``.
"""

from __future__ import annotations

import inspect

import pytest
import torch

pytest.importorskip("transformers")

import test_hf as th  # noqa: E402  (the tiny CLIP of the pruner's tests)

from litelvlm_kernels.integrations import hf  # noqa: E402

M, pixels = th.M, th.pixels


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return th.clip_pair(th.clip_tokenizer(tmp_path_factory.mktemp("clip_tok")))


def run_layer(layer, h):
    # transformers 5: layer(hidden, attention_mask, **kwargs); 4.x: (hidden, mask, causal_mask)
    params = [p for p in inspect.signature(layer.forward).parameters.values()
              if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    out = layer(h, *([None] * (len(params) - 1)))
    return out[0] if isinstance(out, tuple) else out


def hand_run(vision, px, select_layer):
    """The tower run by hand: embeddings, pre_layrnorm, layers; then the last layer's q/k/v."""
    tower = vision.vision_model
    h = tower.pre_layrnorm(tower.embeddings(px))
    states = [h]
    for layer in tower.encoder.layers:
        states.append(run_layer(layer, states[-1]))
    last = tower.encoder.layers[-1]
    x = last.layer_norm1(states[-2])  # the last layer's input, normalised as its attention sees it
    attn = last.self_attn
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    return states[select_layer][:, 1:], q[:, 0], k[:, 1:], v[:, 1:]



# --------------------------------------------------------------------------- capture


@pytest.mark.parametrize("select_layer", [-2, -1, 0, 1])
@pytest.mark.parametrize("stop_early", [True, False])
def test_capture_equals_hand_run(models, select_layer, stop_early):
    vision, _ = models
    px = pixels(2)
    with torch.no_grad():
        cap = hf.capture_vision(vision, px, select_layer=select_layer, stop_early=stop_early)
        hidden, q, k, v = hand_run(vision, px, select_layer)
        hs = vision(px, output_hidden_states=True).hidden_states[select_layer]
    assert cap.hidden.shape == (2, M, 64) and cap.q_cls.shape == (2, 64)
    assert cap.keys.shape == (2, M, 64) and cap.values.shape == (2, M, 64)
    torch.testing.assert_close(cap.hidden, hidden, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cap.hidden, hs[:, 1:], rtol=0, atol=0)  # HF's own hidden_states numbering
    torch.testing.assert_close(cap.cls_hidden, hs[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(cap.q_cls, q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cap.keys, k, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cap.values, v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("select_layer", [-2, -1, 0])
def test_capture_is_bit_for_bit_the_stock_forward(models, select_layer):
    """The hand-run capture returns exactly the values the stock forward computes (read here with hooks on a
    plain forward: the test's own, independent view of them)."""
    vision, _ = models
    attn = vision.vision_model.encoder.layers[-1].self_attn
    seen = {}
    handles = [getattr(attn, f"{n}_proj").register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o))
               for n in "qkv"]
    px = pixels(3)
    try:
        with torch.no_grad():
            hs = vision(px, output_hidden_states=True).hidden_states[select_layer]
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        cap = hf.capture_vision(vision, px, select_layer=select_layer)
    assert torch.equal(cap.hidden, hs[:, 1:]) and torch.equal(cap.cls_hidden, hs[:, 0])
    assert torch.equal(cap.q_cls, seen["q"][:, 0])
    assert torch.equal(cap.keys, seen["k"][:, 1:]) and torch.equal(cap.values, seen["v"][:, 1:])


def test_capture_registers_no_hook(models):
    """Nothing is attached to the shared modules, so concurrent calls cannot see each other's tensors."""
    vision, _ = models
    before = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in vision.named_modules()}
    calls = []

    def spy(module, *args):
        calls.append(dict(module._forward_hooks))

    h = vision.vision_model.encoder.layers[-1].self_attn.k_proj.register_forward_pre_hook(spy)
    try:
        with torch.no_grad():
            hf.capture_vision(vision, pixels(1))
    finally:
        h.remove()
    assert calls == [{}]  # while the capture ran, k_proj carried no forward hook
    assert {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in vision.named_modules()} == before


def test_capture_stop_early_skips_the_tail(models):
    vision, _ = models
    calls = []
    h = vision.vision_model.encoder.layers[-1].mlp.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            hf.capture_vision(vision, pixels(1), stop_early=True)
            assert calls == []
            hf.capture_vision(vision, pixels(1), stop_early=False)
            assert calls == [1]
            hf.capture_vision(vision, pixels(1), select_layer=-1, stop_early=True)  # needs the last output
            assert calls == [1, 1]
    finally:
        h.remove()
    # no hook of ours left behind
    assert not vision.vision_model.encoder.layers[-1].self_attn.q_proj._forward_hooks
    assert not vision.vision_model.encoder.layers[-1].self_attn.v_proj._forward_hooks


def test_select_layer_checked(models):
    vision, _ = models
    with pytest.raises(ValueError, match="select_layer"):
        hf.LiteLVLMPruner(vision, select_layer=-5)
    with pytest.raises(ValueError, match="select_layer"):
        hf.capture_vision(vision, pixels(1), select_layer=4)
