"""Fixtures of the benchmark tests: runs write to temporary folders, never to the committed rows."""

import hashlib
import os
from types import SimpleNamespace

import pytest
import torch

from benchmarks import common


def _snapshot(folder: str) -> dict:
    """{relative path: (mtime, sha256)} of every file under ``folder``: any rewrite shows, even an identical one."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return out


@pytest.fixture
def bench_dirs(tmp_path, monkeypatch):
    """``common.RESULTS_DIR`` / ``common.OUT_DIR`` moved to ``tmp_path/results`` / ``tmp_path/out``.

    On teardown the real ``benchmarks/results/`` must be byte- and mtime-identical to before (a path written
    without ``common`` would show there), and torch's thread count is restored (the mains set it).
    """
    real, threads = common.RESULTS_DIR, torch.get_num_threads()
    before = _snapshot(real)
    dirs = SimpleNamespace(results=tmp_path / "results", out=tmp_path / "out")
    monkeypatch.setattr(common, "RESULTS_DIR", str(dirs.results))
    monkeypatch.setattr(common, "OUT_DIR", str(dirs.out))
    yield dirs
    torch.set_num_threads(threads)
    assert _snapshot(real) == before, "a benchmark test wrote benchmarks/results/"


@pytest.fixture
def vllm_env(monkeypatch):
    """The environment a vLLM benchmark's main() sets for in-process engines (``vllm_engine.in_process_env``, 1 GiB
    of KV cache), set through monkeypatch so that it is restored after the test."""
    for k, v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                 "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def untimed(monkeypatch):
    """``untimed(module)``: the module's ``measure`` calls each callable once and returns 1 ms (the code path,
    not the timing)."""

    def once(fn, device, **kw):
        fn()
        return {"p50_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0}

    return lambda module: monkeypatch.setattr(module, "measure", once)
