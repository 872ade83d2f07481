"""The Hugging Face CLIP adapter off the main path: gradients, bf16 towers, a failing forward, no transformers.

The same tiny towers as tests/test_hf.py (its configs and vocabulary writer).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

import test_hf as base  # noqa: E402
import transformers  # noqa: E402
from test_hf import pixels  # noqa: E402

from litelvlm_kernels import reference  # noqa: E402
from litelvlm_kernels.integrations import hf  # noqa: E402
from litelvlm_kernels.testing import assert_selection_close  # noqa: E402


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(vision, text, tokenizer, pruner): tests/test_hf.py's tiny towers, built again for this module."""
    d = tmp_path_factory.mktemp("clip_tok")
    base.write_clip_vocab(d)
    tok = transformers.CLIPTokenizer.from_pretrained(str(d))
    torch.manual_seed(0)
    vc, tc = base._configs(tok)
    vision = transformers.CLIPVisionModelWithProjection(vc).eval()
    text = transformers.CLIPTextModelWithProjection(tc).eval()
    with torch.no_grad():  # gamma != 1, beta != 0, as in tests/test_hf.py
        ln = vision.vision_model.post_layernorm
        ln.weight.add_(0.2 * torch.randn_like(ln.weight))
        ln.bias.add_(0.2 * torch.randn_like(ln.bias))
    return vision, text, tok, hf.LiteLVLMPruner(vision, text, tok)


def test_gradients_flow_to_kept_tokens(parts):
    """Training a projector on kept tokens: the gather is differentiable w.r.t. the tower's states."""
    pruner = parts[3]
    out = pruner.prune(pixels(1), texts=["a cat"], num_retain=8, return_capture=True)
    assert out.tokens.requires_grad
    out.tokens.sum().backward()
    g = pruner.tower.encoder.layers[0].mlp.fc2.weight.grad
    assert g is not None and torch.isfinite(g).all()
    pruner.vision_model.zero_grad(set_to_none=True)


def test_missing_transformers_message():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import litelvlm_kernels.integrations  # fine without transformers\n"
            "try:\n    import litelvlm_kernels.integrations.hf\n"
            "except ImportError as e:\n    print('MSG', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "MSG" in r.stdout and "litelvlm_kernels[hf]" in r.stdout, r.stdout + r.stderr


def test_bfloat16_towers(parts):
    """Half-precision towers: captured tensors stay bf16, scores are fp32, result as the reference on them."""
    vision, text = (copy.deepcopy(m).to(torch.bfloat16) for m in parts[:2])
    pruner = hf.LiteLVLMPruner(vision, text, parts[2])
    with torch.no_grad():
        out = pruner.prune(pixels(2).to(torch.bfloat16), texts=["the cat", "a red car"], num_retain=12,
                           return_capture=True)
    cap = out.capture
    assert cap.hidden.dtype == torch.bfloat16 and out.tokens.dtype == torch.bfloat16
    e = out.text.text_embeds
    s = reference.similarity_direct(cap.hidden, e, pruner.proj_weight.detach(), pruner.ln_weight.detach(),
                                    pruner.ln_bias.detach(), pruner.ln_eps)
    c = reference.contribution_direct(cap.q_cls, cap.keys, cap.values)
    # ref32 runs on the same bf16 inputs upcast, so only summation order differs: fp32-level tolerances
    assert_selection_close((out.indices, out.num_similarity, out.from_similarity), s, c, 12,
                           s_tol=1e-3 * float(s.abs().max()), c_tol=1e-6)


def test_hooks_removed_when_the_forward_fails(parts):
    vision, pruner = parts[0], parts[3]
    # transformers 5 keeps hooks of its own on the layers (output capture): compare with before
    before = {name: list(m._forward_hooks) for name, m in vision.named_modules()}
    with pytest.raises((ValueError, RuntimeError)):  # a size the tower cannot embed (message by version)
        pruner.prune(torch.randn(1, 3, 57, 40), texts=["a cat"], num_retain=8)  # not 56 x 56
    assert {name: list(m._forward_hooks) for name, m in vision.named_modules()} == before
    with torch.no_grad():
        out = pruner.prune(pixels(1), texts=["a cat"], num_retain=8, return_tokens=False)
    assert out.tokens is None and out.capture is None and out.indices.shape == (1, 8)
