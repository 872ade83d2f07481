"""Smoke run of benchmarks/bench_map_head.py on tiny shapes (no timing asserted): the code path and the rows."""

import pytest
import torch

from benchmarks import bench_map_head


def test_providers_run_and_agree_with_the_head():
    head = bench_map_head.build_head(32, 4)
    y = torch.nn.functional.layer_norm(torch.randn(2, 9, 32), (32,))
    runs = bench_map_head.providers(head, y, torch.randn(2, 16), torch.randn(2, 9, 16), torch.randn(2, 9, 16))
    with torch.inference_mode():
        out = {k: fn() for k, (fn, _) in runs.items()}
    assert out["map_contribution-exact"].shape == out["map_contribution-heads"].shape == (2, 9)
    assert out["cls_contribution"].shape == (2, 9)
    q, k, v = out["head_qkv"]
    assert q.shape == (1, 32) and k.shape == v.shape == (2, 9, 32)


def test_main_writes_nothing_with_no_write(tmp_path, monkeypatch, untimed):
    monkeypatch.setattr(bench_map_head, "write_report", lambda *a, **k: pytest.fail("--no-write wrote a report"))
    untimed(bench_map_head)
    threads = torch.get_num_threads()
    try:
        rows = bench_map_head.main(["--quick", "--rounds", "1", "--no-write", "--batch", "1", "2"])
    finally:
        torch.set_num_threads(threads)  # main sets 1 thread: give the rest of the suite its threads back
    assert {r["provider"] for r in rows} == {"head_qkv", "map_contribution-exact", "map_contribution-heads",
                                             "head-attention", "cls_contribution"}
    assert len(rows) == 10 and all(r["commit"] and r["macs"] > 0 for r in rows)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mode", ["exact", "heads"])
def test_map_contribution_quick(request, mode):
    pytest.importorskip("pytest_benchmark")
    benchmark = request.getfixturevalue("benchmark")
    head = bench_map_head.build_head(64, 4)
    y = torch.randn(2, 49, 64)
    with torch.inference_mode():
        q, k, v = bench_map_head.head_qkv(head, y)
        c = benchmark(bench_map_head.map_contribution, q, k, v, head.attention.out_proj.weight, 4, mode=mode)
    assert c.shape == (2, 49) and torch.isfinite(c).all()
