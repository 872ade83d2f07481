"""The budget sweep on the tiny task: rows, table and plot, with the library's FLOPs and KV-cache figures."""

from __future__ import annotations

import json

import pytest
import tiny_task
from _runs import model_args

from litelvlm_kernels.evaluation import sweep
from litelvlm_kernels.flops import DecoderConfig, prefill_flops
from litelvlm_kernels.memory import kv_cache_bytes


def test_sweep_writes_rows_table_and_plot(tiny, task_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep.main(["--model_args", model_args(tiny), "--tasks", tiny_task.TASK, "--num_retain", "16", "all",
                       "--include_path", str(task_dir), "--device", "cpu", "--out", str(out),
                       "--metrics", "refcoco_IoU", "refcoco_Center_ACC"]) == 0
    rows = json.loads((out / "accuracy_sweep.json").read_text())
    assert {r["num_retain"] for r in rows} == {16, "all"}
    by_budget = {b: [r for r in rows if r["num_retain"] == b] for b in (16, "all")}
    for rs in by_budget.values():  # every metric of lmms-eval's REC task, once per budget
        assert sorted(r["metric"] for r in rs) == sorted(f"refcoco_{m}" for m in (
            "IoU", "ACC@0.1", "ACC@0.3", "ACC@0.5", "ACC@0.7", "ACC@0.9", "Center_ACC"))
    pruned, full = by_budget[16][0], by_budget["all"][0]
    assert (pruned["visual_tokens"], pruned["kept_visual_tokens"]) == (576, 16)
    assert (full["visual_tokens"], full["kept_visual_tokens"]) == (576, 576)
    assert pruned["prompts"] == full["prompts"] == tiny_task.NUM_SAMPLES
    # the library's figures for the tiny decoder (fp32), from the prompts' measured lengths
    cfg = DecoderConfig.from_hf(tiny.llava.config)
    text = full["prompt_tokens"] - 576
    if float(text).is_integer():  # every prompt has the same length: the mean is exact
        assert pruned["prefill_flops"] == prefill_flops(cfg, 576, int(text), keep=16, include_lm_head="last")
        assert full["kv_cache_bytes"] == kv_cache_bytes(cfg, 576, int(text), dtype_bytes=4)
    assert pruned["prefill_flops"] < full["prefill_flops"] and pruned["kv_cache_bytes"] < full["kv_cache_bytes"]
    table = (out / "accuracy_sweep.md").read_text()
    lines = [ln for ln in table.splitlines() if ln.startswith(f"| {tiny_task.TASK} |")]
    assert [ln.split("|")[2].strip() for ln in lines] == ["16", "all"]
    assert "refcoco_IoU | refcoco_Center_ACC |" in table and "(1.00x)" in lines[1]
    assert f"python -m litelvlm_kernels.evaluation.sweep --model_args {model_args(tiny)} " in table
    assert (out / "accuracy_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| task | num_retain |" in capsys.readouterr().out


def test_sweep_refuses_num_retain_in_model_args_before_loading(tiny):
    with pytest.raises(ValueError, match="--model_args: leave num_retain out"):
        sweep.main(["--model_args", model_args(tiny, num_retain=64), "--tasks", tiny_task.TASK, "--num_retain", "16"])
