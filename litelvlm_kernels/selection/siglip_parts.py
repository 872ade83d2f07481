"""A SigLIP scorer's modules for an engine that runs its own tower (vLLM), built from configs, loaded by name.

LVLM checkpoints drop SigLIP's pooling head and text tower, and LLaVA-OneVision's / -Interleave's towers its
last layer(s); an engine builds its tower without a post-layernorm (docs/design.md 10.8, 11.1). These are
the parts of the original SigLIP checkpoint the scorer continues with: the layers the LVLM's tower lacks,
the post-layernorm the head was trained behind, the head, and the text tower. The engine hands the scorer
its tower's final state (before any post-layernorm) and the select-layer state.
"""

from __future__ import annotations

import torch

from .siglip import SiglipScorer

__all__ = ["SiglipEngineParts"]


class SiglipEngineParts(torch.nn.Module):
    """``vision_config``: the LVLM's tower config (its layer count); ``scorer_config``: the SiglipConfig of the
    original checkpoint (``text_config``, ``vision_config`` with all its layers)."""

    def __init__(self, vision_config, scorer_config):
        super().__init__()
        from transformers.models.siglip import modeling_siglip as ms

        vc = scorer_config.vision_config
        vc._attn_implementation = "sdpa"
        self.config = vc
        self.layer_offset = vision_config.num_hidden_layers  # our encoder.layers[0] is the checkpoint's layer L'
        if vc.num_hidden_layers < self.layer_offset or vc.hidden_size != vision_config.hidden_size:
            raise ValueError(f"litelvlm.scorer: a SigLIP of {vc.num_hidden_layers} layers of width {vc.hidden_size} "
                             f"does not extend the LVLM's tower ({self.layer_offset} layers of width "
                             f"{vision_config.hidden_size}); name the checkpoint the tower comes from")
        self.encoder = torch.nn.Module()
        self.encoder.layers = torch.nn.ModuleList(ms.SiglipEncoderLayer(vc)
                                                  for _ in range(vc.num_hidden_layers - self.layer_offset))
        self.post_layernorm = torch.nn.LayerNorm(vc.hidden_size, eps=vc.layer_norm_eps)
        self.head = ms.SiglipMultiheadAttentionPoolingHead(vc)
        tc = scorer_config.text_config
        tc._attn_implementation = "sdpa"
        self.text = ms.SiglipTextModel(tc).eval()

    def scorer(self, tokenizer=None, head_contribution: str = "exact") -> SiglipScorer:
        return SiglipScorer(None, self, self.text, tokenizer, head_contribution=head_contribution,
                            num_tower_layers=self.layer_offset, source_name="litelvlm.scorer")

    def checkpoint_names(self) -> dict:
        """{our parameter name: ("scorer", the SigLIP checkpoint's name)}."""
        names = {}
        for name, _ in self.named_parameters():
            if name.startswith("encoder.layers."):
                i, rest = name[len("encoder.layers."):].split(".", 1)
                names[name] = ("scorer", f"vision_model.encoder.layers.{int(i) + self.layer_offset}.{rest}")
            elif name.startswith("text."):
                rest = name[len("text."):]
                # SiglipModel stores its text tower under text_model.; SiglipTextModel's own names may or may not
                # carry the prefix (transformers 4.x / 5.x)
                names[name] = ("scorer", rest if rest.startswith("text_model.") else f"text_model.{rest}")
            else:
                names[name] = ("scorer", f"vision_model.{name}")
        return names
