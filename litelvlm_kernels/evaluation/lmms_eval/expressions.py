"""Which field of an lmms-eval document holds the referring expression LiteLVLM scores with.

lmms-eval hands a model the request's ``doc_id``, task and split; the model reads the document
(``task_dict[task][split][doc_id]``, after the task's ``process_docs``). LiteLVLM needs a text per
image: the expression of a referring task, the question of a VQA task. Never the ground truth:
a selection guided by the answer would leak it into the tokens the LLM sees. The same key means
different things in different tasks, hence a mapping per task:

=======================  ==========  ===============================================================
task (fnmatch pattern)   field       why
=======================  ==========  ===============================================================
``refcoco_bbox_rec*``    answer      RefCOCO REC: lmms-eval's ``process_docs`` writes one referring
``refcoco+_bbox_rec*``               expression per row into ``answer`` (the target is ``bbox``);
``refcocog_bbox_rec*``               ``question`` there is a fixed instruction, not the expression
``gqa``, ``gqa_*``       question    GQA: ``answer`` is the ground-truth answer
``pope``, ``pope_*``     question    POPE ("Is there a <object> in the image?"): ``answer`` is yes / no
=======================  ==========  ===============================================================

Not mapped on purpose: RefCOCO's ``refcoco*_bbox_*`` / ``*_seg_*`` captioning tasks (referring
expression *generation*), whose ``answer`` is the caption the model must produce.

Overrides (``--model_args``): ``expression_field=FIELD`` reads FIELD in every task;
``expression_fields={"pattern": "field", ...}`` (JSON) adds or replaces patterns, tried before the
built-in ones. A field may hold a str or a list of str (several texts, combined by ``multi_text``).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence

__all__ = ["BUILTIN_FIELDS", "ExpressionMap"]

#: (task pattern, document field) pairs, tried in order; docs/accuracy.md lists them with the reasons.
BUILTIN_FIELDS: tuple = (
    ("refcoco_bbox_rec*", "answer"),
    ("refcoco+_bbox_rec*", "answer"),
    ("refcocog_bbox_rec*", "answer"),
    ("gqa", "question"),
    ("gqa_*", "question"),
    ("pope", "question"),
    ("pope_*", "question"),
)


def _parse_fields(fields) -> tuple:
    """``expression_fields`` (a dict, or its JSON text from --model_args) -> ((pattern, field), ...)."""
    if fields is None:
        return ()
    if isinstance(fields, str):
        try:
            fields = json.loads(fields)
        except json.JSONDecodeError as e:
            raise ValueError(f"expression_fields: expected a JSON object such as "
                             f"'{{\"my_task*\": \"question\"}}', got {fields!r} ({e.msg})") from None
    if not isinstance(fields, Mapping):
        raise TypeError(f"expression_fields: expected a mapping of task pattern -> document field, "
                        f"got {type(fields).__name__}")
    for k, v in fields.items():
        if not isinstance(k, str) or not k or not isinstance(v, str) or not v:
            raise ValueError(f"expression_fields: {k!r}: {v!r}: patterns and fields must be non-empty strings")
    return tuple(fields.items())


class ExpressionMap:
    """The referring expressions of one document of a task.

    Parameters
    ----------
    expression_field : str, optional
        One document field for every task (overrides everything else).
    expression_fields : mapping or JSON str, optional
        ``{task pattern: field}``, tried (in order) before ``BUILTIN_FIELDS``.
    """

    def __init__(self, expression_field: str | None = None, expression_fields=None):
        if expression_field is not None and (not isinstance(expression_field, str) or not expression_field):
            raise ValueError(f"expression_field: expected a document field name, got {expression_field!r}")
        self.expression_field = expression_field
        self.patterns = _parse_fields(expression_fields) + BUILTIN_FIELDS

    def field_for(self, task: str, required: bool = True) -> str | None:
        """The document field of ``task``'s expressions; if none is known: ValueError naming the override,
        or None when not ``required``."""
        if self.expression_field is not None:
            return self.expression_field
        for pattern, field in self.patterns:
            if fnmatch.fnmatchcase(task, pattern):
                return field
        if not required:
            return None
        raise ValueError(f"expression_field: no referring-expression field is known for task {task!r} (known: "
                         f"{', '.join(p for p, _ in self.patterns)}). Pass --model_args expression_field=<document "
                         "field> (or expression_fields='{\"<task pattern>\": \"<field>\"}'), never a ground-truth "
                         "field; or missing_expressions=cls for [CLS]-only selection")

    def expressions(self, task: str, doc: Mapping, required: bool = True) -> list:
        """The texts of ``doc`` (a list of str; empty when the field is empty or None, or when no field is known
        for ``task`` and not ``required``: the caller's ``missing_expressions="cls"``)."""
        field = self.field_for(task, required)
        if field is None:
            return []
        try:
            value = doc[field]
        except (KeyError, IndexError, TypeError):
            keys = sorted(doc.keys()) if isinstance(doc, Mapping) else type(doc).__name__
            raise ValueError(f"expression_field: task {task!r}: the document has no field {field!r} "
                             f"(fields: {keys})") from None
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expression_field: task {task!r}: field {field!r} holds {type(value).__name__}, "
                            "expected a str or a list of str")
        return [v for v in value if v.strip()]
