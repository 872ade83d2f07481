"""PaliGemma through the plugin (``LiteLVLMPaliGemmaForConditionalGeneration``) on vLLM's CPU build.

vLLM's tower applies PaliGemma's post-layernorm; the plugin runs its parts to stop before it: the last layer's
output is the scorer's state (which then applies the ORIGINAL SigLIP's post-layernorm and head: the tiny PaliGemma's
own post-layernorm is moved away from SigLIP's, so mixing them up changes the selection), and the kept rows go through
PaliGemma's post-layernorm and projector. One image per prompt.

vLLM's CPU attention ignores the prefix-LM ranges and runs PaliGemma fully causal, so the transformers reference is
``enable_litelvlm`` on transformers' PaliGemma run causally (eager attention, no ``token_type_ids``); stock vLLM equals
stock transformers run that way (checked here). The checks every single-view SigLIP family passes are in
_siglip_single.py (run here for this family).
"""

from __future__ import annotations

import copy

import pytest
import torch
from _compare import N_NEW
from _siglip_single import *  # noqa: F403 - its fixtures and tests (__all__), run in this module for its family
from _siglip_single import PALIGEMMA_PROMPT, keep_all_cases
from tiny_siglip_lvlm import PaliGemmaCausalInputs

from litelvlm_kernels.selection.towers import find_tower


@pytest.fixture(scope="module")
def family():
    return "paligemma"


def test_stock_vllm_equals_causal_transformers_and_the_post_layernorms_differ(lvlm, stock_outputs):
    inputs = PaliGemmaCausalInputs(lvlm.processor)
    for (images, _), (prompt_ids, tokens) in zip(keep_all_cases("paligemma"), stock_outputs):
        x = inputs(images=images, text=PALIGEMMA_PROMPT)
        with torch.no_grad():
            out = lvlm.llava.generate(**x, max_new_tokens=N_NEW, do_sample=False)
        assert x["input_ids"][0].tolist() == prompt_ids
        assert out[0, len(prompt_ids):].tolist() == tokens
    own = find_tower(lvlm.llava.model.vision_tower, "vision").post_layernorm
    assert not torch.equal(own.weight, lvlm.clip.vision_model.post_layernorm.weight)


def test_what_cannot_be_served_is_refused_by_name(lvlm):
    from litelvlm_kernels.serving.vllm.paligemma import check_paligemma_config

    check_paligemma_config(lvlm.llava.config)
    cfg = copy.deepcopy(lvlm.llava.config)
    cfg.vision_config.model_type = "clip_vision_model"
    with pytest.raises(ValueError, match=r"vision_config: model_type='clip_vision_model'.*SigLIP"):
        check_paligemma_config(cfg)
