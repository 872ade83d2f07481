"""The sweep's rows, costs, table and plot from given results (no lmms-eval needed)."""

from __future__ import annotations

import json

import pytest

from litelvlm_kernels.evaluation import report, sweep
from litelvlm_kernels.flops import DecoderConfig, prefill_flops
from litelvlm_kernels.memory import kv_cache_bytes

CFG = DecoderConfig.preset("vicuna-7b")


def records(kept: int, n: int = 3) -> list:
    """n prompts of 576 visual + 40..42 text tokens, ``kept`` visual tokens seen by the LLM."""
    return [{"task": "t", "visual_tokens": 576, "kept_visual_tokens": kept, "prompt_tokens": 616 + i,
             "kept_prompt_tokens": kept + 40 + i} for i in range(n)]


def test_budget_costs_are_the_library_figures_per_prompt():
    c = report.budget_costs(records(192), CFG, 2)
    flops = [prefill_flops(CFG, 576, 40 + i, keep=192, include_lm_head="last") for i in range(3)]
    kv = [kv_cache_bytes(CFG, 576, 40 + i, keep=192, dtype_bytes=2) for i in range(3)]
    assert c["prefill_flops"] == pytest.approx(sum(flops) / 3)
    assert c["kv_cache_bytes"] == pytest.approx(sum(kv) / 3)
    assert (c["prompts"], c["visual_tokens"], c["kept_visual_tokens"]) == (3, 576, 192)
    full = report.budget_costs(records(576), CFG, 2)
    assert full["prefill_flops"] == pytest.approx(
        sum(prefill_flops(CFG, 576, 40 + i, include_lm_head="last") for i in range(3)) / 3)
    assert c["prefill_flops"] < full["prefill_flops"] and c["kv_cache_bytes"] < full["kv_cache_bytes"]


def test_budget_costs_without_records_says_so():
    with pytest.raises(ValueError, match="records: no prompt with an image"):
        report.budget_costs([], CFG, 2)


def sweep_rows() -> list:
    out = []
    for b, kept, acc in (("all", 576, 0.8), (192, 192, 0.75), (64, 64, 0.6)):
        results = {"t": {"alias": "t", "acc,none": acc, "acc_stderr,none": "N/A", "iou,none": acc / 2}}
        out += report.metric_rows(b, results, {"t": report.budget_costs(records(kept), CFG, 2)}, {"device": "cpu"})
    return out


def test_metric_rows_are_long_format_without_stderr_or_alias():
    rows = sweep_rows()
    assert {(r["num_retain"], r["metric"]) for r in rows} == {(b, m) for b in ("all", 192, 64) for m in ("acc", "iou")}
    assert all(r["filter"] == "none" and r["device"] == "cpu" and "prefill_flops" in r for r in rows)


def test_markdown_table_has_one_line_per_budget_with_ratios_to_keep_all():
    table = report.markdown_table(sweep_rows())
    lines = table.strip().splitlines()
    assert lines[0] == "| task | num_retain | visual tokens kept | prefill TFLOPs | KV cache MiB | acc |"
    assert [ln.split("|")[2].strip() for ln in lines[2:]] == ["64", "192", "all"]  # budgets ascending, all last
    assert "(1.00x)" in lines[-1] and "0.8000" in lines[-1]
    r64 = report.budget_costs(records(64), CFG, 2)["kv_cache_bytes"] / report.budget_costs(records(576), CFG, 2)[
        "kv_cache_bytes"]
    assert f"({r64:.2f}x)" in lines[2]


def test_metrics_selection_and_unknown_metric():
    assert "| iou |" in report.markdown_table(sweep_rows(), ["iou"])
    with pytest.raises(ValueError, match=r"metrics: \['f1'\] not in the results"):
        report.markdown_table(sweep_rows(), ["f1"])


def test_write_gives_json_table_and_png(tmp_path):
    paths = sweep.write(sweep_rows(), str(tmp_path / "out"), "python -m litelvlm_kernels.evaluation.sweep ...")
    assert json.loads(open(paths["json"]).read()) == sweep_rows()
    assert "# Accuracy vs visual-token budget" in open(paths["md"]).read()
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("values", "err", "match"), [
    (["0"], ValueError, "--num_retain: expected an int > 0 or 'all', got 0"),
    (["many"], TypeError, "--num_retain: expected an int > 0 or 'all', got 'many'"),
    (["64", "64"], ValueError, "--num_retain: repeated budgets"),
])
def test_bad_budgets_name_num_retain(values, err, match):
    with pytest.raises(err, match=match):
        sweep.budgets(values)


def test_budgets_parse_ints_and_all():
    assert sweep.budgets(["64", "192", "ALL"]) == [64, 192, "all"]


def test_num_retain_in_model_args_is_refused():
    with pytest.raises(ValueError, match="--model_args: leave num_retain out"):
        sweep._check_model_args("pretrained=x,num_retain=64")


def test_help_needs_no_lmms_eval(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--help"])
    assert e.value.code == 0 and "--num_retain" in capsys.readouterr().out
