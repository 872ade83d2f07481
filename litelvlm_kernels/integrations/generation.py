"""``generate()`` on a shrunk prompt, with every argument meaning what it means on the caller's prompt.

The stock ``generate`` runs on the shrunk ids (fewer placeholders), so whatever
reads the prompt's length or its ids would see another prompt than the
caller's. This module translates, in both directions:

* lengths: an explicit ``max_length`` / ``min_length`` (in the call, in a
  ``generation_config`` passed by keyword or position, or in the model's own
  ``generation_config``) counts the caller's prompt, so it is lowered by the
  number of placeholders dropped; ``max_new_tokens`` / ``min_new_tokens`` need
  nothing;
* ids seen by the caller's callables: stopping criteria, logits processors,
  ``prefix_allowed_tokens_fn`` and the streamer's first ``put`` (the prompt)
  get the caller's prompt followed by the new tokens (``CallerIds``);
* caches: a cache filled by a pruned prefill holds the shrunk prompt. It is
  tagged with a ``PrefixRecord``; a later turn that passes it back is mapped
  onto the shrunk prompt (``continue_ids``), which equals recomputing the
  whole conversation with the same images and expressions, or is refused with
  an error naming the argument that does not match.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch

try:  # the base classes only mark the wrappers for readers and type checks; transformers 4.45+ has all three
    from transformers import LogitsProcessor, StoppingCriteria
    from transformers.generation.streamers import BaseStreamer
except ImportError:  # pragma: no cover - integrations.hf already requires transformers
    LogitsProcessor = StoppingCriteria = BaseStreamer = object

CACHE_KEYS = ("past_key_values", "cache")  # transformers 5.2x renames past_key_values -> cache in generate()
# per-token arguments besides the mask that a later turn continues (its prefix part taken from the shrunk prefill)
CONTINUED_FIELDS = ("token_type_ids", "mm_token_type_ids")
_RECORD_ATTR = "_litelvlm_prefix"


# --------------------------------------------------------------------------- lengths


def _resolved(name: str, kwargs: dict, generation_config, model) -> Any:
    """The value generate() will use for ``name``: the call's, else the passed config's, else the model's."""
    for source in (kwargs, generation_config, getattr(model, "generation_config", None)):
        if source is None:
            continue
        value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
        if value is not None:
            return value, source is kwargs
    return None, False


def resolved(name: str, kwargs: dict, model):
    """The value generate() will use for ``name`` (the call's, the passed generation_config's, the model's)."""
    return _resolved(name, kwargs, kwargs.get("generation_config"), model)[0]


def length_overrides(model, kwargs: dict, dropped: int) -> dict:
    """``max_length`` / ``min_length`` lowered by ``dropped`` when they are explicit (not the library default)."""
    try:
        from transformers import GenerationConfig
        defaults = GenerationConfig()
    except ImportError:  # pragma: no cover
        defaults = None
    config = kwargs.get("generation_config")
    out = {}
    for total, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
        if _resolved(new, kwargs, config, model)[0] is not None:
            continue  # counted from the prompt's end: the same on both prompts
        value, from_call = _resolved(total, kwargs, config, model)
        if value is None or (not from_call and value == getattr(defaults, total, None)):
            continue  # transformers' own default ("20 new tokens" in 4.x): it counts new tokens already
        out[total] = max(int(value) - dropped, 0)
    return out


# --------------------------------------------------------------------------- the caller's view of the ids


class CallerIds:
    """Maps generate()'s ids (shrunk prompt + new tokens) to the caller's (their prompt + the same new tokens)."""

    def __init__(self, caller_prompt: torch.Tensor, shrunk_len: int):
        self.prompt, self.shrunk_len = caller_prompt, shrunk_len

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        rep = ids.shape[0] // self.prompt.shape[0]  # beams / num_return_sequences expand each row in place
        prompt = self.prompt.to(ids.device).repeat_interleave(rep, 0)
        return torch.cat([prompt, ids[:, self.shrunk_len:]], 1)

    def row(self, batch_id: int, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.prompt[batch_id].to(ids.device), ids[self.shrunk_len:]])


class _CriterionOnCallerIds(StoppingCriteria):
    def __init__(self, inner, view: CallerIds):
        self.inner, self.view = inner, view

    def __call__(self, input_ids, scores, **kwargs):
        return self.inner(self.view(input_ids), scores, **kwargs)


class _ProcessorOnCallerIds(LogitsProcessor):
    # Two parameters exactly: LogitsProcessorList passes extra kwargs only to processors that declare them.
    def __init__(self, inner, view: CallerIds):
        self.inner, self.view = inner, view

    def __call__(self, input_ids, scores):
        return self.inner(self.view(input_ids), scores)


class _StreamerOnCallerIds(BaseStreamer):
    """The first ``put`` is the prompt: the caller's, not the shrunk one (TextStreamer prints or skips it)."""

    def __init__(self, inner, view: CallerIds):
        self.inner, self.view, self.first = inner, view, True

    def put(self, value):
        if self.first:
            self.first = False
            value = self.view(value)  # the shrunk prompt alone: the caller's prompt, once per row / beam
        self.inner.put(value)

    def end(self):
        self.inner.end()


def _takes_only_ids_and_scores(fn) -> bool:
    try:
        return len(inspect.signature(fn).parameters) <= 2
    except (TypeError, ValueError):
        return True


def caller_view_kwargs(kwargs: dict, view: CallerIds) -> dict:
    """The generate() arguments whose callables read ids, wrapped to read the caller's ids."""
    out = {}
    if kwargs.get("stopping_criteria") is not None:
        out["stopping_criteria"] = type(kwargs["stopping_criteria"])(
            _CriterionOnCallerIds(c, view) for c in kwargs["stopping_criteria"])
    if kwargs.get("logits_processor") is not None:
        # a processor that declares extra keyword arguments keeps its own signature (and sees the shrunk ids)
        out["logits_processor"] = type(kwargs["logits_processor"])(
            _ProcessorOnCallerIds(p, view) if _takes_only_ids_and_scores(p) else p
            for p in kwargs["logits_processor"])
    fn = kwargs.get("prefix_allowed_tokens_fn")
    if fn is not None:
        out["prefix_allowed_tokens_fn"] = lambda batch_id, sent: fn(batch_id, view.row(batch_id, sent))
    if kwargs.get("streamer") is not None:
        out["streamer"] = _StreamerOnCallerIds(kwargs["streamer"], view)
    return out


# --------------------------------------------------------------------------- caches across turns


@dataclasses.dataclass
class PrefixRecord:
    """What a pruned prefill put in a cache: the caller's prompt and mask, the shrunk ones, and the selection's
    inputs (expressions per prompt, pixel tensors), so a later turn can be checked against them."""

    caller_ids: torch.Tensor
    caller_mask: torch.Tensor
    shrunk_ids: torch.Tensor
    shrunk_mask: torch.Tensor
    expressions: tuple
    pixels: dict
    # the other per-token arguments of the prefill (CONTINUED_FIELDS: token_type_ids): name -> (caller's, shrunk)
    fields: dict = dataclasses.field(default_factory=dict)
    # model state the next turn needs (``FamilyAdapter.prefix_state``: Qwen's rope_deltas of the pruned prefill)
    state: dict = dataclasses.field(default_factory=dict)


def cache_of(kwargs: dict):
    for k in CACHE_KEYS:
        if kwargs.get(k) is not None:
            return k, kwargs[k]
    return None, None


def output_cache(out):
    """The cache a model output carries: ``cache`` (transformers 5.2x) or ``past_key_values`` (earlier), read by
    its field so 5.2x's deprecation warning on the old name never fires."""
    fields = getattr(type(out), "__dataclass_fields__", {})
    for k in CACHE_KEYS:
        if k in fields:
            return getattr(out, k)
    return None


def cached_length(cache) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    try:  # legacy tuple of (key, value) per layer
        return int(cache[0][0].shape[-2]) if len(cache) else 0
    except (TypeError, IndexError, AttributeError):
        return 0


def _carrier(cache):
    """The object that carries a cache's record: a Cache object itself; for a legacy tuple cache (what
    transformers 4.4x return), its first key tensor (tensors take attributes and deepcopy keeps them)."""
    if cache is None or hasattr(cache, "get_seq_length"):
        return cache
    try:
        return cache[0][0]
    except (TypeError, IndexError, KeyError):
        return None


def tag(cache, record: PrefixRecord) -> None:
    carrier = _carrier(cache)
    if carrier is not None:
        try:
            setattr(carrier, _RECORD_ATTR, record)
        except (AttributeError, TypeError):  # cannot carry it: a later turn with this cache is then refused
            pass


def record_of(cache) -> PrefixRecord | None:
    return getattr(_carrier(cache), _RECORD_ATTR, None)


def expressions_key(expressions) -> tuple:
    """Per-prompt expressions as a comparable tuple (str -> (str,), None -> ())."""
    if expressions is None:
        return ()
    if isinstance(expressions, str):
        expressions = [expressions]
    return tuple(() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in expressions)


def continue_ids(record: PrefixRecord, ids: torch.Tensor, mask, placeholder_ids: list, pixels: dict,
                 expressions, cache_key: str) -> tuple:
    """(ids, mask) on the shrunk prompt for a turn that reuses ``record``'s cache, or a named error."""
    B, Lc = record.caller_ids.shape
    if ids.shape[0] != B or ids.shape[1] < Lc or not torch.equal(ids[:, :Lc], record.caller_ids.to(ids.device)):
        raise ValueError(f"{cache_key}: this cache holds the pruned prefill of another prompt; input_ids must start "
                         f"with that prompt ({B} x {Lc} tokens, as the earlier generate() returned them), or drop "
                         f"{cache_key} to prefill from scratch")
    if mask is None:
        mask = torch.ones_like(ids)
    if not torch.equal(mask[:, :Lc].to(record.caller_mask.dtype), record.caller_mask.to(mask.device)):
        raise ValueError(f"attention_mask: differs from the cached prompt's over its first {Lc} positions")
    tail = ids[:, Lc:]
    if any(bool((tail == t).any()) for t in placeholder_ids):
        raise ValueError(f"{cache_key}: new images after a cached pruned prefix are not supported; generate "
                         f"without {cache_key} (the whole conversation is pruned and prefilled again)")
    for key, px in pixels.items():
        old = record.pixels.get(key)
        if old is None or old.shape != px.shape or not torch.equal(old, px.to(old.device, old.dtype)):
            raise ValueError(f"{key}: differs from the images the cached prefix was pruned with; drop "
                             f"{cache_key} to prune the new images")
    if expressions is not None and expressions_key(expressions) != record.expressions:
        raise ValueError(f"referring_expressions: the cache holds the selection made for {record.expressions}; a "
                         f"new expression needs a new selection: drop {cache_key}")
    dev = ids.device
    new_ids = torch.cat([record.shrunk_ids.to(dev), tail], 1)
    new_mask = torch.cat([record.shrunk_mask.to(dev, mask.dtype), mask[:, Lc:]], 1)
    return new_ids, new_mask


def continue_fields(record: PrefixRecord, kwargs: dict) -> dict:
    """The per-token arguments of ``CONTINUED_FIELDS`` given to a turn that reuses ``record``'s cache, on the shrunk
    prompt: the prefill's shrunk values, then the caller's values of the new tokens; a named error when the
    caller's values over the cached prompt differ from those the cache was prefilled with."""
    Lc = record.caller_ids.shape[1]
    out = {}
    for name in CONTINUED_FIELDS:
        given = kwargs.get(name)
        if given is None:
            continue  # as the stock generate without it: the new tokens are computed causally on the cache
        caller, shrunk = record.fields.get(name, (None, None))
        if caller is None:
            raise ValueError(f"{name}: the cached prompt was prefilled without {name}; pass none, or drop the cache "
                             "to prefill again with them")
        if not torch.equal(given[:, :Lc], caller.to(given.device, given.dtype)):
            raise ValueError(f"{name}: differs from the cached prompt's over its first {Lc} positions")
        out[name] = torch.cat([shrunk.to(given.device, given.dtype), given[:, Lc:]], 1)
    return out
