"""``python -m lmms_eval --model litelvlm``: the model found through the ``lmms_eval.models`` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import tiny_task
from _runs import model_args


def test_lmms_eval_command_line_runs_the_litelvlm_model(tiny, task_dir, tmp_path):
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "litelvlm", "--model_args", model_args(tiny, num_retain=16),
           "--tasks", tiny_task.TASK, "--include_path", str(task_dir), "--device", "cpu", "--batch_size", "1",
           "--output_path", str(tmp_path / "out"), "--verbosity", "INFO"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"litelvlm (num_retain=16): {tiny_task.NUM_SAMPLES} prompts, visual tokens per prompt 576.0 -> 16.0" \
        in proc.stdout + proc.stderr
    found = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "out") for f in fs if f.endswith("_results.json")]
    assert len(found) == 1, found
    with open(found[0]) as f:
        results = json.load(f)["results"][tiny_task.TASK]
    assert "refcoco_IoU,none" in results and "refcoco_ACC@0.5,none" in results
