"""The ``litelvlm`` model's own ``--model_args``, split from those of lmms-eval's ``llava_hf``.

``--model_args pretrained=...,clip=...,num_retain=192,multi_text=union`` reaches the model's
``__init__`` as keyword arguments (lmms-eval parses ``key=value`` pairs: ints become ints,
``true`` / ``false`` bools, ``{...}`` stays one string). Ours:

* ``clip``: the CLIP checkpoint (a folder or hub id) whose vision tower the LVLM uses; its text
  tower, projections and tokenizer score the expressions (a SigLIP checkpoint for SigLIP towers);
  required unless ``num_retain=all``;
* ``num_retain``: visual tokens kept per image / tile / frame (an int > 0), or ``all``: the stock
  model, not patched (the sweep's keep-all baseline);
* ``enable_litelvlm``'s settings (``LiteLVLMSettings``): ``multi_text``, ``k_per_text``,
  ``order``, ``missing_expressions``, ``budget``, ``image_newline``, ``video_budget``,
  ``similarity_keep``; and ``head_contribution`` (SigLIP towers);
* ``expression_field`` / ``expression_fields``: see ``expressions.py``.

Everything else goes to ``llava_hf`` (``pretrained``, ``dtype``, ``device_map``, ...). Errors are
raised before any weight is loaded and name the argument.
"""

from __future__ import annotations

import dataclasses
import inspect

from .expressions import ExpressionMap

__all__ = ["KEEP_ALL", "PluginArgs", "split_model_args"]

KEEP_ALL = "all"
_OWN = ("clip", "num_retain", "expression_field", "expression_fields", "head_contribution")
_HEAD_CONTRIBUTION = ("exact", "heads")


@dataclasses.dataclass
class PluginArgs:
    """The validated LiteLVLM part of ``--model_args``. ``num_retain=None``: keep all (no patch)."""

    clip: str | None
    num_retain: int | None
    settings: dict          # LiteLVLMSettings fields other than num_retain, as given
    head_contribution: str
    expressions: ExpressionMap


def setting_names() -> tuple:
    """The ``LiteLVLMSettings`` fields other than ``num_retain`` (the public settings of ``enable_litelvlm``)."""
    from ...integrations.hf import LiteLVLMSettings

    return tuple(f.name for f in dataclasses.fields(LiteLVLMSettings) if f.name != "num_retain")


def parse_num_retain(value, name: str = "num_retain") -> int | None:
    """An int > 0, or ``"all"`` -> None (keep every visual token: the stock model)."""
    if isinstance(value, str) and value.strip().lower() == KEEP_ALL:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int > 0 or {KEEP_ALL!r}, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected an int > 0 or {KEEP_ALL!r}, got {value}")
    return value


def check_settings(num_retain: int | None, settings: dict) -> None:
    """``enable_litelvlm``'s own checks of the settings (ValueError / TypeError naming the setting)."""
    from ...integrations.hf import LiteLVLMSettings

    LiteLVLMSettings(num_retain=num_retain or 1, **settings).check()


def split_model_args(kwargs: dict, stock_init) -> tuple:
    """``(PluginArgs, the keyword arguments for the stock llava_hf __init__)``.

    ``stock_init``: the stock class's ``__init__``, whose named parameters are the other accepted keys.
    """
    stock = [p.name for p in inspect.signature(stock_init).parameters.values()
             if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    names = setting_names()
    unknown = sorted(k for k in kwargs if k not in _OWN and k not in names and k not in stock)
    if unknown:
        raise TypeError(f"model_args: unknown argument(s) {unknown}; litelvlm takes {list(_OWN + names)} and "
                        f"llava_hf's {stock}")
    num_retain = parse_num_retain(kwargs.get("num_retain", 192))
    clip = kwargs.get("clip")
    if num_retain is not None and (not isinstance(clip, str) or not clip):
        raise ValueError(f"clip: the CLIP checkpoint (folder or hub id) whose vision tower the model uses is required "
                         f"to prune (its text tower scores the expressions), got {clip!r}; or num_retain={KEEP_ALL}")
    head = kwargs.get("head_contribution", "exact")
    if head not in _HEAD_CONTRIBUTION:
        raise ValueError(f"head_contribution: expected one of {_HEAD_CONTRIBUTION}, got {head!r}")
    # --model_args has no None: "none" / "null" mean the setting's None (k_per_text=none: R' // texts)
    settings = {k: None if isinstance(v, str) and v.lower() in ("none", "null") else v
                for k, v in kwargs.items() if k in names}
    check_settings(num_retain, settings)
    plugin = PluginArgs(clip=clip, num_retain=num_retain, settings=settings, head_contribution=head,
                        expressions=ExpressionMap(kwargs.get("expression_field"), kwargs.get("expression_fields")))
    return plugin, {k: v for k, v in kwargs.items() if k in stock}
