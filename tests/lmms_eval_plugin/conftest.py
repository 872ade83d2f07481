"""The lmms-eval plugin's tests. The ones that run lmms-eval (``test_lmms_*.py``) run in the lmms-eval venv only
(scripts/install_lmms_eval.sh, then ``.venv-lmms/bin/python -m pytest tests/lmms_eval_plugin``); elsewhere (the main
environment) only the expression mapping and the sweep's report are collected.

The folder is not named ``lmms_eval``: on the main suite's sys.path it would become an empty namespace package
``lmms_eval`` (as tests/vllm did for vllm, renamed tests/vllm_plugin).

Everything is offline: a tiny LLaVA + CLIP checkpoint (tests/vllm_plugin/tiny_llava.py, shared with the vLLM tests),
a tiny RefCOCO-shaped task (tiny_task.py), both built once per session.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _have_lmms_eval() -> bool:
    """The real lmms-eval package (a regular package, not a namespace made of some folder on sys.path)."""
    spec = importlib.util.find_spec("lmms_eval")
    return spec is not None and bool(spec.origin) and spec.origin.endswith("__init__.py")


if not _have_lmms_eval():
    collect_ignore_glob = ["test_lmms_*.py"]
else:
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "vllm_plugin"))  # tiny_llava.py


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny LLaVA-1.5 (336 px, 576 placeholders, LlavaProcessor with a chat template) and its CLIP, on disk."""
    import tiny_llava

    return tiny_llava.build(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory):
    """The include folder of the tiny RefCOCO REC task (tiny_task.TASK)."""
    import tiny_task

    return tiny_task.build(tmp_path_factory.mktemp("tiny_task"))
