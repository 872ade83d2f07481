"""A patched model prints nothing the user cannot act on: no deprecation notices of transformers' own renamed
fields (read by the patch, not by the user) and no graph-break warnings under ``torch.compile``.

Run in a fresh process: transformers prints such notices once per process, so another test could have used
them up.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import _lvlm_models as lm
    model = lm.lvlm("llava")
    batch = lm.llava_batch()
    exprs = [["the cat"], ["a red car", "the man on the left"]]
    with torch.no_grad(), lm.enable(model, num_retain=8):
        model(**batch, referring_expressions=exprs)
        lm.greedy(model, batch, referring_expressions=exprs)
        compiled = torch.compile(model, backend="aot_eager")
        compiled(**batch, referring_expressions=exprs)
        compiled(**batch, referring_expressions=exprs)
    print("ran")
""")


def test_pruned_calls_and_compile_print_no_warnings():
    tests = str(Path(__file__).resolve().parent)
    run = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ran" in run.stdout
    for noise in ("deprecated", "Graph break", "graph break", "Warning", "WARNING"):
        assert noise not in run.stderr, run.stderr[-3000:]
