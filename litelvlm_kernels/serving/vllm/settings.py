"""The plugin's settings (model config) and per-request options (``mm_processor_kwargs``).

Settings live in the model config under the key ``litelvlm`` (``--hf-overrides`` or config.json)::

    {"architectures": ["LiteLVLMLlavaForConditionalGeneration"],
     "litelvlm": {"scorer": "/path/to/clip-vit-large-patch14-336",   # required ("clip": the old name)
                  "num_retain": 192, "multi_text": "union", "k_per_text": null,
                  "order": "official", "missing_expressions": "error"}}

``scorer`` names the checkpoint the LVLM's vision tower comes from (docs/design.md 11.1): a CLIP
checkpoint for a CLIP tower (its text tower, projections and tokenizer are loaded from it: no LLaVA
checkpoint holds them), the original SigLIP checkpoint for a SigLIP tower (its text tower, pooling head,
post-layernorm and the layers the LVLM dropped). The other keys mean what they mean for
``enable_litelvlm`` (``LiteLVLMSettings``), except ``image_newline``: "all" (the default here) or "none",
the count-stable choices a serving engine needs (docs/design.md 11.4).

Per request (``mm_processor_kwargs``; on the OpenAI-compatible server only with
``--trust-request-mm-kwargs``):

* ``expression``: a str, or a list of str (several texts, combined by ``multi_text``), for every
  image of the request. Missing: an error, or [CLS]-contribution-only selection with
  ``missing_expressions="cls"``.
* ``num_retain``: an int in [1, the configured num_retain] (the memory profile is for the
  configured one, so a request may keep fewer tokens, never more).
* ``retain_ratio``: Qwen2.5-VL / Qwen3-VL only (``qwen_vl.py``, which also gives ``num_retain`` its own
  range there); refused by name for the other families.
* ``report``: a str id (1-128 printable characters): the model appends one JSON line per selected image,
  keyed by it, to ``litelvlm.report_path`` (``report.py``; every family writes them); refused without that
  setting.

Engine keys besides the selection's: ``tower_cache`` (images whose tower states are kept across
expressions, default 32, 0 = off; ``tower_cache.py``), ``tower_batch`` (views per tower call, default the
images stock vLLM encodes in one step) and ``report_path`` (a file the ``report`` records are appended to).

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
RETAIN_RATIO_KEY = "retain_ratio"  # Qwen2.5-VL / Qwen3-VL only (qwen_vl.py); refused by name elsewhere
REPORT_KEY = "report"  # a request's id for its kept-index records (report.py)
REQUEST_KEYS = (EXPRESSION_KEY, NUM_RETAIN_KEY, RETAIN_RATIO_KEY, REPORT_KEY)
_ENGINE_KEYS = ("scorer", "clip", "head_contribution",  # the rest: LiteLVLMSettings' fields, checked by its rules
                "tower_cache", "tower_batch", "report_path")
TOWER_CACHE_DEFAULT = 32  # images (tower_cache.py: about 1.1 MiB each for LLaVA-1.5's ViT-L/14-336 in bf16)


def _selection_keys() -> tuple:
    from ...selection.settings import LiteLVLMSettings

    return tuple(f.name for f in dataclasses.fields(LiteLVLMSettings))


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    """The engine's settings: the scorer checkpoint, the head contribution mode, and the shared selection settings
    (``selection``, a checked ``LiteLVLMSettings``), whose fields read as attributes (``settings.num_retain``)."""

    scorer: str
    selection: Any
    head_contribution: str = "exact"
    tower_cache: int = TOWER_CACHE_DEFAULT  # images (tower_cache.py)
    tower_batch: int | None = None          # views per tower call; None: stock vLLM's encoder step
    report_path: str | None = None          # where the per-request kept-index records go (report.py)

    def __getattr__(self, name: str):  # only for names not found: the selection settings' fields
        if name.startswith("__") or name == "selection":  # (copy / pickle probe an empty instance)
            raise AttributeError(name)
        return getattr(self.selection, name)

    @property
    def clip(self) -> str:  # the settings' old name
        return self.scorer


# a paired scorer's settings (Qwen2.5-VL / Qwen3-VL, qwen_vl.py): a family whose scorer is its own tower refuses them
PAIRED_KEYS = ("retain_ratio", "scorer_min_patches", "scorer_max_patches")


def settings_from_config(hf_config, paired: bool = False) -> ServingSettings:
    """The validated ``litelvlm`` settings of a model config (ValueError / TypeError naming the key); ``paired``:
    the family selects with a paired scorer (``PAIRED_KEYS`` allowed)."""
    from ...selection.settings import LiteLVLMSettings

    raw = getattr(hf_config, CONFIG_KEY, None)
    if raw is None:
        raise ValueError(f"{CONFIG_KEY}: the model config has no {CONFIG_KEY!r} settings; pass them with "
                         f"--hf-overrides '{{\"{CONFIG_KEY}\": {{\"scorer\": \"/path/to/clip\", "
                         f"\"num_retain\": 192}}}}' "
                         "(or add them to config.json)")
    if not isinstance(raw, Mapping):
        raise TypeError(f"{CONFIG_KEY}: expected a dict of settings, got {type(raw).__name__}")
    known = _ENGINE_KEYS + _selection_keys()
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{CONFIG_KEY}: unknown settings {unknown}; known: {list(known)}")
    paired_only = sorted(k for k in PAIRED_KEYS if raw.get(k) is not None) if not paired else []
    if paired_only:
        raise ValueError(f"{CONFIG_KEY}.{paired_only[0]}: a paired scorer's setting (Qwen2.5-VL / Qwen3-VL, whose "
                         f"token count varies with the image); this family keeps num_retain tokens per image or view")
    if "clip" in raw and "scorer" in raw:
        raise ValueError(f"{CONFIG_KEY}: give the checkpoint once, as scorer (clip is its old name)")
    scorer = raw.get("scorer", raw.get("clip"))
    if not isinstance(scorer, str) or not scorer:
        raise ValueError(f"{CONFIG_KEY}.scorer: the checkpoint (a folder or hub id) the LVLM's vision tower comes "
                         f"from, whose text tower, projections and tokenizer LiteLVLM scores with, is required, got "
                         f"{scorer!r}")
    kw = {k: raw[k] for k in _selection_keys() if k in raw}
    kw.setdefault("image_newline", "all")
    try:
        selection = LiteLVLMSettings(**kw).check()  # the transformers front end's rules, one place
    except (TypeError, ValueError) as e:
        raise type(e)(f"{CONFIG_KEY}.{e}") from None
    if kw["image_newline"] == "kept_rows":
        raise ValueError(f"{CONFIG_KEY}.image_newline='kept_rows': the placeholder count would depend on which rows "
                         "keep a token, and vLLM fixes it before the model runs; use 'all' or 'none' "
                         "(docs/design.md 11.4)")
    head = raw.get("head_contribution", "exact")
    if head not in ("exact", "heads"):
        raise ValueError(f"{CONFIG_KEY}.head_contribution must be 'exact' or 'heads', got {head!r}")
    return ServingSettings(scorer=scorer, selection=selection, head_contribution=head, **engine_extras(raw))


def engine_extras(raw: Mapping) -> dict:
    """``tower_cache``, ``tower_batch`` and ``report_path`` of the raw settings, checked (errors name the key)."""
    out = {}
    for key, low in (("tower_cache", 0), ("tower_batch", 1)):
        v = raw.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{CONFIG_KEY}.{key}: expected an int >= {low}, got {v!r}")
        out[key] = v
    path = raw.get("report_path")
    if path is not None:
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"{CONFIG_KEY}.report_path: expected a file path (str), got {path!r}")
        out["report_path"] = path
    return out


def request_report(settings: ServingSettings, kwargs: Mapping[str, object] | None) -> str | None:
    """The request's report id (``mm_processor_kwargs.report``), validated; None for none."""
    rid = (kwargs or {}).get(REPORT_KEY)
    if rid is None:
        return None
    name = f"mm_processor_kwargs.{REPORT_KEY}"
    if not isinstance(rid, str):
        raise TypeError(f"{name}: expected a str id, got {type(rid).__name__} ({rid!r})")
    if not 1 <= len(rid) <= 128 or not rid.isprintable():
        raise ValueError(f"{name}: expected 1 to 128 printable characters, got {rid!r}")
    if settings.report_path is None:
        raise ValueError(f"{name}: this engine writes no reports; start it with {CONFIG_KEY}.report_path set "
                         "(the file the records are appended to)")
    return rid


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
    kwargs = kwargs or {}
    if kwargs.get(RETAIN_RATIO_KEY) is not None:
        raise ValueError(f"mm_processor_kwargs.{RETAIN_RATIO_KEY}: only Qwen2.5-VL / Qwen3-VL (whose token count "
                         f"varies with the image size) take a ratio; pass {NUM_RETAIN_KEY} instead")
    r = kwargs.get(NUM_RETAIN_KEY, None)
    name = f"mm_processor_kwargs.{NUM_RETAIN_KEY}"
    if r is None:
        r = settings.num_retain
    elif isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"{name}: expected an int, got {type(r).__name__} ({r!r})")
    elif not 1 <= r <= settings.num_retain:
        raise ValueError(f"{name}={r} is out of range: expected 1 <= num_retain <= {settings.num_retain} "
                         "(the server's configured num_retain, which the memory profile is for)")
    exprs = request_expressions(settings, kwargs)
    check_texts_fit(settings, exprs, kept_per_image(settings, num_patches, r), num_patches)
    return RequestOptions(expressions=exprs, num_retain=r)


def request_expressions(settings: ServingSettings, kwargs: Mapping[str, object]) -> tuple:
    """The request's expression(s) (``mm_processor_kwargs.expression``), validated; () for none."""
    from ...selection.text import check_expression

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
    return exprs


def check_texts_fit(settings: ServingSettings, exprs: tuple, kept: int, num_patches: int) -> None:
    """Each expression keeps at least one of an image's ``kept`` tokens (of ``num_patches``), and ``k_per_text``
    must fit them: a ValueError naming ``mm_processor_kwargs.expression`` otherwise (before the engine runs)."""
    name = f"mm_processor_kwargs.{EXPRESSION_KEY}"
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


def strip_request_keys(kwargs: Mapping[str, object]) -> dict:
    """The kwargs without ours (what the Hugging Face processor gets)."""
    return {k: v for k, v in kwargs.items() if k not in REQUEST_KEYS}
