"""Smoke run of the prefill benchmark and of the report (tiny decoder; no timing assertions).

CI runs it with ``--benchmark-disable``. It checks that bench_prefill's rows
have the schema of benchmarks/common.py, carry the FLOPs of
litelvlm_kernels.flops, and that benchmarks.report turns them into a markdown
table (and PNG plots when matplotlib is installed).
"""

import importlib.util
import json
import os

import pytest
import torch

pytest.importorskip("pytest_benchmark")
pytest.importorskip("transformers")

from benchmarks import bench_prefill, report  # noqa: E402
from benchmarks.common import write_rows  # noqa: E402
from litelvlm_kernels.flops import DecoderConfig, prefill_macs  # noqa: E402

TINY = DecoderConfig(hidden=64, intermediate=172, layers=2, heads=4, kv_heads=2, vocab=128)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_prefill_forward(benchmark, device):
    model = bench_prefill.build_decoder(TINY, torch.device(device), torch.float32, "sdpa")
    x = torch.randn(1, 48 + 8, TINY.hidden, device=device)
    benchmark.extra_info.update(device=device, tokens=56, macs=prefill_macs(TINY, 48, 8))

    def fwd():
        with torch.inference_mode():
            return model(inputs_embeds=x, use_cache=True).last_hidden_state

    out = benchmark(fwd)
    assert out.shape == (1, 56, TINY.hidden) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def prefill_rows():
    # visual 48 -> keep 16: full prefill, pruned prefill and the pruning ops (CLIP shapes)
    return bench_prefill.run("cpu", TINY, visual=48, keeps=(16,), text=8, rounds=1)


def test_bench_prefill_rows(prefill_rows):
    pre = [r for r in prefill_rows if r["op"] == "llm_prefill"]
    assert [r["shape"]["tokens"] for r in pre] == [56, 24]
    for r in prefill_rows:
        for k in ("op", "provider", "shape", "dtype", "p50_ms", "p20_ms", "p80_ms", "device", "torch", "timestamp"):
            assert k in r, k
        assert r["p20_ms"] <= r["p50_ms"] <= r["p80_ms"]
    assert pre[0]["macs"] == prefill_macs(TINY, 48, 8) and pre[1]["macs"] == prefill_macs(TINY, 48, 8, keep=16)
    assert pre[0]["time_ratio"] == 1.0 and pre[1]["macs_percent"] < 100
    prune = {r["provider"]: r for r in prefill_rows if r["op"] == "prune"}
    assert set(prune) == {"litelvlm", "reference"}
    for r in prune.values():
        assert r["shape"] == dict(B=1, M=576, Dv=1024, D=1024, T=1, R=16)
        assert 0 < r["share_of_pruned_prefill"] < 1
    assert "| provider | B | R |" in bench_prefill.summary(prefill_rows)


def test_report(prefill_rows, tmp_path):
    path = write_rows(prefill_rows, "prefill-smoke", device="cpu", directory=str(tmp_path))
    json.dump({"not": "rows"}, open(tmp_path / "other.json", "w"))
    out = tmp_path / "out"
    assert report.main([path, str(tmp_path / "other.json"), "--out", str(out)]) == 0
    md = (out / "REPORT-cpu.md").read_text()
    assert "## llm_prefill" in md and "## prune" in md
    assert "speed-up vs reference" in md  # prune: litelvlm vs the reference provider
    if importlib.util.find_spec("matplotlib") is None:
        return
    pngs = sorted(os.listdir(out / "plots"))
    assert "cpu-llm_prefill-time-vs-tokens.png" in pngs and "cpu-llm_prefill-speedup-vs-tokens.png" in pngs
    assert "](plots/cpu-llm_prefill-time-vs-tokens.png)" in md


def test_report_per_file_no_plots(prefill_rows, tmp_path):
    path = write_rows(prefill_rows, "prefill-smoke", device="cpu", directory=str(tmp_path))
    assert report.main([path, "--per-file", "--no-plots", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT-prefill-smoke-cpu.md").exists()
    assert not (tmp_path / "plots").exists()
    assert report.main([str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 1


def test_report_without_matplotlib(prefill_rows, tmp_path, monkeypatch, capsys):
    path = write_rows(prefill_rows, "prefill-smoke", device="cpu", directory=str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(report.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert report.main([path, "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "REPORT-cpu.md").exists() and not (tmp_path / "o" / "plots").exists()
    assert "matplotlib not installed" in capsys.readouterr().err
