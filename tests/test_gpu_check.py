"""scripts/gpu_check.sh and the modules behind it, on the CPU (issue 10, item 6).

The script itself needs a GPU; here: it parses, its dry run prints the plan, it stops at
once without a GPU, and every part that can run on the CPU does (step runner with
time boxes, sanitizer output classification, the summary table, the JSON row writer,
the benchmarks at tiny sizes, the racecheck case).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # `benchmarks` is a directory of the repository, not an installed package

gpu_check = importlib.import_module("benchmarks.gpu_check")
gpu_runner = importlib.import_module("benchmarks.gpu_runner")
gpu_summary = importlib.import_module("benchmarks.gpu_summary")
common = importlib.import_module("benchmarks.common")
RowSink, make_row = common.RowSink, common.make_row

SCRIPT = os.path.join(REPO, "scripts", "gpu_check.sh")


def _sh(*args, timeout=120):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          check=False)


def test_script_parses():
    p = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr


def test_dry_run_prints_every_step(tmp_path):
    p = _sh(str(tmp_path / "out"), "--dry-run")
    assert p.returncode == 0, p.stderr
    for s in gpu_check.plan("OUT", "LOGS"):
        assert f"- {s.name} " in p.stdout
    assert "FORCE_CUDA=1" in p.stdout and "MAX_JOBS=" in p.stdout and "--no-build-isolation" in p.stdout
    assert "compute-sanitizer --tool racecheck" in p.stdout and "--tool synccheck" in p.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    p = _sh(str(tmp_path), "--dry-run", "--skip", "bench-prefill")
    assert "bench-prefill" in p.stdout and "[left out]" in p.stdout
    p = _sh(str(tmp_path), "--dry-run", "--only", "tests-triton", "--budget", "tests-triton=300")
    assert p.returncode == 0 and "tests-triton      300 s" in p.stdout and " 300 s of budgets" in p.stdout


def test_usage_errors(tmp_path):
    assert _sh().returncode == 2
    p = _sh(str(tmp_path), "--only", "no-such-step")
    assert p.returncode == 2 and "no-such-step" in p.stderr
    assert _sh(str(tmp_path), "--budget", "build=abc").returncode == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run")
def test_without_gpu_exits_nonzero_at_once(tmp_path):
    t0 = time.monotonic()
    p = _sh(str(tmp_path / "out"))
    assert p.returncode == gpu_check.EXIT_NO_GPU, (p.stdout, p.stderr)
    assert "no CUDA GPU" in p.stderr
    assert time.monotonic() - t0 < 60  # "at once": no build, no tests (16 s here with a torch import under load)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_probe_reports_no_gpu():
    info = gpu_runner.probe(sys.executable)
    assert info["cuda"] is False and info["torch"] == torch.__version__
    assert "why" in info and isinstance(info["xdist"], bool) and isinstance(info["pytest_timeout"], bool)


def test_plan_budgets_fit_eight_minutes():
    steps = gpu_check.plan("OUT", "LOGS", cores=16)
    groups = {}
    for s in steps:
        key = s.group or s.name
        groups[key] = max(groups.get(key, 0), s.budget_s)
    assert sum(groups.values()) == gpu_check.total_budget(steps) <= gpu_check.DEADLINE_S <= 480
    assert len({s.name for s in steps}) == len(steps)
    build = steps[0]
    assert build.env["FORCE_CUDA"] == "1" and build.env["MAX_JOBS"] == "16"
    tests = [s for s in steps if s.group == "tests"]
    assert {s.name for s in tests} == {"tests-main", "tests-triton", "tests-bench"}
    assert all("-n" in s.cmd for s in tests if s.name != "tests-bench")
    assert all("-n" not in s.cmd for s in gpu_check.plan("OUT", "LOGS", cores=16, xdist=False))


def test_plan_points_at_existing_tests():
    """Every file and -k word of the sanitizer steps names something that exists (a typo would select nothing)."""
    steps = {s.name: s for s in gpu_check.plan("OUT", "LOGS")}
    names = set()
    for rel in ("tests/test_gather_tokens.py", "tests/test_gather_tokens_cuda.py",
                "tests/triton/test_fused_select_triton.py", "tests/triton/test_ops_triton.py"):
        assert rel in steps["memcheck-gather"].cmd + steps["memcheck-fused"].cmd
        with open(os.path.join(REPO, rel)) as f:
            names |= set(re.findall(r"^def (test_\w+)", f.read(), re.MULTILINE))
    for word in gpu_check.MEMCHECK_FUSED.split(" or "):
        assert any(word in n for n in names), word
    assert any("cuda" in n for n in names)
    assert os.path.exists(os.path.join(REPO, "benchmarks", "gpu_sanitize_case.py"))


def test_build_check_fails_loudly_without_cuda_kernel():
    step = next(s for s in gpu_check.plan("OUT", "LOGS", python=sys.executable) if s.name == "build-check")
    p = subprocess.run(step.cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    import litelvlm_kernels.ops  # noqa: F401  (registers the ops)

    has = torch._C._dispatch_has_kernel_for_dispatch_key("litelvlm::gather_tokens", "CUDA")
    assert ("gather_tokens CUDA kernel: True" in p.stdout) == has, p.stdout + p.stderr
    assert (p.returncode == 0) == (has and "fused_select CUDA kernel: True" in p.stdout)


@pytest.mark.parametrize("rc,text,status", [
    (0, "========= ERROR SUMMARY: 0 errors\n", "ok"),
    (86, "========= Invalid __global__ read of size 2 bytes\n========= ERROR SUMMARY: 3 errors\n", "FAIL"),
    (0, "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n", "ok"),
    (86, "========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)\n", "FAIL"),
    (1, "========= ERROR SUMMARY: 0 errors\nAssertionError: indices differ\n", "FAIL"),
    (1, "========= Error: Device not supported\n", "unavailable"),
    (255, "========= Internal Sanitizer Error: ... error 999\n", "unavailable"),
])
def test_classify_sanitizer(rc, text, status):
    assert gpu_runner.classify_sanitizer(rc, text)[0] == status


def test_pytest_note():
    text = "....s.\n=== 12 passed, 3 skipped in 4.20s ===\n"
    assert gpu_runner.pytest_note(text) == "12 passed, 3 skipped in 4.20s"
    assert gpu_runner.pytest_note("nothing\n") == ""


def test_gpu_skips_counted():
    text = ("SKIPPED [3] tests/test_gather_tokens.py:35: no CUDA device\n"
            "SKIPPED [1] tests/test_hf.py:10: transformers too old\n"
            "SKIPPED [2] tests/triton/conftest.py:40: needs a GPU or TRITON_INTERPRET=1\n"
            "SKIPPED [4] tests/test_gather_tokens.py:36: litelvlm_kernels._C was built without CUDA kernels\n"
            "SKIPPED [1] tests/test_gpu_check.py:67: a GPU is present: the script would run\n"
            "SKIPPED [1] tests/triton/test_compile_sm90.py:30: a GPU compiles the kernels for real\n")
    assert gpu_runner.gpu_skips(text) == 9


def test_find_sanitizer():
    path = gpu_check.find_sanitizer()
    assert path is None or (os.access(path, os.X_OK) and path.endswith("compute-sanitizer"))


def _step(name, code, budget=30, **kw):
    return gpu_check.Step(name, budget, [sys.executable, "-c", code], name, **kw)


def test_runner_time_boxes_and_packs(tmp_path, monkeypatch):
    """Steps pass, fail, run past their time box (stopped, not waited for), run together, or are
    left out when the sanitizer is missing; the results and logs are on disk at the end."""
    monkeypatch.setattr(gpu_runner, "MIN_STEP_S", 1)
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    steps = [
        _step("good", "print('=== 2 passed in 0.1s ===')"),
        _step("bad", "import sys; print('boom'); sys.exit(4)"),
        _step("slow", "import time; time.sleep(120)", budget=2),
        _step("pair-a", "import time; time.sleep(1); print('a')", group="g"),
        _step("pair-b", "import time; time.sleep(1); print('b')", group="g"),
        _step("san", "print('never')", kind="sanitizer"),
    ]
    r = gpu_runner.Runner(str(out), str(logs), time.monotonic(), 300, {"device": "test"}, sanitizer_found=False)
    t0 = time.monotonic()
    rc = r.run_all(steps)
    assert time.monotonic() - t0 < 60  # the 120 s sleeper was stopped at its 2 s box
    status = {x["name"]: x["status"] for x in r.results}
    assert status == {"good": "ok", "bad": "FAIL", "slow": "TIMEOUT", "pair-a": "ok", "pair-b": "ok",
                      "san": "unavailable"}
    assert rc == 1
    assert r.results[0]["note"] == "2 passed in 0.1s"
    files = sorted(os.listdir(out))
    assert files == ["gpu_check.log", "logs.tar.gz", "steps.json", "summary.md"] and len(files) <= 8
    saved = json.loads(_read(out / "steps.json"))
    assert [x["name"] for x in saved["steps"]] == [s.name for s in steps]
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert "logs/bad.log" in tar.getnames()
        assert b"boom" in tar.extractfile("logs/bad.log").read()
    log = _read(out / "gpu_check.log")
    assert "slow: TIMEOUT" in log and "boom" in log  # a failing step's last lines come back in the log
    assert "| bad | FAIL |" in _read(out / "summary.md")


def test_main_wiring_with_a_faked_gpu(tmp_path, monkeypatch, capsys):
    """main() end to end with the probe faked: the build-check step runs for real here (no CUDA
    kernel on this machine: it must fail loudly), the files land in OUTDIR, the table comes last."""
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: "/bin/true" if name == "nvidia-smi" else None)
    monkeypatch.setattr(gpu_check, "probe", lambda python: {"cuda": True, "device": "Fake GPU", "arch": "9.0",
                                                            "cores": 4, "xdist": False})
    out = tmp_path / "out"
    rc = gpu_check.main([str(out), "--only", "build-check", "--python", sys.executable])
    printed = capsys.readouterr().out
    import litelvlm_kernels.ops  # noqa: F401

    if torch._C._dispatch_has_kernel_for_dispatch_key("litelvlm::gather_tokens", "CUDA"):
        assert rc == 0
        return
    assert rc == 1
    assert "NO CUDA kernel" in printed and printed.rstrip().splitlines()[-1].startswith("gpu_check: NOT passed")
    assert "| build-check | FAIL |" in printed
    assert sorted(os.listdir(out)) == ["gpu_check.log", "logs.tar.gz", "steps.json", "summary.md"]


def test_runner_skips_steps_past_the_deadline(tmp_path):
    (tmp_path / "logs").mkdir()
    r = gpu_runner.Runner(str(tmp_path), str(tmp_path / "logs"), time.monotonic(), 8, {})
    assert r.run_all([_step("late", "print(1)")]) == 1
    assert r.results[0]["status"] == "skipped"


def _t(p50_ms):
    return {"p50_ms": p50_ms, "p20_ms": p50_ms, "p80_ms": p50_ms}


def _read(path):
    with open(path) as f:
        return f.read()


def _select_rows():
    rows = []

    def add(provider, p50_ms, B=1, **extra):
        shape = {"B": B, "T": 2, "M": 576, "Dv": 1024, "D": 1024, "P": 768, "R": 192}
        rows.append(make_row("select+gather", provider, shape, torch.float16, _t(p50_ms), **extra))

    add("ops", 0.020, indices_valid=True, indices_equal_reference=0.995, tokens_equal_gather=True)
    add("ops.cudagraph", 0.008)
    add("ops.wall", 0.060)
    add("reference", 1.0)
    add("release", 4.0)
    add("ops", 0.05, B=64, pct_of_copy=85.0, gbs=2400.0)
    rows.append(make_row("gather_tokens", "litelvlm", {"B": 64, "M": 576, "C": 4096, "R": 192}, torch.float16,
                         _t(0.1), pct_of_copy=70.0))
    rows.append(make_row("gather_tokens", "litelvlm", {"B": 1, "M": 576, "C": 4096, "R": 192}, torch.float16,
                         _t(0.1), vs_torch_gather=1.5, vs_index_select=0.9))
    return rows


def test_summary_figures_against_targets():
    figs = {f["figure"].strip(): f for f in gpu_summary.figures(_select_rows())}
    assert figs["select+gather B=1, CUDA-graph replay"]["met"] is True  # 8 us <= 10
    assert figs["select+gather B=1: results checked"]["value"] == "valid indices, 99.5% = reference, gather exact"
    assert figs["select+gather B=1, eager wall per call (ops)"]["met"] is False  # 60 us > 50
    assert figs["eager reference / ops"]["value"] == "50.0x" and figs["eager reference / ops"]["met"] is True
    assert figs["select+gather B=64 ops: % of copy"]["met"] is True
    assert figs["release's eager rule / ops, B=1"]["value"] == "200.0x"
    assert figs["gather B=64 C=4096 R=192: % of copy"]["met"] is False  # 70% < 85%
    assert figs["gather B=1 C=4096: torch.gather / litelvlm"]["met"] is True
    missing = figs["prefill 192+64 / 576+64"]
    assert missing["value"] == "not measured" and missing["met"] is False

    def pre(visual, ms):
        return make_row("llm_prefill", "hf-llama-sdpa", {"B": 1, "visual": visual, "tokens": visual + 64},
                        torch.float16, _t(ms), peak_mem_bytes=14e9, kv_cache_bytes=2 * 32 * 4096 * (visual + 64) * 2,
                        layer_scale=4.0, layers_built=8)

    prune = make_row("prune", "litelvlm", {"B": 1, "M": 576, "R": 192}, torch.float16, _t(0.05),
                     share_of_full_prefill=0.05 / 160)
    figs = {f["figure"].strip(): f for f in gpu_summary.figures([pre(576, 160.0), pre(192, 70.0), prune])}
    assert figs["prefill 576+64 tokens (x4 from 8 layers)"]["value"] == "160.0 ms"  # scaling is said
    assert figs["prefill 192+64 / 576+64"]["value"] == "43.8%" and figs["prefill 192+64 / 576+64"]["met"] is True
    assert figs["prune (lk.prune, R=192) / prefill 576+64"]["met"] is True
    assert figs["peak memory / KV cache at 576+64"]["value"] == "14.00 GB / 335.5 MB"
    text = gpu_summary.render([{"name": "build", "status": "ok", "budget_s": 90, "seconds": 41.0, "note": ""}],
                              _select_rows(), "test card")
    assert text.startswith("## gpu_check on test card") and "| build | ok | 41 / 90 |" in text and "| NO |" in text


def test_row_sink_writes_each_row(tmp_path):
    (tmp_path / "select-cpu.json").write_text("[{\"old\": 1}]")
    sink = RowSink("select", "cpu", directory=str(tmp_path))
    for i in range(3):
        sink.add(make_row("op", f"p{i}", {"B": i}, torch.float32, {"p50_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0}))
        on_disk = json.loads(_read(sink.path))
        assert [r["provider"] for r in on_disk] == [f"p{j}" for j in range(i + 1)]
    assert gpu_summary.load_rows(str(tmp_path))[0]["device_type"] == "cpu"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_timers_on_cpu():
    t = common.wall_per_call(lambda: torch.ones(8).sum(), "cpu", calls=5, repeats=3, warmup=1)
    assert 0 < t["p20_ms"] <= t["p50_ms"] <= t["p80_ms"]
    c = common.measure_copy("cpu", nbytes=1 << 20)
    assert c["gbs"] > 0 and c["bytes"] == 2 << 20


def test_gpu_bench_parts_tiny_on_cpu(tmp_path, monkeypatch):
    """The benchmark code paths of the GPU run, at tiny sizes on the CPU (no timing asserted)."""
    from benchmarks import gpu_bench

    sink = RowSink("select", "cpu", directory=str(tmp_path))
    rows = gpu_bench.run_select("cpu", sink, tiny=True, rep_ms=2.0, batches=(1, 2))
    got = {(r["provider"], r["shape"]["B"]) for r in rows}
    assert {("ops", 1), ("ops.wall", 1), ("api", 1), ("api.wall", 1), ("reference", 1), ("ops", 2)} <= got
    assert ("reference", 2) not in got  # the reference only at B = 1
    assert all(r["indices_equal_reference"] > 0.9 and r["indices_valid"] and r["tokens_equal_gather"] for r in rows)
    ops1 = next(r for r in rows if r["provider"] == "ops" and r["shape"]["B"] == 1)
    assert ops1["speedup_vs_reference"] > 0 and ops1["bytes"] == 100 * (64 + 2 * 64) * 4
    # The compile step adds its row to the same file and finds the eager reference's time there.
    # torch.compile itself is left out here (a minute of C++ compilation on this 2-core machine):
    # the eager reference stands in for it.
    monkeypatch.setattr(gpu_bench.bench_select, "_compiled_reference_fn", gpu_bench.bench_select._reference_fn)
    n = len(rows)
    again = gpu_bench.run_select_compile("cpu", RowSink("select", "cpu", directory=str(tmp_path), append=True),
                                         tiny=True, rep_ms=2.0)
    assert len(again) == n + 1 and again[-1]["provider"] == "reference.compile"
    assert again[-1]["compile_s"] > 0 and again[-1]["speedup_vs_reference"] > 0
    assert len(json.loads(_read(tmp_path / "select-cpu.json"))) == n + 1
    g = gpu_bench.run_gather("cpu", RowSink("gather", "cpu", directory=str(tmp_path)), tiny=True)
    assert {r["provider"] for r in g} >= {"litelvlm", "torch.gather", "index_select"}
    assert len(json.loads(_read(tmp_path / "gather-cpu.json"))) == len(g)


def test_prefill_builder_memory_and_layer_scaling(tmp_path):
    from benchmarks import bench_prefill, gpu_bench

    rows = gpu_bench.run_prefill("cpu", RowSink("prefill", "cpu", directory=str(tmp_path)), tiny=True, layers=1)
    pre = [r for r in rows if r["op"] == "llm_prefill"]
    assert [r["shape"]["tokens"] for r in pre] == [56, 24]
    for r in pre:
        assert r["layers_built"] == 1 and r["layer_scale"] == 2.0 and r["shape"]["layers"] == 2
        # cache of the built (1-layer) model measured; the full 2-layer model's from the shapes: twice as much
        assert r["kv_cache_bytes"] == 2 * r["kv_cache_bytes_measured"]
        assert r["kv_cache_bytes"] == bench_prefill.kv_cache_bytes(
            bench_prefill.DecoderConfig(64, 172, 2, 4, 2, 128), 1, r["shape"]["tokens"], torch.float32)
    prune = [r for r in rows if r["op"] == "prune"]
    assert prune and all(0 < r["share_of_full_prefill"] for r in prune)
    assert len(json.loads(_read(tmp_path / "prefill-cpu.json"))) == len(rows)


def test_sanitize_case_on_cpu():
    from benchmarks import gpu_sanitize_case

    msg = gpu_sanitize_case.run_case(M=60, R=24, repeats=2, dtype=torch.float32, device="cpu")
    assert "2 repeats identical" in msg
