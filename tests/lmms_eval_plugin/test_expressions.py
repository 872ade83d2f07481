"""Which document field gives the referring expression, per lmms-eval task (no lmms-eval needed)."""

from __future__ import annotations

import pytest

from litelvlm_kernels.evaluation.lmms_eval.expressions import ExpressionMap

# documents shaped as lmms-eval's tasks hand them to the model (after their process_docs)
REFCOCO_REC = {"question_id": "1", "question": "Please carefully observe the area circled in the image and come up "
               "with a caption for the area.", "answer": "the man on the left", "bbox": [0.1, 0.2, 0.3, 0.4]}
GQA = {"question": "Is the cup on the left of the table?", "answer": "yes", "imageId": "n1"}
POPE = {"question": "Is there a dog in the image?", "answer": "no", "question_id": "3"}


@pytest.mark.parametrize("task", ["refcoco_bbox_rec_val", "refcoco+_bbox_rec_testA", "refcocog_bbox_rec_test",
                                  "refcoco_bbox_rec_tiny"])
def test_refcoco_rec_reads_the_expression(task):
    assert ExpressionMap().expressions(task, REFCOCO_REC) == ["the man on the left"]


@pytest.mark.parametrize(("task", "doc"), [("gqa", GQA), ("gqa_lite", GQA), ("pope", POPE), ("pope_adv", POPE),
                                           ("pope_random", POPE)])
def test_vqa_reads_the_question_never_the_answer(task, doc):
    out = ExpressionMap().expressions(task, doc)
    assert out == [doc["question"]]
    assert doc["answer"] not in out


@pytest.mark.parametrize("task", ["refcoco_bbox_val", "refcoco_seg_test", "mme", "gqa2"])
def test_unmapped_task_names_the_override(task):
    # refcoco_bbox_* without "rec" is expression *generation*: its answer is the target, never an input
    with pytest.raises(ValueError, match=rf"expression_field: no referring-expression field .*{task}"):
        ExpressionMap().expressions(task, REFCOCO_REC)


def test_unmapped_task_without_requirement_gives_no_expression():
    assert ExpressionMap().expressions("mme", {"question": "q"}, required=False) == []


def test_expression_field_overrides_every_task():
    m = ExpressionMap(expression_field="caption")
    assert m.expressions("gqa", {"caption": "a red car", "question": "q"}) == ["a red car"]


def test_expression_fields_json_comes_before_the_builtin_patterns():
    m = ExpressionMap(expression_fields='{"gqa*": "hint", "my_task": "text"}')
    assert m.expressions("gqa", {"hint": "the cup", "question": "q"}) == ["the cup"]
    assert m.expressions("my_task", {"text": "the tree"}) == ["the tree"]
    assert m.expressions("pope", POPE) == [POPE["question"]]  # built-ins still apply


def test_list_field_gives_several_texts_and_drops_blank_ones():
    doc = {"answer": ["the red car", "  ", "a car on the right"]}
    assert ExpressionMap().expressions("refcoco_bbox_rec_val", doc) == ["the red car", "a car on the right"]
    assert ExpressionMap().expressions("refcoco_bbox_rec_val", {"answer": None}) == []


def test_missing_field_names_the_document_fields():
    with pytest.raises(ValueError, match=r"expression_field: task 'gqa': the document has no field 'question' "
                                         r"\(fields: \['answer', 'image'\]\)"):
        ExpressionMap().expressions("gqa", {"answer": "yes", "image": None})


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"expression_fields": "{not json"}, ValueError, "expression_fields: expected a JSON object"),
    ({"expression_fields": "[1, 2]"}, TypeError, "expression_fields: expected a mapping"),
    ({"expression_fields": {"gqa": ""}}, ValueError, "expression_fields: 'gqa': ''"),
    ({"expression_field": ""}, ValueError, "expression_field: expected a document field name"),
])
def test_bad_overrides_name_their_argument(kwargs, err, match):
    with pytest.raises(err, match=match):
        ExpressionMap(**kwargs)


def test_non_text_field_is_refused():
    with pytest.raises(TypeError, match=r"expression_field: task 'gqa': field 'question' holds int"):
        ExpressionMap().expressions("gqa", {"question": 3})
