"""scripts/install.sh skips pip (and its minutes-long C++ rebuild) only when its stamp matches and the install
works; pip itself is never run here: a stand-in python records pip calls and does nothing."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = "test,hf,plot"


def _load_install_stamp():
    spec = importlib.util.spec_from_file_location("install_stamp", ROOT / "scripts" / "install_stamp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


install_stamp = _load_install_stamp()


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A temp copy of what the stamp reads (and the scripts), as the current directory; no CUDA switches set."""
    for name in ("setup.py", "pyproject.toml", "scripts/install.sh", "scripts/install_stamp.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    for key in install_stamp.STAMP_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stamp_follows_the_build_inputs(checkout, monkeypatch):
    def stamp(extras=EXTRAS, torch_version="2.13.0+cpu"):
        return install_stamp.stamp(extras, torch_version)

    base = stamp()
    (checkout / "README.md").write_text("not read by the build")
    assert stamp() == base
    src = checkout / "csrc" / "gather_tokens.cpp"
    original = src.read_bytes()
    src.write_bytes(original + b"\n// edited\n")
    changed = {"csrc edit": stamp()}
    src.write_bytes(original)
    assert stamp() == base  # contents, not modification times
    (checkout / "csrc" / "cuda" / "new_kernel.cu").write_text("")
    changed["new csrc file"] = stamp()
    (checkout / "csrc" / "cuda" / "new_kernel.cu").unlink()
    with open(checkout / "setup.py", "a") as f:
        f.write("\n")
    changed["setup.py"] = stamp()
    shutil.copy2(ROOT / "setup.py", checkout / "setup.py")
    changed["extras"] = stamp(extras="test")
    changed["torch"] = stamp(torch_version="2.14.0+cpu")
    monkeypatch.setenv("USE_CUDA", "0")
    changed["USE_CUDA"] = stamp()
    monkeypatch.delenv("USE_CUDA")
    assert stamp() == base
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed


def test_print_stamp(checkout):
    # The shell entry point hashes the same inputs, with this python's path and torch's version.
    r = subprocess.run(["bash", "scripts/install.sh", "--print-stamp"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable, "EXTRAS": EXTRAS})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == install_stamp.stamp(EXTRAS, torch.__version__)


def test_fresh_needs_a_matching_stamp(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # fresh() prunes sys.path in place
    stamp_file = tmp_path / "stamp"
    assert install_stamp.fresh(str(ROOT), EXTRAS, str(stamp_file)) == f"no stamp in {stamp_file}"
    stamp_file.write_text("0" * 64 + "\n")
    assert "changed" in install_stamp.fresh(str(ROOT), EXTRAS, str(stamp_file))


def test_install_sh_skips_pip_once_stamped(tmp_path):
    """A fresh clone (no stamp) runs pip and then writes the stamp; the next run skips pip."""
    pip_log = tmp_path / "pip.log"
    fake = tmp_path / "python"  # the real interpreter, but `-m pip` only logs (exit 0, nothing installed)
    fake.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then\n'
                    f'    echo "$*" >> {shlex.quote(str(pip_log))}; exit 0\nfi\n'
                    f'exec {shlex.quote(sys.executable)} "$@"\n')
    fake.chmod(0o755)
    stamp_file = tmp_path / "build" / ".install-stamp"
    env = {**os.environ, "PYTHON": str(fake), "EXTRAS": EXTRAS, "INSTALL_STAMP_FILE": str(stamp_file)}
    env.pop("INSTALL_FORCE", None)

    def install():
        r = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True,
                           timeout=120, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    out = install()
    assert f"no stamp in {stamp_file}: full install" in out
    calls = pip_log.read_text().splitlines()
    assert len(calls) == 2 and calls[1].endswith(f"-e .[{EXTRAS}]"), calls  # the package step ran
    old_cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        expected = install_stamp.stamp(EXTRAS, torch.__version__)
    finally:
        os.chdir(old_cwd)
    assert stamp_file.read_text().strip() == expected

    pip_log.unlink()
    out = install()
    if "full install" in out and "changed" not in out:  # e.g. installed from a wheel, not this checkout
        pytest.skip(f"this checkout is not the installed litelvlm_kernels: {out.strip()}")
    assert f"[install] up to date (stamp {expected[:12]}), skipping pip install" in out, out
    assert not pip_log.exists()
