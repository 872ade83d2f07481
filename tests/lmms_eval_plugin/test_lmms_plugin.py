"""The ``litelvlm`` lmms-eval model on the tiny RefCOCO REC task, against lmms-eval's stock ``llava_hf``."""

from __future__ import annotations

import pytest
import tiny_task
from _runs import load, model_args, responses, run

from litelvlm_kernels.evaluation.lmms_eval.model import LiteLVLMGenerationError

METRICS = ("refcoco_IoU", "refcoco_ACC@0.5", "refcoco_Center_ACC")


@pytest.fixture(scope="module")
def stock(tiny, task_dir):
    """lmms-eval's own llava_hf (chat class, as --model llava_hf picks) on the tiny task."""
    return run(load("llava_hf", model_args(tiny, clip=False)), task_dir, name="llava_hf")


@pytest.fixture(scope="module")
def pruned(tiny, task_dir):
    lm = load("litelvlm", model_args(tiny, num_retain=16))
    lm.keep_loaded = True  # reused by the tests below (lmms-eval's clean() would delete the model)
    return lm, run(lm, task_dir)


def test_scored_by_lmms_eval_rec_metric(stock):
    res = stock["results"][tiny_task.TASK]
    assert all(f"{m},none" in res for m in METRICS)
    assert len(stock["samples"][tiny_task.TASK]) == tiny_task.NUM_SAMPLES


def test_keep_all_in_raster_order_equals_stock(tiny, task_dir, stock):
    # every one of the 576 tokens kept, in raster order: the LLM sees the stock embeddings
    lm = load("litelvlm", model_args(tiny, num_retain=576, order="spatial"))
    assert lm.litelvlm_patch is not None  # patched, not bypassed
    out = run(lm, task_dir)
    assert responses(out) == responses(stock)
    assert out["results"][tiny_task.TASK] == stock["results"][tiny_task.TASK]
    assert [r["kept_visual_tokens"] for r in lm.litelvlm_records] == [576] * tiny_task.NUM_SAMPLES
    # lmms-eval's clean() after the evaluation freed the model, patch and CLIP, as it does for llava_hf
    assert lm.litelvlm_patch is None and not hasattr(lm, "_model")


def test_num_retain_all_is_the_stock_model(tiny, task_dir, stock):
    lm = load("litelvlm", model_args(tiny, clip=False, num_retain="all"))
    assert lm.litelvlm_patch is None
    out = run(lm, task_dir)
    assert responses(out) == responses(stock)
    assert {(r["visual_tokens"], r["kept_visual_tokens"]) for r in lm.litelvlm_records} == {(576, 576)}


def test_pruned_run_differs_and_logs_its_kept_counts(pruned, stock, tiny, task_dir):
    lm, out = pruned
    assert responses(out) != responses(stock)
    recs = lm.litelvlm_records
    assert len(recs) == tiny_task.NUM_SAMPLES
    assert {(r["visual_tokens"], r["kept_visual_tokens"]) for r in recs} == {(576, 16)}
    assert all(r["kept_prompt_tokens"] == r["prompt_tokens"] - 560 for r in recs)
    # each sample was scored with its own document's expression (the REC row's "answer")
    docs = sorted(recs, key=lambda r: r["doc_id"])
    assert [r["expressions"] for r in docs] == [[e] for row in tiny_task.ROWS for e in row[0]]

    from loguru import logger

    lines: list = []
    sink = logger.add(lines.append, level="INFO", format="{message}")
    try:
        lm.litelvlm_records.clear()
        run(lm, task_dir)
    finally:
        logger.remove(sink)
    assert any(f"litelvlm (num_retain=16): {tiny_task.NUM_SAMPLES} prompts, visual tokens per prompt 576.0 -> 16.0 "
               "kept (min 16, max 16)" in str(m) for m in lines), lines


def test_the_expression_steers_the_selection(pruned, tiny, task_dir):
    # the same budget scored with the row's fixed instruction ("question") instead of its expression
    other = load("litelvlm", model_args(tiny, num_retain=16, expression_fields='{"refcoco_bbox_rec*": "question"}'))
    out = run(other, task_dir)
    assert {tuple(r["expressions"]) for r in other.litelvlm_records} == {(tiny_task.QUESTION,)}
    assert responses(out) != responses(pruned[1])


def test_set_num_retain_reenables_with_another_budget(pruned, task_dir):
    lm, _ = pruned
    try:
        lm.set_num_retain(32)
        lm.litelvlm_records.clear()
        run(lm, task_dir)
        assert {r["kept_visual_tokens"] for r in lm.litelvlm_records} == {32}
    finally:
        lm.set_num_retain(16)


def test_generation_error_surfaces_instead_of_an_empty_answer(tiny, task_dir):
    # k_per_text x 1 text > R': the selection refuses it at the first generate; stock llava_hf would score ""
    lm = load("litelvlm", model_args(tiny, num_retain=16, k_per_text=32))
    match = rf"task '{tiny_task.TASK}' doc \d+ failed: ValueError: .*k_per_text"
    with pytest.raises(LiteLVLMGenerationError, match=match):
        run(lm, task_dir)


def test_missing_document_field_names_expression_field(tiny, task_dir):
    lm = load("litelvlm", model_args(tiny, num_retain=16, expression_field="caption"))
    with pytest.raises(ValueError, match=r"expression_field: task 'refcoco_bbox_rec_tiny': the document has no field "
                                         r"'caption'"):
        run(lm, task_dir)


@pytest.mark.parametrize(("extra", "err", "match"), [
    ({"num_retain": 0}, ValueError, "num_retain: expected an int > 0 or 'all', got 0"),
    ({"num_retain": "lots"}, TypeError, "num_retain: expected an int > 0 or 'all', got 'lots'"),
    ({"multi_text": "sometimes"}, ValueError, "multi_text"),
    ({"order": "random"}, ValueError, r"order must be one of \('official', 'spatial'\)"),
    ({"head_contribution": "all"}, ValueError, "head_contribution: expected one of"),
    ({"expression_fields": "{oops"}, ValueError, "expression_fields: expected a JSON object"),
    ({"frobnicate": 1}, TypeError, r"model_args: unknown argument\(s\) \['frobnicate'\]"),
])
def test_bad_setting_names_its_argument(tiny, extra, err, match):
    with pytest.raises(err, match=match):
        load("litelvlm", model_args(tiny, **extra))


def test_missing_clip_names_clip(tiny):
    with pytest.raises(ValueError, match="clip: the CLIP checkpoint"):
        load("litelvlm", model_args(tiny, clip=False, num_retain=64))


def test_simple_class_keep_all_equals_stock_and_pruned_differs(tiny, task_dir):
    # --force_simple: lmms-eval's simple llava_hf (its own prompt path) under the plugin
    stock = run(load("llava_hf", model_args(tiny, clip=False), force_simple=True), task_dir, name="llava_hf")
    keep_all = load("litelvlm", model_args(tiny, num_retain=576, order="spatial"), force_simple=True)
    assert type(keep_all).__name__ == "LiteLVLMLlavaHf" and keep_all.is_simple
    assert responses(run(keep_all, task_dir)) == responses(stock)
    pruned = load("litelvlm", model_args(tiny, num_retain=16), force_simple=True)
    assert responses(run(pruned, task_dir)) != responses(stock)
    assert {r["kept_visual_tokens"] for r in pruned.litelvlm_records} == {16}
