"""PaliGemma (``PaliGemmaForConditionalGeneration``): one SigLIP view of M tokens per image, a Gemma LLM.

The stock model feeds its LLM every patch of the tower's ``last_hidden_state``
(the post-layernormed output of the LAST layer: no [CLS] to drop, M = 256 /
1024 / 4096 at 224 / 448 / 896 px), through ``multi_modal_projector`` (one
linear map); transformers 4.x then divides by sqrt(hidden size), because its
Gemma multiplies every input embedding by that inside its forward (5.x scales
the token embeddings in the embedding module instead and leaves the image
features as projected). The processor writes ``image_seq_length`` = M
placeholders per image, then <bos> + prompt + "\\n": the *prefix*, token type
0, which the LLM attends bidirectionally; the suffix (type 1, training
targets, generated tokens) is causal.

With LiteLVLM each image keeps R' = min(num_retain, M) tokens, selected on the
last layer's states (select layer -1, before the post-layernorm) with the
SigLIP rules of ``siglip.py`` (the pooling head of the original SigLIP
checkpoint plays [EOS] and [CLS]); only the kept rows go through the tower's
own post-layernorm and the projector (and the 4.x scaling), so keeping every
token in raster order is bit for bit the stock model. ``order``: as LLaVA
("official": the release's order; "spatial": raster order). The placeholder
run shrinks from M to R', and ``token_type_ids`` (with ``attention_mask``,
``labels``, ``position_ids``) shrink with it (``inputs.PER_TOKEN``): the kept
image tokens stay in the bidirectional prefix with the prompt, so the LLM's
mask is the stock one restricted to the tokens it sees.
"""

from __future__ import annotations

import inspect
import re

from .. import ops
from ..selection.towers import config_get, find_tower, model_part
from ..selection.views import view_reports
from .adapter import FamilyAdapter, Modality, register_adapter

# how a 4.x PaliGemma scales its projected image features (in get_image_features, or inline in forward in 4.45)
_SCALING = re.compile(r"image_features\s*/\s*\(?\s*self\.config\.(text_config\.)?hidden_size\s*\*\*\s*0\.5")
_DIVISOR_SOURCE: dict = {}  # model class -> the scaling's config path: None, "" (config) or "text_config."


def _scaling_of(cls: type):
    """None when the installed PaliGemma leaves projected features as they are (transformers 5), else the config
    owning the ``hidden_size`` it divides by the root of: "" (``config``, 4.45) or "text_config." (4.46 - 4.57)."""
    if cls not in _DIVISOR_SOURCE:
        try:
            match = _SCALING.search(inspect.getsource(inspect.getmodule(cls)))
            _DIVISOR_SOURCE[cls] = None if match is None else (match.group(1) or "")
        except (OSError, TypeError):  # no source (a frozen install): 4.x Gemma embeddings carry no embed_scale
            _DIVISOR_SOURCE[cls] = "text_config."
    return _DIVISOR_SOURCE[cls]


def feature_divisor(model) -> float | None:
    """The number the installed PaliGemma divides its projected image features by (None: it does not)."""
    where = _scaling_of(type(model))
    if where is None:
        return None
    if where == "" and hasattr(model.get_input_embeddings(), "embed_scale"):
        return None  # pragma: no cover - a 5.x embedding with 4.45-style code cannot be installed together
    cfg = model.config.text_config if where else model.config
    return float(cfg.hidden_size) ** 0.5


@register_adapter
class PaliGemmaAdapter(FamilyAdapter):
    """``model_type == "paligemma"``: pixel_values [N, 3, H, W], one row (one view) per image."""

    model_types = ("paligemma",)

    @staticmethod
    def select_layer_of(model) -> int:
        """-1: PaliGemma's features are the tower's ``last_hidden_state`` (post_layernorm of hidden_states[-1])."""
        return -1

    def check_model(self) -> None:
        if self.pruner.has_cls:
            raise ValueError(f"vision_config: model_type={self.model.config.vision_config.model_type!r} has a [CLS] "
                             "token; PaliGemma feeds every row of its tower to the LLM and is supported with "
                             "its SigLIP tower (siglip_vision_model) only")
        if self.pruner.select_layer not in (-1, len(self.tower().encoder.layers)):
            raise ValueError(f"select_layer={self.pruner.select_layer}: PaliGemma reads the tower's last layer "
                             "(select_layer=-1); build the pruner with it")
        if getattr(self.tower(), "post_layernorm", None) is None:
            raise ValueError("vision_config: the tower has no post_layernorm, which PaliGemma's features go through")

    def tower(self):
        """The LVLM's own SigLIP vision transformer (its post-layernorm makes the features)."""
        return find_tower(model_part(self.model, "vision_tower"), "vision")

    def side(self) -> int:
        vc = self.model.config.vision_config
        return vc.image_size // vc.patch_size

    def modalities(self) -> list:
        m = self.side() ** 2
        token = int(config_get(self.model.config, "image_token_id", "image_token_index"))
        return [Modality("pixel_values", token, (), lambda kw: [m] * kw["pixel_values"].shape[0],
                         self.image_features, stacked=True, legacy_stacked=True)]

    def feature_layers(self, kwargs: dict) -> None:
        """None: PaliGemma projects the tower's last_hidden_state (no feature layer, no hidden_states selected)."""
        return None

    def image_features(self, kwargs: dict, cond) -> tuple:
        s = self.settings
        res = self.pruner.prune(kwargs["pixel_values"], text=cond, num_retain=s.num_retain, multi_text=s.multi_text,
                                k_per_text=s.k_per_text, order=s.order, return_tokens=False, return_capture=True,
                                full_tower=True)
        # the kept rows of the last layer's own output (``capture.hidden``, never post-layernormed: the pruner's
        # ``tokens`` follow the installed version's hidden_states[-1], which 4.5x returns post-layernormed), through
        # what the stock get_image_features applies to all M of them
        kept = ops.gather_tokens(res.capture.hidden, res.indices)
        feats = model_part(self.model, "multi_modal_projector")(self.tower().post_layernorm(kept))
        divisor = feature_divisor(self.model)
        if divisor is not None:
            feats = feats / divisor
        g = self.side()
        views = view_reports(list(zip(res.indices, res.from_similarity)), (g, g))
        return list(feats), [[v] for v in views], res.capture
