"""Smoke run of benchmarks/bench_capture.py on the tiny tower (no timing asserted): its providers agree."""

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks import bench_capture  # noqa: E402


def test_providers_capture_the_same_tensors():
    vision = bench_capture.build("tiny")
    px = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    runs = bench_capture.providers(vision, px)
    with torch.no_grad():
        hooked, free, full = runs["hooked"](), runs["hook-free"](), runs["hook-free-full"]()
        runs["stock"]()
    for cap in (free, full):
        assert torch.equal(cap.hidden, hooked["hidden"][:, 1:]) and torch.equal(cap.q_cls, hooked["q"])
        assert torch.equal(cap.keys, hooked["k"]) and torch.equal(cap.values, hooked["v"])


def test_main_writes_nothing_with_no_write(tmp_path, monkeypatch, untimed):
    monkeypatch.setattr(bench_capture, "write_report", lambda *a, **k: pytest.fail("--no-write wrote a report"))
    untimed(bench_capture)
    rows = bench_capture.main(["--towers", "tiny", "siglip-tiny", "--rounds", "1", "--no-write"])
    assert {r["provider"] for r in rows} == {"stock", "hooked", "hook-free", "hook-free-full", "litelvlm-exact",
                                             "litelvlm-heads"}
    assert all(r["commit"] for r in rows) and not list(tmp_path.iterdir())


def test_siglip_capture_gives_the_stock_features():
    """The SigLIP providers time what they claim: the capture's features are the LVLM tower's hidden_states[-1]."""
    px = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tower, runs = bench_capture.siglip_providers("siglip-tiny", px)
    with torch.no_grad():
        stock = runs["stock"]().hidden_states[-1]
        for mode in ("exact", "heads"):
            cap = runs[f"litelvlm-{mode}"]()
            assert torch.equal(cap.features, stock) and cap.contribution.shape == (2, 64)
