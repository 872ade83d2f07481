"""What every LiteLVLM model file in vLLM shares: building the selector, reading the per-item fields, the
row-count check, and loading the scorer's weights.

Weights: vLLM's tower stops at the select layer and drops ``post_layernorm``; the scorer's modules
(``selection.kinds.engine_parts_for``) are read from the LVLM checkpoint's own tower where it has them (CLIP:
the last layer's q/k/v and ``post_layernorm``, which LLaVA checkpoints hold) and from the scorer checkpoint
(``litelvlm.scorer``) otherwise; ``load_weights`` returns their names so vLLM's loader knows every
parameter was set.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

from . import checkpoint
from .processing import extra_field_names, field_names
from .selector import EngineSelector
from .settings import CONFIG_KEY, settings_from_config

# an LVLM checkpoint's vision-tower tensors, in the old (hub) and the transformers >= 4.52 layouts
_TOWER = re.compile(r"^(?:model\.)?vision_tower\.vision_model\.(.+)$")


def scorer_selector(config) -> tuple:
    """(``EngineSelector`` for the model's tower, the validated settings)."""
    settings = settings_from_config(config)
    return EngineSelector(config.vision_config, checkpoint.config(settings.scorer), settings), settings


def _per_item(x) -> list:
    """A batched field: a stacked tensor [N, ...] or a list of per-item tensors -> list of tensors."""
    return list(x.unbind(0)) if hasattr(x, "unbind") else list(x)


@dataclasses.dataclass
class ImageRows:
    """The per-item fields of one modality (``processing.py``), read on the host (CPU fields: no sync)."""

    text_ids: list   # per item [T', L] int64 (CPU)
    num_texts: list  # per item T
    budgets: list    # per item num_retain
    counts: list     # per item: the placeholders the processor gave it
    keys: list | None = None     # per item the key of the image alone (bytes; tower_cache.py), or None
    reports: list | None = None  # per item (index in its request, report id) or None (report.py)

    @classmethod
    def of(cls, kwargs: dict, modality: str = "image") -> ImageRows:
        from .report import decode
        from .tower_cache import item_key

        text_key, meta_key = field_names(modality)
        key_name, report_name = extra_field_names(modality)
        meta = [tuple(int(v) for v in m.tolist()) for m in _per_item(kwargs[meta_key])]
        keys = [item_key(k) for k in _per_item(kwargs[key_name])] if kwargs.get(key_name) is not None else None
        reports = [decode(r) for r in _per_item(kwargs[report_name])] if kwargs.get(report_name) is not None \
            else None
        return cls(_per_item(kwargs[text_key]), [m[1] for m in meta], [m[0] for m in meta], [m[2] for m in meta],
                   keys, reports)


def pixel_input(model, kwargs: dict):
    """vLLM's own parse of a model's image inputs (None without images); precomputed ``image_embeds`` are refused
    by name (the selection reads the tower's own states)."""
    if kwargs.get("image_embeds") is not None:
        raise ValueError("image_embeds: LiteLVLM needs the images (it selects from the tower's own states)")
    return model._parse_and_validate_image_input(**kwargs)


def host_sizes(sizes) -> list:
    """``image_sizes`` ((height, width) per image; a CPU-resident field: a tensor [N, 2] or a list of [2] tensors)
    as host int pairs, read without a device sync."""
    return [tuple(int(v) for v in s.tolist()) for s in sizes]


def check_rows(built: list, counts: list) -> None:
    """Each item must give exactly as many rows as the prompt has placeholders for it (vLLM would silently cut
    extra rows, or fail later on missing ones)."""
    if list(built) != list(counts):
        raise RuntimeError(f"litelvlm: built {list(built)} visual rows for items with {list(counts)} placeholders "
                           "(the layout's count and its rows disagree: a bug)")


def project_kept(layout, features, chosen: list, counts: list, project: Callable) -> tuple:
    """Per image ``project`` (the family's projector) of its kept rows: ``layout.assemble`` of ``features``
    [N, extra + M, C] at each image's ``chosen`` indices (``EngineSelector.select``), checked against the
    placeholder ``counts``; one gather and one ``project`` call when every image keeps as many rows."""
    import torch

    indices = [idx for idx, _ in chosen]
    sizes = [layout.extra + len(idx) for idx in indices]
    check_rows(sizes, counts)
    if len(set(sizes)) == 1:
        return tuple(project(layout.assemble(features, torch.stack(indices))).unbind(0))
    kept = [layout.assemble(features[i:i + 1], idx[None])[0] for i, idx in enumerate(indices)]
    return torch.split(project(torch.cat(kept)), sizes)


def load_scorer_weights(model, load_stock: Callable, weights: Iterable) -> set:
    """vLLM's own loading of the LVLM checkpoint (``load_stock``), tapping the tower tensors the scorer reads,
    then the rest of the scorer's modules from the scorer checkpoint; returns every name loaded."""
    selector = model.litelvlm
    names = selector.checkpoint_names()
    from_tower = {there: ours for ours, (where, there) in names.items() if where == "tower"}
    tapped: dict = {}

    def tap(ws):
        for name, w in ws:
            m = _TOWER.match(name)
            if m and m.group(1) in from_tower:
                tapped[from_tower[m.group(1)]] = w
            yield name, w

    loaded = set(load_stock(tap(weights)))
    need = {ours: (there if where == "scorer" else f"vision_model.{there}")
            for ours, (where, there) in names.items() if ours not in tapped}
    by_ckpt = {v: k for k, v in need.items()}
    path = model.litelvlm_settings.scorer
    found = checkpoint.read_tensors(path, lambda n: n in by_ckpt)
    missing = sorted(n for n in by_ckpt if n not in found)
    if missing:
        raise ValueError(f"{CONFIG_KEY}.scorer={path!r}: the checkpoint lacks {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (is it the checkpoint the LVLM's tower comes from?)")
    tensors = dict(tapped)
    tensors.update({by_ckpt[n]: t for n, t in found.items()})
    return loaded | {f"litelvlm.{n}" for n in selector.load(tensors)}
