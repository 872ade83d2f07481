"""The selection inside the engine: the scorer's modules, the folded texts, and the calls to the shared ops.

vLLM runs its own vision tower; ``EngineSelector`` holds what the scorer needs besides
(``selection.kinds.engine_parts_for``: CLIP's last-layer q/k/v, post-layernorm, visual projection and text
tower; or SigLIP's dropped layers, post-layernorm, head and text tower), built from the configs and loaded
from the checkpoints (``load``), and the scorer over them (docs/design.md 11.1). The modules are plain torch
modules, replicated on every tensor-parallel rank (the tower's output they read is already whole).

Texts are folded once per distinct content: the processor sends each image's expression as CPU-resident
token ids, so the fold cache is keyed by their content with no device sync, and an expression asked again
(another image, another request) costs a lookup. Nothing here reads device data on the host.
"""

from __future__ import annotations

import torch
from torch import nn

from ... import FoldedText, fold_text, prune
from ...selection.kinds import engine_parts_for
from ...selection.text import FoldCache, TextCondition, oriented
from .settings import ServingSettings


def device_tensor(values: list, device: torch.device) -> torch.Tensor:
    """An int64 tensor of host ints on ``device`` without a blocking copy (pinned memory on CUDA)."""
    t = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class EngineSelector(nn.Module):
    """``vision_config``: the LVLM tower's; ``scorer_config``: the scorer checkpoint's (CLIPConfig / SiglipConfig)."""

    def __init__(self, vision_config, scorer_config, settings: ServingSettings, fold_cache: int = 256):
        super().__init__()
        self.settings = settings
        self.parts = engine_parts_for(vision_config, scorer_config)
        self.scorer = self.parts.scorer(head_contribution=settings.head_contribution)
        self._folds = FoldCache(fold_cache)
        # tests and debugging: set to a list to get (num_retain, indices, from_similarity) of every image selected
        # (CPU copies, so a host sync per call: leave it None when serving)
        self.recorder: list | None = None

    # ---- weights ------------------------------------------------------------------------------

    def checkpoint_names(self) -> dict:
        """{our parameter name (under ``parts.``): (where, name there)}; see the parts' ``checkpoint_names``."""
        return {f"parts.{k}": v for k, v in self.parts.checkpoint_names().items()}

    @torch.no_grad()
    def load(self, tensors: dict) -> set:
        """Copy {our parameter name: tensor} in; returns the names loaded."""
        state = self.state_dict(keep_vars=True)
        for name, t in tensors.items():
            dst = state[name]
            if tuple(dst.shape) != tuple(t.shape):
                raise ValueError(f"litelvlm: checkpoint tensor for {name} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(dst.shape)}")
            dst.copy_(t.to(dtype=dst.dtype, device=dst.device))
        return set(tensors)

    # ---- texts --------------------------------------------------------------------------------

    def fold(self, text_ids: list, num_texts: list) -> TextCondition:
        """Per item [T'_i, L_i] CPU ids (T_i real rows) -> one TextCondition over the N items ([N, T, Dv] folded,
        num_texts [N] on the device), each distinct content encoded and folded once (cached)."""
        s = self.scorer
        dev = s.ln_weight.device
        # the ids are CPU-resident (the processor's field): their bytes are host data, read with no device sync
        # (numpy() reads the memory directly, not through an op, so it is host data under FakeTensorMode too)
        keys = [(tuple(x.shape), x.numpy().tobytes(), int(t)) for x, t in zip(text_ids, num_texts)]
        todo = {k: (x, int(t)) for k, x, t in zip(keys, text_ids, num_texts) if self._folds.get(k) is None}
        if todo:
            self._fold_new(todo)
        entries = [self._folds.get(k) for k in keys]
        entries = [e if e is not None else self._fold_one(x, int(t)) for e, x, t in zip(entries, text_ids, num_texts)]
        t_max = max(e[0].shape[0] for e in entries)
        w = entries[0][0].new_zeros(len(entries), t_max, entries[0][0].shape[-1])
        b = entries[0][1].new_zeros(len(entries), t_max)
        for i, (wi, bi) in enumerate(entries):
            w[i, :wi.shape[0]], b[i, :bi.shape[0]] = wi, bi
        return TextCondition(text_embeds=w[..., :0], num_texts=device_tensor([e[0].shape[0] for e in entries], dev),
                             folded=FoldedText(w=w, b=b), similarity_keep=self.settings.similarity_keep)

    def _fold_new(self, todo: dict) -> None:
        """Encode every new content in one text-tower call, fold each, cache (w [T, Dv], b [T])."""
        rows = [x[:t] for x, t in todo.values()]
        real = [r for r in rows if r.shape[0] > 0]
        s = self.scorer
        embeds = []
        if real:
            L = max(r.shape[1] for r in real)
            ids = torch.cat([nn.functional.pad(r, (0, L - r.shape[1])) for r in real])
            embeds = list(s.encode_ids(ids.to(s.ln_weight.device), None).split([r.shape[0] for r in real]))
        proj, bias = s.projection()
        for key, (_, t) in todo.items():
            e = embeds.pop(0) if t > 0 else proj.new_zeros(0, proj.shape[0])
            f = fold_text(e[None].to(proj.device, proj.dtype), proj, s.ln_weight, s.ln_bias, proj_bias=bias)
            f = oriented(f, self.settings.similarity_keep)
            self._folds.put(key, (f.w[0], f.b[0]))

    def _fold_one(self, x, t):  # the cache is disabled (size 0): fold without it
        self._fold_new({("uncached",): (x, t)})
        return self._folds.get(("uncached",))

    # ---- selection ----------------------------------------------------------------------------

    def view_scores(self, hidden: torch.Tensor, end_state: torch.Tensor, cond: TextCondition,
                    view_item: torch.Tensor) -> tuple:
        """The scores of each view, for layouts that select over several views per item (``selection.views``):
        s [V, T, M] (similarity to each folded text) and c [V, M] (contribution), fp32, and the texts per view
        ([V], or None for one text group); ``hidden`` [V, M, Dv] the select-layer patch rows, ``end_state`` the
        tower state the scorer continues from, ``view_item`` [V] the item (text group) of each view."""
        from ...selection.capture import VisionCapture
        from ...selection.views import contribution, view_similarity

        s, num = view_similarity(self.scorer.ln_eps, hidden, cond, view_item)
        parts = self.scorer.contribution_inputs(end_state)
        c = contribution(VisionCapture(hidden=hidden, cls_hidden=None, **{
            k: parts.get(k) for k in ("q_cls", "keys", "values", "contribution")}))
        return s, c.to(s.device, s.dtype), num

    def select(self, hidden: torch.Tensor, end_state: torch.Tensor, cond: TextCondition, budgets: list) -> list:
        """Per row ``(indices [R'_i], from_similarity [R'_i])`` of ``hidden`` [N, M, Dv] (select-layer patch rows),
        ``end_state`` the tower state the scorer continues from; one fused call per distinct budget."""
        s, st = self.settings, self.scorer
        out: list = [None] * hidden.shape[0]
        for r in sorted(set(budgets)):
            idx = [i for i, ri in enumerate(budgets) if ri == r]
            rows = None if len(idx) == len(budgets) else device_tensor(idx, hidden.device)

            def pick(x, rows=rows):
                return x if rows is None else x[rows]
            folded = cond.folded._replace(w=pick(cond.folded.w), b=pick(cond.folded.b))
            res = prune(pick(hidden), folded, **st.contribution_inputs(pick(end_state)), num_retain=r,
                        ln_eps=st.ln_eps, multi_text=s.multi_text, k_per_text=s.k_per_text,
                        num_texts=pick(cond.num_texts), order=s.order, return_tokens=False)
            for j, i in enumerate(idx):
                out[i] = (res.indices[j], res.from_similarity[j])
            if self.recorder is not None:
                self.recorder.extend((int(r), res.indices[j].cpu(), res.from_similarity[j].cpu())
                                     for j in range(len(idx)))
        return out
