"""Running the shell scripts of scripts/ under test: a stand-in interpreter, and a run with captured output."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fake_python(path: Path, body: str) -> Path:
    """An executable /bin/sh script at `path` that the scripts call as their python: `body` is its
    code (a `case "$*"` on the arguments, typically), so no pip, pytest or build ever runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def run_script(script: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """`bash scripts/<script>` from the checkout, with os.environ updated by `env` (None values removed)."""
    full = {**os.environ, **env}
    full = {k: v for k, v in full.items() if env.get(k, "") is not None}
    return subprocess.run(["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True,
                          timeout=timeout, env=full)
