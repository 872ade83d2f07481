"""benchmarks/bench_vllm_qwen.py: where it writes (any environment) and a smoke run of ``--quick`` (the tests' tiny
Qwen2.5-VL and CLIP, 2 sizes, 2 requests; no timing asserted).

The smoke run needs the vLLM venv (``.venv-vllm/bin/python -m pytest benchmarks/test_bench_vllm_qwen.py -q``) and is
skipped wherever vLLM or the plugin does not import; the path tests need no vLLM.
"""

import importlib.util
import json

import pytest

from benchmarks import bench_vllm_qwen, common


@pytest.mark.parametrize("argv", [[], ["--quick"]])
def test_default_and_quick_runs_write_the_ignored_folder(argv, bench_dirs):
    args = bench_vllm_qwen.parse_args(argv)
    assert args.out == str(bench_dirs.out)
    assert args.sizes == (bench_vllm_qwen.QUICK if argv else bench_vllm_qwen.FULL)["sizes"]
    paths = bench_vllm_qwen.save([{"op": "vllm_qwen_serving"}], "# table\n", args)
    assert paths == [str(bench_dirs.out / "vllm-qwen-cpu.json"), str(bench_dirs.out / "vllm-qwen-cpu.md")]
    assert not bench_dirs.results.exists()


def test_publish_writes_the_results_folder_and_quick_publish_is_refused(bench_dirs, capsys):
    args = bench_vllm_qwen.parse_args(["--publish"])
    assert args.out == common.RESULTS_DIR and args.command == "python -m benchmarks.bench_vllm_qwen --publish"
    with pytest.raises(SystemExit) as e:  # refused before vLLM is needed
        bench_vllm_qwen.main(["--quick", "--publish"])
    assert e.value.code == 2 and "--quick is a smoke run" in capsys.readouterr().err
    assert not bench_dirs.results.exists()


@pytest.mark.skipif(not bench_vllm_qwen.have_vllm(), reason="vLLM and litelvlm_kernels.serving.vllm do not import "
                                                             "(run in .venv-vllm)")
def test_quick_run_writes_rows_table_and_plot(tmp_path, vllm_env):
    rows = bench_vllm_qwen.main(["--quick", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "ckpt")])
    serving = [r for r in rows if r["op"] == "vllm_qwen_serving"]
    assert [(r["provider"], r["shape"]["size"]) for r in serving] == [("stock", 112), ("stock", 224),
                                                                       ("litelvlm", 112), ("litelvlm", 224)]
    for r in serving:  # the engine's own prompt length: text + min(R, N), N = (size / 28)^2 after the resize
        n = (r["shape"]["size"] // 28) ** 2
        assert r["shape"]["N"] == n and r["kept"] == (n if r["provider"] == "stock" else min(16, n))
        assert r["prompt_tokens_ok"] and r["prompt_tokens"] == r["text_tokens"] + r["kept"]
        assert r["req_per_s"] > 0 and r["ttft_p50_s"] > 0 and 0 < r["tower_s"] <= r["encoder_s"]  # the tower: inside
        assert (r["scorer_share_of_encoder"] is None) == (r["provider"] == "stock")
    parts = {(r["shape"]["size"], r["shape"]["timing"], r["shape"]["part"]): r for r in rows
             if r["op"] == "vllm_qwen_scorer"}
    for size in (112, 224):
        for timing in ("batch", "B=1"):
            assert 0 < parts[(size, timing, "scorer")]["share_of_encoder_step"] < 1
            assert parts[(size, timing, "encoder_step")]["share_of_encoder_step"] == 1
    summary = bench_vllm_qwen.summary(rows)
    assert [(s[0], s[1], s[2]) for s in summary] == [(112, 16, 16), (224, 64, 16)]
    stem = tmp_path / "vllm-qwen-cpu"
    assert json.loads(stem.with_suffix(".json").read_text()) == rows
    md = stem.with_suffix(".md").read_text()
    assert "| 224 x 224 px | 64 | 16 |" in md and "## The paired scorer, timed inside the engine" in md
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "plots" / "vllm-qwen-cpu.png").stat().st_size > 0 and "](plots/vllm-qwen-cpu.png)" in md
