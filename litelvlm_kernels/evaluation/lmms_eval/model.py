"""lmms-eval's ``llava_hf`` with LiteLVLM: the ``litelvlm`` model (entry point ``lmms_eval.models``).

The stock classes (``lmms_eval.models.simple.llava_hf.LlavaHf`` and its chat subclass) load the
checkpoint, build the prompt and call ``model.generate`` / ``model(...)``; these subclasses change
three things and nothing else, so that ``num_retain=all`` (no patch) and a patch that keeps every
token in raster order give the stock outputs exactly:

1. after the stock ``__init__``, ``enable_litelvlm`` on the loaded model, with the CLIP checkpoint
   of ``clip=`` (``set_num_retain`` re-enables it with another budget: the sweep loads once);
2. each request's document callables (``doc_to_visual``, ``doc_to_messages``, ``doc_to_target``)
   are wrapped: when the stock code calls one on the document it is about to generate for, the
   document's expressions (``expressions.ExpressionMap``) become the current ones;
3. the stock code reaches the model through ``self.model``; here that is a thin proxy whose
   ``generate`` / ``__call__`` add ``referring_expressions=[the current expressions]``, record the
   kept counts of the call (``litelvlm_records``, logged) and let no error pass silently: the stock
   ``generate_until`` catches every exception of ``generate`` and scores "" instead, which would turn
   a pruning failure into a wrong answer. The proxy raises an escape that ``except Exception`` does
   not catch, and the request method re-raises it as ``LiteLVLMGenerationError``.

Batch size 1 only, as the stock ``llava_hf`` (it asserts it).
"""

from __future__ import annotations

import dataclasses
import statistics

from lmms_eval.models.chat.llava_hf import LlavaHf as _StockChat
from lmms_eval.models.simple.llava_hf import LlavaHf as _StockSimple
from loguru import logger as eval_logger

from .arguments import KEEP_ALL, parse_num_retain, split_model_args

__all__ = ["LiteLVLMGenerationError", "LiteLVLMLlavaHf", "LiteLVLMLlavaHfChat"]

# config attributes holding the ids of the visual placeholders (LLaVA, LLaVA-NeXT, LLaVA-OneVision; old and new names)
_PLACEHOLDER_KEYS = ("image_token_index", "image_token_id", "video_token_index", "video_token_id")


class LiteLVLMGenerationError(RuntimeError):
    """A generate / forward call of the ``litelvlm`` model failed (the stock wrapper would have scored "")."""


class _Escape(BaseException):
    """Carries a model error through the stock code's ``except Exception`` (never seen outside this module)."""

    def __init__(self, where: str, error: BaseException):
        super().__init__(where)
        self.where, self.error = where, error


@dataclasses.dataclass(frozen=True)
class _Doc:
    task: str
    doc_id: int
    expressions: tuple


class _DocTap:
    """A request's document callable: calling it on a document makes that document the current one."""

    def __init__(self, fn, owner, task: str, doc_id):
        self.fn, self.owner, self.task, self.doc_id = fn, owner, task, doc_id

    def __call__(self, doc, *args, **kwargs):
        self.owner._see_doc(self.task, self.doc_id, doc)
        return self.fn(doc, *args, **kwargs)


class _ModelProxy:
    """What the stock code gets as ``self.model``: the loaded model, with generate / __call__ routed to the owner."""

    def __init__(self, model, owner):
        self._model, self._owner = model, owner

    def generate(self, *args, **kwargs):
        return self._owner._call_model(self._model.generate, args, kwargs)

    def __call__(self, *args, **kwargs):
        return self._owner._call_model(self._model, args, kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


class _LiteLVLMMixin:
    """The LiteLVLM part of both classes (see the module docstring)."""

    def __init__(self, **kwargs):
        self._litelvlm_ready = False
        self.litelvlm, stock_kwargs = split_model_args(kwargs, self._stock_class().__init__)
        super().__init__(**stock_kwargs)
        self._clip = None
        self._patch = None
        self._current = None
        self.litelvlm_records: list = []
        self.keep_loaded = False
        self.set_num_retain(self.litelvlm.num_retain)
        self._litelvlm_ready = True

    @classmethod
    def _stock_class(cls):
        return next(c for c in cls.__mro__ if c in (_StockChat, _StockSimple))

    # ------------------------------------------------------------------ the patch

    @property
    def model(self):
        stock = super().model
        return _ModelProxy(stock, self) if getattr(self, "_litelvlm_ready", False) else stock

    @property
    def litelvlm_patch(self):
        """The ``enable_litelvlm`` handle (``settings``, ``last_report``), or None with ``num_retain=all``."""
        return self._patch

    def set_num_retain(self, num_retain) -> None:
        """Keep ``num_retain`` visual tokens (an int > 0), or every token with ``"all"`` / None (the stock model)."""
        from ...integrations.hf import enable_litelvlm

        r = None if num_retain is None else parse_num_retain(num_retain)
        if self._patch is not None:
            self._patch.disable()
            self._patch = None
        self.litelvlm.num_retain = r
        if r is None:
            return
        clip, tokenizer = self._clip_checkpoint()
        self._patch = enable_litelvlm(super().model, clip, tokenizer, num_retain=r,
                                      head_contribution=self.litelvlm.head_contribution, **self.litelvlm.settings)

    def clean(self):
        """lmms-eval calls this after every evaluation: the stock one deletes the model (to make room for a local
        judge). ``keep_loaded = True`` keeps it for another evaluation (the sweep: one load, several budgets)."""
        if self.keep_loaded:
            return
        if self._patch is not None:
            self._patch.disable()
        self._patch, self._clip = None, None
        super().clean()

    def _clip_checkpoint(self):
        """The CLIP (or SigLIP) model and tokenizer of ``clip=``, loaded once, on the LVLM's device and dtype."""
        if self._clip is None:
            import transformers

            name = self.litelvlm.clip
            if not name:
                raise ValueError("clip: a CLIP checkpoint is needed to prune (num_retain is not 'all')")
            try:
                model = transformers.AutoModel.from_pretrained(name)
                tokenizer = transformers.AutoTokenizer.from_pretrained(name)
            except Exception as e:
                raise ValueError(f"clip={name!r}: not a loadable CLIP / SigLIP checkpoint "
                                 f"({type(e).__name__}: {e})") from None
            stock = super().model
            self._clip = (model.to(device=stock.device, dtype=stock.dtype).eval(), tokenizer)
        return self._clip

    # ------------------------------------------------------------------ requests

    def generate_until(self, requests):
        return self._run(super().generate_until, requests)

    def loglikelihood(self, requests):
        return self._run(super().loglikelihood, requests)

    def _run(self, method, requests):
        start = len(self.litelvlm_records)
        tapped = [self._tap(r) for r in requests]
        try:
            out = method(tapped)
        except _Escape as esc:
            raise LiteLVLMGenerationError(f"litelvlm: {esc.where} failed: {type(esc.error).__name__}: "
                                          f"{esc.error}") from esc.error
        finally:
            self._current = None
        self._log_summary(self.litelvlm_records[start:])
        return out

    def _tap(self, request):
        """A copy of ``request`` whose document callables report the document they are called on.

        Every request type of lmms-eval ends its arguments with ``(doc_id, task, split)``."""
        doc_id, task, _split = request.args[-3:]
        args = tuple(_DocTap(a, self, task, doc_id) if callable(a) else a for a in request.args[:-3])
        return dataclasses.replace(request, arguments=args + tuple(request.args[-3:]))

    def _see_doc(self, task: str, doc_id, doc) -> None:
        if self._patch is None:  # keep-all: the stock model needs no expression (and no mapping for the task)
            self._current = _Doc(task, doc_id, ())
            return
        cls_ok = self._patch.settings.missing_expressions == "cls"
        exprs = self.litelvlm.expressions.expressions(task, doc, required=not cls_ok)
        self._current = _Doc(task, doc_id, tuple(exprs))

    def _call_model(self, fn, args, kwargs):
        doc, self._current = self._current, None
        if self._patch is not None and doc is not None:
            kwargs["referring_expressions"] = [list(doc.expressions) or None]  # one prompt per call (batch 1)
        try:
            out = fn(*args, **kwargs)
        except Exception as e:
            where = f"task {doc.task!r} doc {doc.doc_id}" if doc is not None else "a call without a document"
            raise _Escape(where, e) from e
        self._record(doc, kwargs)
        return out

    # ------------------------------------------------------------------ kept counts

    def _record(self, doc, kwargs) -> None:
        if not any(k.startswith("pixel_values") and v is not None for k, v in kwargs.items()):
            return  # a text-only call
        ids = kwargs["input_ids"]
        if self._patch is not None:
            rows = self._patch.last_report["rows"]
            vis, kept, tok, kept_tok = (rows[k][0] for k in ("visual_stock", "visual_kept", "tokens_stock",
                                                             "tokens_kept"))
        else:
            cfg = super().model.config
            token_ids = {getattr(cfg, k) for k in _PLACEHOLDER_KEYS if isinstance(getattr(cfg, k, None), int)}
            vis = kept = int(sum((ids[0] == t).sum() for t in token_ids))
            tok = kept_tok = int(ids.shape[1])
        passed = kwargs.get("referring_expressions", [None])[0]  # what the pruner got, not what the doc held
        rec = {"task": doc.task if doc else None, "doc_id": doc.doc_id if doc else None,
               "expressions": list(passed or []), "visual_tokens": int(vis),
               "kept_visual_tokens": int(kept), "prompt_tokens": int(tok), "kept_prompt_tokens": int(kept_tok)}
        self.litelvlm_records.append(rec)
        eval_logger.debug(f"litelvlm: task {rec['task']!r} doc {rec['doc_id']}: visual tokens {vis} -> {kept}, "
                          f"prompt {tok} -> {kept_tok}")

    def _log_summary(self, records: list) -> None:
        if not records:
            return
        kept = [r["kept_visual_tokens"] for r in records]
        budget = KEEP_ALL if self.litelvlm.num_retain is None else self.litelvlm.num_retain
        eval_logger.info(f"litelvlm (num_retain={budget}): {len(records)} prompts, visual tokens per prompt "
                         f"{statistics.fmean(r['visual_tokens'] for r in records):.1f} -> "
                         f"{statistics.fmean(kept):.1f} kept (min {min(kept)}, max {max(kept)})")


class LiteLVLMLlavaHf(_LiteLVLMMixin, _StockSimple):
    """lmms-eval's simple ``llava_hf`` with LiteLVLM (``--model litelvlm --force_simple``)."""


class LiteLVLMLlavaHfChat(_LiteLVLMMixin, _StockChat):
    """lmms-eval's chat ``llava_hf`` with LiteLVLM (``--model litelvlm``, the default as for ``llava_hf``)."""

    is_simple = False
