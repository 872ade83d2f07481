"""Patching a stock Hugging Face LVLM so its LLM sees only the kept visual tokens.

The family-independent part. A family file (``llava.py`` ...) says how many
placeholders each image / video takes in the stock model and computes the
kept LLM inputs of each; this module does the rest, the same way for all:

1. find each item's run of placeholder tokens in ``input_ids`` (items take
   placeholders in row-major order, as ``masked_scatter`` fills them), check
   the count is exact, and map each item to its prompt (row) for its
   referring expressions;
2. compute the kept features of every item (the family's ``visual_features``);
3. shrink each run from the stock count to the kept count, re-pad the rows
   (``attention_mask``, ``position_ids`` renumbered, ``labels`` with -100,
   ``token_type_ids``: ``inputs.PER_TOKEN``);
4. embed the shrunk ids and write the features into the placeholder rows,
   then call the stock ``forward`` / ``generate`` with ``inputs_embeds``.

Because ``generate`` starts from the shrunk ids, its attention mask, cache
positions and KV cache are consistent from the first step; the ids it returns
are re-expanded to the caller's prompt + the new tokens, so
``out[:, inputs["input_ids"].shape[1]:]`` keeps working. Only bound methods
of the instance are replaced (``forward``, ``generate``; and, where its
signature hides ``inputs_embeds``, ``prepare_inputs_for_generation``, see
``_names_inputs_embeds``): ``disable`` deletes them, and weights and config
are never touched.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import threading
import types
from typing import Any

import torch

from .._validate import min_votes_of
from ._copy import deepcopy_fields
from ._towers import config_get, find_tower, model_part
from .generation import (
    CONTINUED_FIELDS,
    CallerIds,
    PrefixRecord,
    cache_of,
    cached_length,
    caller_view_kwargs,
    continue_fields,
    continue_ids,
    expressions_key,
    length_overrides,
    record_of,
    tag,
)
from .inputs import check_inputs, pixel_keys, prepare_inputs
from .pruner import LiteLVLMPruner
from .siglip import is_siglip_tower
from .text import SIMILARITY_KEEP

__all__ = ["FamilyAdapter", "LiteLVLMSettings", "disable_litelvlm", "enable_litelvlm", "register_adapter"]

# model_type -> adapter class; filled by the family modules listed below (imported on first use).
_ADAPTERS: dict = {}
_FAMILY_MODULES = ("llava", "llava_next", "llava_next_video", "llava_onevision", "paligemma")


def register_adapter(cls):
    """Class decorator: handle every ``config.model_type`` in ``cls.model_types``."""
    for t in cls.model_types:
        _ADAPTERS[t] = cls
    return cls


def _adapter_for(model) -> type:
    for name in _FAMILY_MODULES:
        importlib.import_module(f".{name}", __package__)
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in _ADAPTERS:
        raise TypeError(f"model: {type(model).__name__} (model_type={mt!r}) is not supported; supported "
                        f"model types: {', '.join(sorted(_ADAPTERS))}")
    return _ADAPTERS[mt]


_CHOICES = {"order": ("official", "spatial"), "missing_expressions": ("error", "cls"),
            "similarity_keep": SIMILARITY_KEEP,
            "budget": ("per_tile", "global"), "image_newline": ("kept_rows", "all", "none"),
            "video_budget": ("per_frame", "per_clip")}


@dataclasses.dataclass
class LiteLVLMSettings:
    """What to keep. ``num_retain``: visual tokens kept per image (LLaVA-1.5), per tile or image
    (LLaVA-NeXT, see ``budget``), per frame or clip (video, see ``video_budget``)."""

    num_retain: int = 192
    multi_text: Any = "union"
    k_per_text: int | None = None
    order: str = "official"
    missing_expressions: str = "error"
    budget: str = "per_tile"
    image_newline: str = "kept_rows"
    video_budget: str = "per_frame"
    similarity_keep: str = "lowest"  # the paper's CLIP finding; unverified for SigLIP (docs/design.md section 10)

    def check(self) -> LiteLVLMSettings:
        r = self.num_retain
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"num_retain must be an int, got {type(r).__name__}")
        if r <= 0:
            raise ValueError(f"num_retain must be > 0, got {r}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        min_votes_of(self.multi_text)  # the library's one rule for multi_text
        if self.k_per_text is not None and (isinstance(self.k_per_text, bool) or not isinstance(self.k_per_text, int)
                                            or self.k_per_text <= 0):
            raise ValueError(f"k_per_text must be None or an int > 0, got {self.k_per_text!r}")
        return self


@dataclasses.dataclass
class Modality:
    """One kind of visual input of a family: its pixels argument, placeholder id and the family's two functions."""

    pixel_key: str
    token_id: int
    extra_keys: tuple            # forward arguments that only describe the pixels (image_sizes): dropped
    stock_counts: Any            # (kwargs) -> list[int]: placeholders per item in the stock model
    features: Any                # (kwargs, text_condition) -> (list[Tensor [n_i, H]] in placeholder order,
    #                              list (per item) of lists (per view) of view_reports dicts)
    pixel_dims: tuple = (4,)     # accepted pixel tensor ranks ([N, C, H, W]; 5 for views / frames)


class FamilyAdapter:
    """Base of the family files. Subclasses set ``model_types`` and implement ``modalities``."""

    model_types: tuple = ()

    def __init__(self, model, pruner: LiteLVLMPruner, settings: LiteLVLMSettings):
        self.model, self.pruner, self.settings = model, pruner, settings
        self.check_model()

    def check_model(self) -> None:
        """Raise ValueError naming the config field this adapter cannot handle."""

    def modalities(self) -> list:
        raise NotImplementedError

    def text_condition(self, expressions: list):
        """One text group per item: [[str, ...], ...] -> TextCondition (cached by content)."""
        return self.pruner.prepare_text(texts=[list(e) for e in expressions],
                                        similarity_keep=self.settings.similarity_keep)

    @staticmethod
    def select_layer_of(model) -> int:
        """The config's ``vision_feature_layer`` (LLaVA: -2); one layer only."""
        layer = config_get(model.config, "vision_feature_layer", default=-2)
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"vision_feature_layer={layer!r}: only one feature layer (an int) is supported")
        return layer

    def strategy(self) -> str:
        """``vision_feature_select_strategy``: "default" drops [CLS], "full" keeps it as a token."""
        st = config_get(self.model.config, "vision_feature_select_strategy", default="default")
        if st not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy={st!r} is not supported (default or full)")
        return st


# --------------------------------------------------------------------------- patching


class LiteLVLMPatch:
    """The handle returned by ``enable_litelvlm``: ``disable()``, context manager, ``settings``, ``last_report``.

    Safe to share between threads for inference, like the stock model: nothing per call is stored on the
    model or the patch except ``last_report``, which is per thread (each thread reads its own last call's).
    """

    def __init__(self, model, adapter: FamilyAdapter):
        self.model, self.adapter = model, adapter
        self.settings = adapter.settings
        self._local = threading.local()
        # an instance-level forward / generate (accelerate's hooks set one) is kept and restored by disable()
        self._methods = ("forward", "generate") + (() if _names_inputs_embeds(model) else
                                                   ("prepare_inputs_for_generation",))
        self._saved = {n: model.__dict__[n] for n in self._methods if n in model.__dict__}
        self._orig_forward = model.forward
        self._orig_generate = model.generate
        self._forward_sig = inspect.signature(self._orig_forward)
        self._generate_sig = inspect.signature(self._orig_generate)
        model.forward = _patched_method(model, self._orig_forward, "_forward")
        model.generate = _patched_method(model, self._orig_generate, "_generate")
        if "prepare_inputs_for_generation" in self._methods:
            model.prepare_inputs_for_generation = types.MethodType(_prepare_inputs_for_generation, model)
        model._litelvlm_patch = self

    @property
    def enabled(self) -> bool:
        return getattr(self.model, "_litelvlm_patch", None) is self

    @property
    def last_report(self) -> dict | None:
        """The calling thread's last pruned call: per modality ``stock`` / ``kept`` placeholder counts and
        ``views`` (per item, per view: ``indices``, ``from_similarity``, ``grid``, for ``viz.save_kept_tokens``),
        and ``rows`` (visual and total tokens per prompt, before and after)."""
        return getattr(self._local, "report", None)

    @last_report.setter
    def last_report(self, report: dict | None) -> None:
        self._local.report = report

    def __deepcopy__(self, memo):
        """``copy.deepcopy(model)`` gives a model patched on its own weights: every module reference goes
        through ``memo`` (the copy's tower, projector, embeddings); the per-thread reports start empty."""
        return deepcopy_fields(self, memo, keep=("_forward_sig", "_generate_sig"),  # signatures are immutable
                               fresh={"_local": lambda _: threading.local()})

    def _modalities_present(self, kwargs) -> list:
        return [m for m in self.adapter.modalities() if kwargs.get(m.pixel_key) is not None]

    def _record(self, kwargs: dict, new: dict, expressions) -> PrefixRecord:
        # references on the tensors' own device (no device-to-host copy per call); compared only when a later
        # turn passes the cache back
        ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        return PrefixRecord(
            caller_ids=ids.detach(), caller_mask=(torch.ones_like(ids) if mask is None else mask).detach(),
            shrunk_ids=new["input_ids"].detach(), shrunk_mask=new["attention_mask"].detach(),
            expressions=expressions_key(expressions),
            pixels={m.pixel_key: kwargs[m.pixel_key] for m in self._modalities_present(kwargs)},
            fields={k: (kwargs[k].detach(), new[k].detach()) for k in CONTINUED_FIELDS if kwargs.get(k) is not None})

    def _forward(self, *args, **kwargs):
        expressions = kwargs.pop("referring_expressions", None)
        kwargs = _bind(self._forward_sig, args, kwargs)
        if not self._modalities_present(kwargs):
            return self._orig_forward(**kwargs)
        cache_key, cache = cache_of(kwargs)
        if cached_length(cache) > 0:
            raise ValueError(f"{cache_key}: forward() with pixel inputs and a filled cache is not supported while "
                             "LiteLVLM is enabled; use generate(), which continues a cache from a pruned turn")
        check_inputs(self.adapter, kwargs)
        self.settings.check()
        new, new_ids, self.last_report = prepare_inputs(self.adapter, kwargs, expressions)
        out = self._orig_forward(**new)
        tag(cache if cache is not None else getattr(out, "past_key_values", None),
            self._record(kwargs, dict(new, input_ids=new_ids), expressions))
        return out

    def _generate(self, *args, **kwargs):
        expressions = kwargs.pop("referring_expressions", None)
        kw = _bind(self._generate_sig, args, kwargs)
        inputs = kw.pop("inputs", None)
        if inputs is not None:
            if kw.get("input_ids") is not None:
                raise ValueError("inputs: given together with input_ids; pass the prompt once")
            kw["input_ids"] = inputs
        cache_key, cache = cache_of(kw)
        cached = cached_length(cache) > 0
        record = record_of(cache) if cached else None
        present = self._modalities_present(kw)
        if not present and record is None:
            return self._orig_generate(**kw)  # no image in this call and no pruned prefix behind it: stock
        if cached and record is None:
            raise ValueError(f"{cache_key}: this cache was not filled by a LiteLVLM-pruned prefill, so it cannot "
                             f"be mapped onto a pruned prompt; drop {cache_key} (or pass the cache that the "
                             "enabled model's generate() returned)")
        if kw.get("assistant_model") is not None:
            raise ValueError("assistant_model: assisted generation is not supported on a pruned prompt (the "
                             "assistant would see the shrunk placeholder run); disable LiteLVLM for it")
        check_inputs(self.adapter, kw)
        self.settings.check()
        caller_ids = kw["input_ids"]
        if record is not None:
            if kw.get("position_ids") is not None:
                raise ValueError("position_ids: not supported when continuing a pruned cache (they would count "
                                 "the dropped placeholders); leave them to generate()")
            pixels = {m.pixel_key: kw[m.pixel_key] for m in present}
            new = {k: v for k, v in kw.items() if k not in pixel_keys(self.adapter)}
            new["input_ids"], new["attention_mask"] = continue_ids(
                record, caller_ids, kw.get("attention_mask"), [m.token_id for m in self.adapter.modalities()],
                pixels, expressions, cache_key)
            new.update(continue_fields(record, kw))  # token_type_ids: the shrunk prefill's, then the new tokens'
        else:
            new, new_ids, self.last_report = prepare_inputs(self.adapter, kw, expressions)
            new["input_ids"] = new_ids  # generate takes both: embeddings for the prefill, ids for the output
            record = self._record(kw, new, expressions)
            tag(cache, record)  # a passed, empty cache is filled in place
        shrunk_len = new["input_ids"].shape[1]
        view = CallerIds(caller_ids, shrunk_len)
        new.update(length_overrides(self.model, new, caller_ids.shape[1] - shrunk_len))
        new.update(caller_view_kwargs(new, view))
        out = self._orig_generate(**new)
        tag(getattr(out, "past_key_values", None), record)
        return _reexpand(out, view)

    def disable(self) -> None:
        """Undo ``enable_litelvlm``: the model's own ``forward`` / ``generate`` again."""
        if not self.enabled:
            return
        for name in (*self._methods, "_litelvlm_patch"):
            self.model.__dict__.pop(name, None)
        self.model.__dict__.update(self._saved)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disable()


def _bind(sig: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """Positional and keyword arguments of a call as one dict by name (the **kwargs part flattened in)."""
    try:
        bound = dict(sig.bind_partial(*args, **kwargs).arguments)
    except TypeError as exc:
        raise TypeError(f"{exc} (the stock signature is {sig})") from None
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(p.name, {}))
    return bound


def _patched_method(model, orig, name: str):
    """A method bound to ``model`` that calls its patch's ``name``, with ``orig``'s signature.

    ``inspect.signature(model.forward)`` must stay the stock one: generate() reads it to decide what to pass
    (logits_to_keep, position_ids, attention_mask). The function reaches the patch through its first argument
    (never a closure over the model), so ``copy.deepcopy(model)`` binds the copy to the copy's own patch.
    """
    def method(self, *args, **kwargs):
        return getattr(self._litelvlm_patch, name)(*args, **kwargs)

    sig = inspect.signature(orig)
    method.__signature__ = sig.replace(
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY), *sig.parameters.values()])
    method.__name__ = getattr(orig, "__name__", name)
    method.__doc__ = getattr(orig, "__doc__", None)
    return types.MethodType(method, model)


def _names_inputs_embeds(model) -> bool:
    """Whether generate() accepts ``inputs_embeds`` for ``model``: it checks that its
    ``prepare_inputs_for_generation`` names the parameter. transformers 5's PaliGemma declares
    ``(input_ids, **kwargs)`` and passes ``inputs_embeds`` on to the base method, which uses it: refused by
    the check only."""
    try:
        params = inspect.signature(model.prepare_inputs_for_generation).parameters
    except (AttributeError, TypeError, ValueError):
        return True
    return "inputs_embeds" in params or not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
    """The class's own method, with ``inputs_embeds`` named (``_names_inputs_embeds``); reached through the
    instance's class (no closure over the model), so ``copy.deepcopy(model)`` binds the copy."""
    return type(self).prepare_inputs_for_generation(self, input_ids, inputs_embeds=inputs_embeds, **kwargs)


def _reexpand(out, view: CallerIds):
    """Generated sequences start with the shrunk prompt: put the caller's prompt back in front."""
    if isinstance(out, torch.Tensor):
        return view(out)
    out.sequences = view(out.sequences)
    return out


def enable_litelvlm(model, text_model=None, tokenizer=None, *, visual_projection=None,
                    pruner: LiteLVLMPruner | None = None, vision_head=None, head_contribution: str = "exact",
                    **settings) -> LiteLVLMPatch:
    """Make ``model.forward`` / ``model.generate`` feed the LLM only the tokens LiteLVLM keeps.

    Parameters
    ----------
    model : transformers model
        ``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``,
        ``LlavaNextVideoForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration`` or
        ``PaliGemmaForConditionalGeneration`` (matched by ``config.model_type``).
    text_model, tokenizer, visual_projection
        The CLIP text tower (CLIPModel or CLIPTextModelWithProjection), its tokenizer and the
        CLIP ``visual_projection`` of the checkpoint whose vision tower the LVLM uses (LLaVA
        checkpoints hold neither). For a SigLIP tower: the original SigLIP checkpoint as a
        SiglipModel (its text tower, pooling head, post-layernorm and any layers the LVLM's tower
        dropped are used) and its tokenizer. Or pass a ready ``pruner=LiteLVLMPruner(...)``.
    vision_head, head_contribution
        SigLIP only, as ``LiteLVLMPruner``.
    **settings
        ``LiteLVLMSettings`` fields: ``num_retain`` (192), ``multi_text``, ``k_per_text``,
        ``order``, ``missing_expressions`` ("error" or "cls"), ``budget`` ("per_tile" or
        "global", LLaVA-NeXT), ``image_newline``, ``video_budget`` ("per_frame" or "per_clip"),
        ``similarity_keep`` ("lowest", the paper's rule, or "highest").

    Returns
    -------
    LiteLVLMPatch
        ``.disable()`` undoes it; also a context manager. ``.last_report``: placeholder and
        token counts of the last call.

    Examples
    --------
    >>> with enable_litelvlm(llava, clip, clip_tok, num_retain=192):                   # doctest: +SKIP
    ...     out = llava.generate(**inputs, referring_expressions=[["the man on the left"]])
    """
    if getattr(model, "_litelvlm_patch", None) is not None:
        raise ValueError("model: LiteLVLM is already enabled on this model; disable it first")
    cls = _adapter_for(model)
    s = LiteLVLMSettings(**settings).check()
    if pruner is None:
        vision = model_part(model, "vision_tower")
        if visual_projection is None and not is_siglip_tower(find_tower(vision, "vision")):
            # a CLIPModel as text_model carries the projection too (a SigLIP tower has none to take)
            visual_projection = getattr(text_model, "visual_projection", None)
        pruner = LiteLVLMPruner(vision, text_model, tokenizer, visual_projection=visual_projection,
                                select_layer=cls.select_layer_of(model), vision_head=vision_head,
                                head_contribution=head_contribution)
    elif vision_head is not None or head_contribution != "exact":
        raise ValueError("vision_head / head_contribution: set them on the pruner you pass (pruner=)")
    return LiteLVLMPatch(model, cls(model, pruner, s))


def disable_litelvlm(model) -> None:
    """Undo ``enable_litelvlm`` on ``model`` (no-op if it is not enabled)."""
    patch = getattr(model, "_litelvlm_patch", None)
    if patch is not None:
        patch.disable()
