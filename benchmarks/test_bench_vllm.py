"""benchmarks/bench_vllm.py: where it writes (any environment) and a smoke run of ``--quick`` (tiny tower and LLM,
4 requests; no timing asserted).

The smoke run needs the vLLM venv (``.venv-vllm/bin/python -m pytest benchmarks/test_bench_vllm.py -q``) and is
skipped wherever vLLM or the plugin does not import (the main environment); the path tests need no vLLM.
"""

import json

import pytest

from benchmarks import bench_vllm, common


@pytest.mark.parametrize("argv", [[], ["--quick"]])
def test_default_and_quick_runs_write_the_ignored_folder(argv, bench_dirs):
    args = bench_vllm.parse_args(argv)
    assert args.out == str(bench_dirs.out)
    paths = bench_vllm.save([{"op": "vllm_serving"}], "# table\n", args)
    assert paths == [str(bench_dirs.out / "vllm-serving-cpu.json"), str(bench_dirs.out / "vllm-serving-cpu.md")]
    assert json.loads(open(paths[0]).read()) == [{"op": "vllm_serving"}] and not bench_dirs.results.exists()


def test_publish_writes_the_results_folder(bench_dirs):
    args = bench_vllm.parse_args(["--publish", "--name", "serving"])
    assert args.out == common.RESULTS_DIR and args.command == "python -m benchmarks.bench_vllm --publish --name serving"
    bench_vllm.save([], "", args)
    assert sorted(p.name for p in bench_dirs.results.iterdir()) == ["serving-cpu.json", "serving-cpu.md"]


@pytest.mark.parametrize("flag", ["--publish", "--out"])
def test_quick_publish_is_refused(flag, bench_dirs, capsys):
    with pytest.raises(SystemExit) as e:  # refused before vLLM is needed: main() exits here in any environment
        bench_vllm.main(["--quick", flag] + ([str(bench_dirs.results)] if flag == "--out" else []))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--quick is a smoke run" in err and flag in err
    assert not bench_dirs.results.exists()


@pytest.mark.skipif(not bench_vllm.have_vllm(), reason="vLLM and litelvlm_kernels.serving.vllm do not import "
                                                        "(run in .venv-vllm)")
def test_quick_run_writes_rows_and_table(tmp_path, monkeypatch):
    for k, v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                 "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(k, v)  # main() sets them; restored after the test
    rows = bench_vllm.main(["--quick", "--retain", "128", "64", "--out", str(tmp_path),
                            "--cache-dir", str(tmp_path / "ckpt")])
    serving = [r for r in rows if r["op"] == "vllm_serving"]
    assert [(r["provider"], r["shape"]["R"]) for r in serving] == [("stock", 576), ("litelvlm", 128),
                                                                   ("litelvlm", 64)]
    text = serving[0]["text_tokens"]
    assert serving[0]["prompt_tokens"] == text + 576
    for r in serving:  # the engine's own prompt length: text + R' (the third target, exact on any machine)
        assert r["prompt_tokens_ok"] and r["prompt_tokens"] == text + r["shape"]["R"]
        assert r["req_per_s"] > 0 and r["ttft_p50_s"] > 0 and r["commit"]
        assert r["kv_blocks"] > 0 and r["kv_max_concurrent"] == r["kv_blocks"] // r["blocks_per_request"]
    parts = {(r["provider"], r["shape"]["R"], r["shape"]["part"]) for r in rows if r["op"] == "vllm_encoder"}
    assert ("stock", 576, "tower") in parts and ("litelvlm", 64, "prune_op") in parts
    assert ("litelvlm", 64, "selection") in parts and ("stock", 576, "selection") not in parts
    met = {name: ok for name, _, ok in bench_vllm.targets(rows)}
    assert met["prompt tokens exactly text + R' (engine's count, every request)"]
    stem = tmp_path / "vllm-serving-cpu"
    assert json.loads(stem.with_suffix(".json").read_text()) == rows
    assert "## Targets (issue 23)" in stem.with_suffix(".md").read_text()
    # the selector module's functions are restored once the engines are gone
    import litelvlm_kernels.serving.vllm.selector as sel
    from litelvlm_kernels import prune

    assert sel.prune is prune
