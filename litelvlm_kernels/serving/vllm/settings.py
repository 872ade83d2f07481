"""The plugin's settings (model config) and per-request options (``mm_processor_kwargs``).

Settings live in the LLaVA config under the key ``litelvlm`` (``--hf-overrides`` or config.json)::

    {"architectures": ["LiteLVLMLlavaForConditionalGeneration"],
     "litelvlm": {"clip": "/path/to/clip-vit-large-patch14-336",   # required
                  "num_retain": 192, "multi_text": "union", "k_per_text": null,
                  "order": "official", "missing_expressions": "error"}}

``clip`` names the CLIP checkpoint whose vision tower the LLaVA uses: its text tower,
``text_projection``, ``visual_projection`` and tokenizer are loaded from it (no LLaVA checkpoint
holds them). The other keys mean what they mean for ``enable_litelvlm`` (``LiteLVLMSettings``).

Per request (``mm_processor_kwargs``; on the OpenAI-compatible server only with
``--trust-request-mm-kwargs``):

* ``expression``: a str, or a list of str (several texts, combined by ``multi_text``), for every
  image of the request. Missing: an error, or [CLS]-contribution-only selection with
  ``missing_expressions="cls"``.
* ``num_retain``: an int in [1, the configured num_retain] (the memory profile is for the
  configured one, so a request may keep fewer tokens, never more).

Errors are ValueError / TypeError naming the field (``mm_processor_kwargs.expression``, ...); the
server answers them with HTTP 400.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

CONFIG_KEY = "litelvlm"
EXPRESSION_KEY = "expression"
NUM_RETAIN_KEY = "num_retain"
REQUEST_KEYS = (EXPRESSION_KEY, NUM_RETAIN_KEY)
_SETTING_KEYS = ("clip", "num_retain", "multi_text", "k_per_text", "order", "missing_expressions")


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    clip: str
    num_retain: int = 192
    multi_text: Any = "union"
    k_per_text: int | None = None
    order: str = "official"
    missing_expressions: str = "error"


def settings_from_config(hf_config) -> ServingSettings:
    """The validated ``litelvlm`` settings of a LLaVA config (ValueError / TypeError naming the key)."""
    from ...selection.settings import LiteLVLMSettings

    raw = getattr(hf_config, CONFIG_KEY, None)
    if raw is None:
        raise ValueError(f"{CONFIG_KEY}: the model config has no {CONFIG_KEY!r} settings; pass them with "
                         f"--hf-overrides '{{\"{CONFIG_KEY}\": {{\"clip\": \"/path/to/clip\", \"num_retain\": 192}}}}' "
                         "(or add them to config.json)")
    if not isinstance(raw, Mapping):
        raise TypeError(f"{CONFIG_KEY}: expected a dict of settings, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_SETTING_KEYS))
    if unknown:
        raise ValueError(f"{CONFIG_KEY}: unknown settings {unknown}; known: {list(_SETTING_KEYS)}")
    clip = raw.get("clip")
    if not isinstance(clip, str) or not clip:
        raise ValueError(f"{CONFIG_KEY}.clip: the CLIP checkpoint (a folder or hub id) whose text tower, projections "
                         f"and tokenizer LiteLVLM scores with is required, got {clip!r}")
    kw = {k: raw[k] for k in _SETTING_KEYS[1:] if k in raw}
    try:
        LiteLVLMSettings(**kw).check()  # the HF integration's rules, one place
    except (TypeError, ValueError) as e:
        raise type(e)(f"{CONFIG_KEY}.{e}") from None
    return ServingSettings(clip=clip, **kw)


def kept_per_image(settings: ServingSettings, num_patches: int, num_retain: int | None = None) -> int:
    """R' = min(R, M): the kept patch tokens of one image."""
    return min(settings.num_retain if num_retain is None else num_retain, num_patches)


@dataclasses.dataclass(frozen=True)
class RequestOptions:
    expressions: tuple    # () = none ([CLS]-only selection)
    num_retain: int


def request_options(settings: ServingSettings, kwargs: Mapping[str, object] | None,
                    num_patches: int) -> RequestOptions:
    """The request's expression(s) and budget from its ``mm_processor_kwargs``, validated."""
    from ...selection.text import check_expression

    kwargs = kwargs or {}
    r = kwargs.get(NUM_RETAIN_KEY, None)
    name = f"mm_processor_kwargs.{NUM_RETAIN_KEY}"
    if r is None:
        r = settings.num_retain
    elif isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"{name}: expected an int, got {type(r).__name__} ({r!r})")
    elif not 1 <= r <= settings.num_retain:
        raise ValueError(f"{name}={r} is out of range: expected 1 <= num_retain <= {settings.num_retain} "
                         "(the server's configured num_retain, which the memory profile is for)")
    name = f"mm_processor_kwargs.{EXPRESSION_KEY}"
    e = kwargs.get(EXPRESSION_KEY, None)
    if e is None:
        exprs: tuple = ()
    elif isinstance(e, str):
        exprs = (check_expression(e, name),)
    elif isinstance(e, (list, tuple)):
        exprs = tuple(check_expression(t, f"{name}[{i}]") for i, t in enumerate(e))
    else:
        raise TypeError(f"{name}: expected a str or a list of str, got {type(e).__name__} ({e!r})")
    if not exprs and settings.missing_expressions == "error":
        raise ValueError(f"{name}: this LiteLVLM model needs a referring expression per request: pass "
                         f"mm_processor_kwargs={{\"{EXPRESSION_KEY}\": \"the man on the left\"}} (the server needs "
                         "--trust-request-mm-kwargs), or start it with missing_expressions=\"cls\" for "
                         "[CLS]-only selection")
    kept = kept_per_image(settings, num_patches, r)
    if len(exprs) > kept:
        raise ValueError(f"{name}: {len(exprs)} expressions for {kept} kept tokens per image; each expression "
                         "keeps at least one token, so pass at most num_retain expressions")
    if settings.k_per_text is not None:  # the ops' bound (docs/design.md 2.5), checked before the engine runs
        from ..._validate import min_votes_of

        k = min(settings.k_per_text, num_patches)
        votes = max(1, min_votes_of(settings.multi_text))
        if k * len(exprs) > kept * votes or (min_votes_of(settings.multi_text) == 0 and k > kept):
            raise ValueError(f"{name}: {len(exprs)} expressions x k_per_text={settings.k_per_text} do not fit "
                             f"{kept} kept tokens per image")
    return RequestOptions(expressions=exprs, num_retain=r)


def strip_request_keys(kwargs: Mapping[str, object]) -> dict:
    """The kwargs without ours (what the Hugging Face processor gets)."""
    return {k: v for k, v in kwargs.items() if k not in REQUEST_KEYS}
