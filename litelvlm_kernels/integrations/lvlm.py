"""Patching a stock Hugging Face LVLM so its LLM sees only the kept visual tokens.

The family-independent part. A family file (``llava.py`` ...) says how many
placeholders each image / video takes in the stock model and computes the
kept LLM inputs of each; this module does the rest, the same way for all:

1. find each item's run of placeholder tokens in ``input_ids`` (items take
   placeholders in row-major order, as ``masked_scatter`` fills them), check
   the count is exact, and map each item to its prompt (row) for its
   referring expressions;
2. compute the kept features of every item (the family's ``visual_features``);
3. shrink each run from the stock count to the kept count; every row loses
   its own dropped placeholders and nothing else, the caller's padding stays
   (``attention_mask``, ``position_ids`` renumbered, ``labels`` /
   ``shift_labels`` and ``token_type_ids`` follow: ``prompt.shrink``);
4. embed the shrunk ids and write the features into the placeholder rows,
   then call the stock ``forward`` / ``generate`` with ``inputs_embeds``, and
   put the vision outputs the stock model returns on its output
   (``vision_outputs.py``).

Because ``generate`` starts from the shrunk ids, its attention mask, cache
positions and KV cache are consistent from the first step; the ids it returns
are re-expanded to the caller's prompt + the new tokens, so
``out[:, inputs["input_ids"].shape[1]:]`` keeps working. ``generate`` without a
cache (``use_cache=False``) recomputes the whole sequence at every step, as the
stock one does: it runs the stock loop on the caller's inputs and every step's
forward is pruned. Only bound methods
of the instance are replaced (``forward``, ``generate``; and, where its
signature hides ``inputs_embeds``, ``prepare_inputs_for_generation``, see
``_names_inputs_embeds``): ``disable`` deletes them, and weights and config
are never touched.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import types

import torch

from .._copy import deepcopy_fields
from .adapter import FamilyAdapter, LiteLVLMSettings, adapter_for, register_adapter
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
    output_cache,
    record_of,
    resolved,
    tag,
)
from .inputs import check_inputs, pixel_keys
from .prompt import prepare_inputs
from .pruner import LiteLVLMPruner
from .vision_outputs import attach

__all__ = ["FamilyAdapter", "LiteLVLMSettings", "disable_litelvlm", "enable_litelvlm", "register_adapter"]

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
        # a base model (LlavaModel) has no generate; an instance-level forward / generate (accelerate's hooks set
        # one) is kept and restored by disable()
        can_generate = callable(getattr(model, "generate", None))
        self._methods = ("forward",) + (("generate",) if can_generate else ()) + (
            () if not can_generate or _names_inputs_embeds(model) else ("prepare_inputs_for_generation",))
        self._saved = {n: model.__dict__[n] for n in self._methods if n in model.__dict__}
        self._orig_forward = model.forward
        self._orig_generate = model.generate if can_generate else None
        self._forward_sig = inspect.signature(self._orig_forward)
        self._generate_sig = inspect.signature(self._orig_generate) if can_generate else None
        model.forward = _patched_method(model, self._orig_forward, "_forward")
        if can_generate:
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

    def _record(self, kwargs: dict, new: dict, expressions) -> PrefixRecord | None:
        # references on the tensors' own device (no device-to-host copy per call); compared only when a later
        # turn passes the cache back. None without input_ids (a prompt given as inputs_embeds cannot be matched).
        ids = kwargs.get("input_ids")
        if ids is None:
            return None
        mask = kwargs.get("attention_mask")
        shrunk_mask = new.get("attention_mask")
        return PrefixRecord(
            caller_ids=ids.detach(), caller_mask=(torch.ones_like(ids) if mask is None else mask).detach(),
            shrunk_ids=new["input_ids"].detach(),
            shrunk_mask=(torch.ones_like(new["input_ids"]) if shrunk_mask is None else shrunk_mask).detach(),
            expressions=expressions_key(expressions),
            pixels={m.pixel_key: kwargs[m.pixel_key] for m in self._modalities_present(kwargs)},
            fields={k: (kwargs[k].detach(), new[k].detach()) for k in CONTINUED_FIELDS if kwargs.get(k) is not None},
            state=self.adapter.prefix_state())

    @contextlib.contextmanager
    def _thread_state(self, name: str, value):
        """This thread's ``name`` set to ``value`` for the duration of a stock generate() call: ``expressions``
        (use_cache=False: the stock loop calls the patched forward once per step, without them) or
        ``in_generate`` (its forwards may carry the pruned ``mm_encoder_outputs`` it was given)."""
        before = getattr(self._local, name, None)
        setattr(self._local, name, value)
        try:
            yield
        finally:
            setattr(self._local, name, before)

    def _wants_tuple(self, kwargs: dict) -> bool:
        rd = kwargs.get("return_dict")
        if rd is None:
            rd = getattr(self.model.config, "return_dict", True)
        return rd is False

    def _forward(self, *args, **kwargs):
        expressions = kwargs.pop("referring_expressions", None)
        if expressions is None:
            expressions = getattr(self._local, "expressions", None)
        kwargs = _bind(self._forward_sig, args, kwargs)
        _refuse_encoded(kwargs, getattr(self._local, "in_generate", None))
        if not self._modalities_present(kwargs):
            return self._orig_forward(**kwargs)
        cache_key, cache = cache_of(kwargs)
        if cached_length(cache) > 0:
            raise ValueError(f"{cache_key}: forward() with pixel inputs and a filled cache is not supported while "
                             "LiteLVLM is enabled; use generate(), which continues a cache from a pruned turn")
        check_inputs(self.adapter, kwargs)
        self.settings.check()
        new, new_ids, self.last_report, vision = prepare_inputs(self.adapter, kwargs, expressions)
        as_tuple = self._wants_tuple(kwargs)
        if "return_dict" in self._forward_sig.parameters or as_tuple:
            new["return_dict"] = True  # the vision outputs are attached by field, then the tuple made
        out = attach(self._orig_forward(**new), vision)
        record = self._record(kwargs, dict(new, input_ids=new_ids), expressions)
        if record is not None:
            tag(cache if cache is not None else output_cache(out), record)
        return out.to_tuple() if as_tuple else out

    def _generate(self, *args, **kwargs):
        expressions = kwargs.pop("referring_expressions", None)
        kw = _bind(self._generate_sig, args, kwargs)
        inputs = kw.pop("inputs", None)
        if inputs is not None:
            if kw.get("input_ids") is not None:
                raise ValueError("inputs: given together with input_ids; pass the prompt once")
            kw["input_ids"] = inputs
        _refuse_encoded(kw, getattr(self._local, "in_generate", None))
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
        if resolved("use_cache", kw, self.model) is False and record is None:
            # no cache: every step recomputes the whole sequence through the (patched, pruning) forward, as stock
            with self._thread_state("expressions", expressions):
                return self._orig_generate(**kw)
        caller_ids = kw.get("input_ids")
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
            self.adapter.restore_prefix_state(record.state)  # Qwen: the pruned prefill's rope_deltas
            shrunk_len = new["input_ids"].shape[1]
        else:
            new, new_ids, self.last_report, _ = prepare_inputs(self.adapter, kw, expressions, generate=True)
            shrunk_len = (new["inputs_embeds"] if new.get("inputs_embeds") is not None else new["input_ids"]).shape[1]
            if new_ids is not None:
                new["input_ids"] = new_ids  # generate takes both: embeddings for the prefill, ids for the output
                record = self._record(kw, new, expressions)
                tag(cache, record)  # a passed, empty cache is filled in place
        caller_len = (caller_ids if caller_ids is not None else kw["inputs_embeds"]).shape[1]
        # with inputs_embeds alone the stock generate returns the new tokens only: nothing to put back in front
        view = CallerIds(caller_ids if caller_ids is not None else new["inputs_embeds"][:, :0, 0].long(),
                         shrunk_len if caller_ids is not None else 0)
        new.update(length_overrides(self.model, new, caller_len - shrunk_len))
        new.update(caller_view_kwargs(new, view))
        with self._thread_state("in_generate", True):
            out = self._orig_generate(**new)
        if record is not None:
            tag(output_cache(out) if not isinstance(out, torch.Tensor) else None, record)
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


def _refuse_encoded(kwargs: dict, inside_generate) -> None:
    """A caller's own ``mm_encoder_outputs`` (transformers 5.2x: features encoded beforehand) hold no pixels to
    score; only the patch's own generate() hands the stock forward pruned ones (``inside_generate``)."""
    if kwargs.get("mm_encoder_outputs") and not inside_generate:
        raise ValueError("mm_encoder_outputs: features encoded beforehand cannot be pruned (the selection scores "
                         "the pixels); pass pixel_values instead, or disable LiteLVLM for this call")


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
    (logits_to_keep, position_ids, attention_mask). One parameter is left out: ``mm_encoder_outputs``
    (transformers 5.2x), whose presence makes generate() encode the images with the stock tower before its loop
    and hand the forward features instead of pixels, which the selection needs (the forward still accepts it:
    its ``**kwargs``). The function reaches the patch through its first argument (never a closure over the
    model), so ``copy.deepcopy(model)`` binds the copy to the copy's own patch.
    """
    def method(self, *args, **kwargs):
        return getattr(self._litelvlm_patch, name)(*args, **kwargs)

    sig = inspect.signature(orig)
    params = [p for p in sig.parameters.values() if not (name == "_forward" and p.name == "mm_encoder_outputs")]
    method.__signature__ = sig.replace(
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY), *params])
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
                    image_mean=None, image_std=None, scorer_image_mean=None, scorer_image_std=None,
                    **settings) -> LiteLVLMPatch:
    """Make ``model.forward`` / ``model.generate`` feed the LLM only the tokens LiteLVLM keeps.

    Parameters
    ----------
    model : transformers model
        ``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``,
        ``LlavaNextVideoForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``,
        ``PaliGemmaForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration`` or
        ``Qwen3VLForConditionalGeneration`` (matched by ``config.model_type``; base models too).
    text_model, tokenizer, visual_projection
        The CLIP text tower (CLIPModel or CLIPTextModelWithProjection), its tokenizer and the
        CLIP ``visual_projection`` of the checkpoint whose vision tower the LVLM uses (LLaVA
        checkpoints hold neither). For a SigLIP tower: the original SigLIP checkpoint as a
        SiglipModel (its text tower, pooling head, post-layernorm and any layers the LVLM's tower
        dropped are used) and its tokenizer. For Qwen2.5-VL / Qwen3-VL (no CLIP or SigLIP tower):
        the *paired scorer*, a CLIPModel or SiglipModel of your choice, and its tokenizer
        (docs/design.md section 12). Or pass a ready ``pruner=LiteLVLMPruner(...)`` (LLaVA-class
        families only).
    vision_head, head_contribution
        SigLIP only, as ``LiteLVLMPruner``.
    image_mean, image_std
        Paired scorer only: the LVLM processor's normalisation (``processor.image_processor.image_mean``
        / ``image_std``), undone before the scorer's own; both or neither (then the checkpoints'
        defaults for the model type, docs/integrations.md).
    scorer_image_mean, scorer_image_std
        Paired scorer only: the scorer checkpoint's normalisation (default: OpenAI CLIP's for CLIP, 0.5
        for SigLIP).
    **settings
        ``LiteLVLMSettings`` fields: ``num_retain`` (192), ``multi_text``, ``k_per_text``,
        ``order``, ``missing_expressions`` ("error" or "cls"), ``budget`` ("per_tile" or
        "global", LLaVA-NeXT), ``image_newline``, ``video_budget`` ("per_frame" or "per_clip"),
        ``similarity_keep`` ("lowest", the paper's rule, or "highest"); paired scorer only:
        ``retain_ratio`` (instead of ``num_retain``), ``scorer_min_patches``, ``scorer_max_patches``.

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
    cls = adapter_for(model)
    if settings.get("retain_ratio") is not None and settings.get("num_retain") is not None:
        raise ValueError("num_retain / retain_ratio: pass one of them (retain_ratio keeps a share of each image's "
                         "tokens, num_retain a count)")
    s = LiteLVLMSettings(**settings).check()
    options = dict(visual_projection=visual_projection, vision_head=vision_head, image_mean=image_mean,
                   image_std=image_std, scorer_image_mean=scorer_image_mean, scorer_image_std=scorer_image_std,
                   head_contribution=head_contribution)
    if pruner is None:
        pruner = cls.build_pruner(model, text_model, tokenizer, options)
    else:
        given = [k for k, v in options.items() if v is not None and (k != "head_contribution" or v != "exact")]
        if given:
            raise ValueError(f"{' / '.join(given)}: set them on the pruner you pass (pruner=)")
    return LiteLVLMPatch(model, cls(model, pruner, s))


def disable_litelvlm(model) -> None:
    """Undo ``enable_litelvlm`` on ``model`` (no-op if it is not enabled)."""
    patch = getattr(model, "_litelvlm_patch", None)
    if patch is not None:
        patch.disable()
