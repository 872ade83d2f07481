"""The selection inside the engine: what vLLM's LLaVA lacks, and the call to ``litelvlm_kernels.prune``.

vLLM builds the LLaVA vision tower only up to ``vision_feature_layer`` (-2, the last layer's
input) and drops ``post_layernorm``; no LLaVA checkpoint holds CLIP's text tower,
``text_projection`` or ``visual_projection``. ``LiteLVLMSelector`` holds exactly those:

* the last layer's ``layer_norm1`` and ``q_proj`` / ``k_proj`` / ``v_proj`` (for [CLS]'s query and
  the patch keys / values, through ``capture.last_layer_qkv``: the last layer's attention and MLP
  are never run, as in ``capture_vision``);
* ``post_layernorm`` and ``visual_projection`` (folded with the texts: ``fold_text``);
* the CLIP text tower with its projection (a transformers ``CLIPTextModelWithProjection``; the
  [EOS] embeddings come from ``selection.clip.encode_text``, as in ``LiteLVLMPruner``).

Weights: the last layer and ``post_layernorm`` from the LLaVA checkpoint when it has them (the
Hugging Face integration uses the LLaVA's own tower), else from the CLIP checkpoint; the text side
and both projections from the CLIP checkpoint. The modules are plain torch modules, replicated on
every tensor-parallel rank (the vision tower's output they read is already whole).

``select`` takes vLLM's batched per-image fields (see ``processing.py``) and does no host sync:
the only host-side numbers (budget, text count) come from a CPU-resident field, and the rest are
shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from ... import fold_text, prune
from ...selection.capture import last_layer_qkv
from ...selection.clip import encode_text
from .settings import ServingSettings


def _device_tensor(values: list, device: torch.device) -> torch.Tensor:
    """An int64 tensor of host ints on ``device`` without a blocking copy (pinned memory on CUDA)."""
    t = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class LiteLVLMSelector(nn.Module):
    def __init__(self, vision_config, clip_config, settings: ServingSettings):
        super().__init__()
        import transformers

        dv = vision_config.hidden_size
        eps = vision_config.layer_norm_eps
        self.settings = settings
        self.layer_norm1 = nn.LayerNorm(dv, eps=eps)
        self.q_proj = nn.Linear(dv, dv, bias=True)
        self.k_proj = nn.Linear(dv, dv, bias=True)
        self.v_proj = nn.Linear(dv, dv, bias=True)
        self.post_layernorm = nn.LayerNorm(dv, eps=eps)
        self.visual_projection = nn.Linear(dv, clip_config.projection_dim, bias=False)
        text_config = clip_config.text_config
        text_config.projection_dim = clip_config.projection_dim  # CLIPConfig keeps it at the top level
        text_config._attn_implementation = "sdpa"
        self.text = transformers.CLIPTextModelWithProjection(text_config).eval()
        # tests and debugging: set to a list to get (indices, from_similarity) of every image selected
        # (CPU copies, so a host sync per call: leave it None when serving)
        self.recorder: list | None = None

    # ---- weights --------------------------------------------------------------------------

    # this module's parameter name -> the name in a LLaVA checkpoint's vision tower / a CLIP checkpoint
    def tower_names(self, last: int) -> dict:
        """Parameters that live in the vision tower: {ours: name relative to ``vision_model.``}."""
        names = {"post_layernorm.weight": "post_layernorm.weight", "post_layernorm.bias": "post_layernorm.bias"}
        for p in ("weight", "bias"):
            names[f"layer_norm1.{p}"] = f"encoder.layers.{last}.layer_norm1.{p}"
            for proj in ("q_proj", "k_proj", "v_proj"):
                names[f"{proj}.{p}"] = f"encoder.layers.{last}.self_attn.{proj}.{p}"
        return names

    def clip_names(self) -> dict:
        """Parameters read from the CLIP checkpoint only: {ours: checkpoint name}."""
        names = {"visual_projection.weight": "visual_projection.weight"}
        for name, _ in self.text.named_parameters():
            names[f"text.{name}"] = name  # text_model.* and text_projection.weight, as CLIPModel stores them
        return names

    @torch.no_grad()
    def load(self, tensors: dict) -> set:
        """Copy {our parameter / buffer name: tensor} in; returns the names loaded."""
        state = self.state_dict(keep_vars=True)
        for name, t in tensors.items():
            dst = state[name]
            if tuple(dst.shape) != tuple(t.shape):
                raise ValueError(f"litelvlm: checkpoint tensor for {name} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(dst.shape)}")
            dst.copy_(t.to(dtype=dst.dtype, device=dst.device))
        return set(tensors)

    # ---- selection ------------------------------------------------------------------------

    def fold(self, text_ids: list, num_texts: list):
        """Per image [T'_i, L_i] ids -> (FoldedText [N, T, Dv], num_texts [N] on the device).

        No attention mask: CLIP's text tower is causal and pools at [EOS] (the first one, or the highest
        id with the legacy ``eos_token_id=2``), and every row is padded on the right, after its [EOS],
        so the padding cannot reach the pooled state. With a mask, transformers would read it on the
        host to choose an attention path (a device sync per batch).
        """
        dev = self.visual_projection.weight.device
        n = len(text_ids)
        t_max = max(int(x.shape[0]) for x in text_ids)
        l_max = max(int(x.shape[1]) for x in text_ids)
        ids = torch.cat([nn.functional.pad(x, (0, l_max - x.shape[1])) for x in text_ids]).to(dev)
        embeds = encode_text(self.text, ids)
        if all(int(x.shape[0]) == t_max for x in text_ids):
            grouped = embeds.view(n, t_max, -1)
        else:
            rows = [i * t_max + t for i, x in enumerate(text_ids) for t in range(int(x.shape[0]))]
            grouped = embeds.new_zeros(n * t_max, embeds.shape[-1])
            grouped.index_copy_(0, _device_tensor(rows, dev), embeds)
            grouped = grouped.view(n, t_max, -1)
        folded = fold_text(grouped, self.visual_projection.weight, self.post_layernorm.weight,
                           self.post_layernorm.bias)
        return folded, _device_tensor(num_texts, dev)

    def select(self, states: torch.Tensor, text_ids: list, meta: list, *,
               keep_cls: bool = False) -> list:
        """Kept select-layer tokens of each image.

        states: [N, 1 + M, Dv], the vision tower's select-layer output with [CLS] first (the last
        layer's input); text_ids: per image [T'_i, L_i] (right-padded); meta: per image (num_retain, T).
        Returns a list of N tensors [R'_i (+1 with keep_cls), Dv] in image order.
        """
        s = self.settings
        out: list = [None] * states.shape[0]
        budgets = sorted({r for r, _ in meta})
        for r in budgets:  # one fused call per distinct budget (usually one)
            idx = [i for i, (ri, _) in enumerate(meta) if ri == r]
            x = states if len(idx) == len(meta) else states[_device_tensor(idx, states.device)]
            folded, num_texts = self.fold([text_ids[i] for i in idx], [meta[i][1] for i in idx])
            q_cls, keys, values = last_layer_qkv(x, self.layer_norm1, self.q_proj, self.k_proj, self.v_proj)
            res = prune(x[:, 1:], folded, q_cls, keys, values, num_retain=r, ln_eps=self.post_layernorm.eps,
                        multi_text=s.multi_text, k_per_text=s.k_per_text, num_texts=num_texts, order=s.order)
            tokens = torch.cat([x[:, :1], res.tokens], 1) if keep_cls else res.tokens
            for j, i in enumerate(idx):
                out[i] = tokens[j]
            if self.recorder is not None:
                self.recorder.extend((int(r), res.indices[j].cpu(), res.from_similarity[j].cpu())
                                     for j in range(len(idx)))
        return out
