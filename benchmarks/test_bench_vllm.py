"""benchmarks/bench_vllm.py: where it writes (any environment) and a smoke run of ``--quick`` (tiny tower and LLM,
the three workloads at R = 64; no timing asserted).

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
def test_quick_run_writes_rows_and_table(tmp_path, vllm_env):
    from benchmarks import vllm_rows

    rows = bench_vllm.main(["--quick", "--retain", "64", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "ckpt")])
    serving = [r for r in rows if r["op"] == "vllm_serving"]
    key = [(r["shape"]["model"], r["shape"]["workload"], r["provider"], r["shape"]["R"]) for r in serving]
    assert key == [("llava-1.5", "1q", "stock", 576), ("llava-1.5", "3q", "stock", 576),
                   ("llava-1.5", "1q", "litelvlm", 64), ("llava-1.5", "3q", "litelvlm", 64),
                   ("llava-next", "1q", "stock", 576), ("llava-next", "1q", "litelvlm", 64)]
    # the engine's own placeholders per image: stock's, or the layout's count at R (LLaVA-NeXT: 5 views of R + the
    # 48 newlines of a 672 x 672 image), and text + those in every request (exact on any machine)
    assert [r["placeholders"] for r in serving] == [576, 576, 64, 64, 2928, 5 * 64 + 48]
    for r in serving:
        assert r["prompt_tokens_ok"] and r["req_per_s"] > 0 and r["ttft_p50_s"] > 0 and r["commit"]
        assert r["kv_blocks"] > 0 and r["kv_max_concurrent"] == r["kv_blocks"] // r["blocks_per_request"]
        # never above stock's encoder step (tower_cache.py): 4096 tokens // 576 = 7 LLaVA-1.5 images; 4096 // 2928 = 1
        # LLaVA-NeXT image of 5 views
        assert max(r["tower_calls"]) <= (7 if r["shape"]["model"] == "llava-1.5" else 5)
    three = [r for r in serving if r["shape"]["workload"] == "3q"]
    assert [r["tower_images"] for r in three] == [2, 2]  # 6 requests, 2 images: each encoded once, both engines
    assert three[0]["cached_tokens"] > three[1]["cached_tokens"]  # stock reuses the image's KV, the plugin cannot
    parts = {(r["shape"]["model"], r["provider"], r["shape"]["timing"], r["shape"]["part"])
             for r in rows if r["op"] == "vllm_encoder"}
    for model in ("llava-1.5", "llava-next"):
        assert {(model, "stock", t, "tower") for t in ("batch", "B=1")} <= parts
        assert {(model, "litelvlm", t, p) for t in ("batch", "B=1") for p in ("selection", "fold_text")} <= parts
        assert (model, "stock", "batch", "selection") not in parts
    assert ("llava-1.5", "litelvlm", "B=1", "prune_op") in parts
    met = {name: ok for name, _, ok in vllm_rows.targets(rows)}
    assert met["prompt tokens exactly text + R' (engine's count, every request)"]
    assert met["3 questions per image: the plugin's tower runs once per image (tower cache)"]
    stem = tmp_path / "vllm-serving-cpu"
    assert json.loads(stem.with_suffix(".json").read_text()) == rows
    assert "## Targets (issues 23 and 30)" in stem.with_suffix(".md").read_text()
    # the selector module's functions are restored once the engines are gone
    import litelvlm_kernels.serving.vllm.selector as sel
    from litelvlm_kernels import prune

    assert sel.prune is prune
