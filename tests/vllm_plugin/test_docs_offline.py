"""docs/serving.md's offline script runs as written, in a fresh process with vLLM's default engine.

The script is the page's own ``python`` block (the one that builds ``LLM(...)``), saved to a file
and started as a user would, with the tiny checkpoints (tiny_llava.py) in place of the hub ids
through its own ``--model`` / ``--clip`` options. The engine runs in vLLM's default separate
process (``VLLM_ENABLE_V1_MULTIPROCESSING=1``), which the CPU backend starts with ``spawn``: that
re-imports the script, so this also checks the ``if __name__ == "__main__":`` guard the page
says is needed (without it the child runs ``LLM(...)`` again and the engine fails to start, with
multiprocessing's "bootstrapping phase" error: seen once by hand, not kept as a test, for its
~70 s). 120-140 s on 2 busy vCPUs: the spawned engine's start and torch.compile warm-up.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tiny_llava import image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the docs scanner
from _docs import ROOT, blocks  # noqa: E402

R = 32
EXPRESSION = "the man on the left"
GUARD = re.compile(r'^if __name__ == "__main__":.*\n    main\(\)\n', re.M)


def _offline_script() -> str:
    found = [b.text for b in blocks(ROOT / "docs" / "serving.md") if b.lang == "python" and "LLM(" in b.text]
    assert len(found) == 1, "docs/serving.md should hold one offline script"
    assert GUARD.search(found[0]), "the offline script lost its __main__ guard"
    return found[0]


def test_offline_script_runs_as_written(tiny, tmp_path):
    script = tmp_path / "litelvlm_offline.py"
    script.write_text(_offline_script())
    photo = tmp_path / "photo.png"
    image(5).save(photo)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1", VLLM_CPU_KVCACHE_SPACE="1")
    r = subprocess.run([sys.executable, str(script), str(photo), EXPRESSION, "--model", str(tiny.llava_dir),
                        "--clip", str(tiny.clip_dir), "--num-retain", str(R), "--max-model-len", "2048"],
                       capture_output=True, text=True, timeout=420, cwd=tmp_path, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    m = re.search(r"^(\d+) prompt tokens$", r.stdout, re.M)
    assert m, r.stdout[-2000:]
    prompt = f"USER: <image>\nWhere is {EXPRESSION}? ASSISTANT:"
    text_tokens = len(tiny.processor.tokenizer(prompt).input_ids) - 1  # all but the one <image> token
    assert int(m.group(1)) == text_tokens + R  # text + R', as the page says

