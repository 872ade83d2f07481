"""LLaVA with a SigLIP tower (the LLaVA-Interleave layout) through the plugin
(``LiteLVLMLlavaForConditionalGeneration``) on vLLM's CPU build: the tower keeps all but SigLIP's last layer,
``vision_feature_layer=-1``, "full" (no [CLS]), no post-layernorm in vLLM's tower; the scorer continues from its
output with the SigLIP checkpoint's last layer, post-layernorm and pooling head. The checks every single-view SigLIP
family passes are in _siglip_single.py (run here for this family); here: the configurations LiteLVLM cannot serve are
refused by name.
"""

from __future__ import annotations

import copy

import pytest
from _siglip_single import *  # noqa: F403 - its fixtures and tests (__all__), run in this module for its family


@pytest.fixture(scope="module")
def family():
    return "llava_siglip"


def test_what_cannot_be_served_is_refused_by_name(lvlm):
    from litelvlm_kernels.serving.vllm.llava import check_llava_config

    check_llava_config(lvlm.llava.config)
    for field, value, match in [
            ("vision_feature_select_strategy", "default",
             r"vision_feature_select_strategy='default': a SigLIP tower has no \[CLS\]"),
            ("vision_feature_layer", -2, r"vision_feature_layer=-2: .*-1, the tower's output"),
            ("vision_feature_layer", [-1, -2], r"vision_feature_layer=\[-1, -2\]")]:
        cfg = copy.deepcopy(lvlm.llava.config)
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match=match):
            check_llava_config(cfg)
