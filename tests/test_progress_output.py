"""Long steps say what they do while they run (scripts/progress.sh), and scripts/test.sh streams its two
side-by-side pytest suites, each line prefixed, keeping their exit statuses. No pytest or pip runs here:
progress.sh is driven with sleep, test.sh with a stand-in python."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from _scripts import ROOT, fake_python, run_script


def _bash(code: str, **env: str) -> subprocess.CompletedProcess:
    exports = "".join(f"export {k}={v}; " for k, v in env.items())
    return subprocess.run(["bash", "-c", f"{exports}source {ROOT}/scripts/progress.sh; {code}"],
                          capture_output=True, text=True, timeout=60)


def test_progress_step_announces_beats_and_times_a_step():
    r = _bash('progress_step "[t] 1/2" "sleeping" "about 3 s" sleep 3', PROGRESS_HEARTBEAT_S="1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "[t] 1/2 sleeping (about 3 s) ..."
    beat = re.compile(r"\[t\] 1/2   \.\.\. still running: \d+ s so far \(about 3 s\)")
    beats = [line for line in lines[1:-1] if beat.fullmatch(line)]
    assert beats and len(beats) == len(lines) - 2, lines  # nothing else in between
    assert re.fullmatch(r"\[t\] 1/2   done in \d+ s", lines[-1]), lines


def test_progress_step_keeps_the_exit_status_and_leaves_nothing_running():
    # A 30 s heartbeat must not hold the caller's pipe open once the step is over: this returns at once.
    t0 = time.monotonic()
    r = _bash('progress_step "[t]" "failing" "a moment" sh -c "exit 3"; echo "rc=$?"', PROGRESS_HEARTBEAT_S="30")
    assert time.monotonic() - t0 < 20
    assert r.stdout.splitlines() == ["[t] failing (a moment) ...", "rc=3"], r.stdout
    assert re.search(r"^\[t\]   FAILED \(exit 3\) after \d+ s: failing$", r.stderr, re.M), r.stderr


@pytest.mark.parametrize("bad", ["0", "x", "1.5"])
def test_progress_step_rejects_a_bad_heartbeat(bad):
    r = _bash('progress_step "[t]" "x" "y" true; echo "rc=$?"', PROGRESS_HEARTBEAT_S=bad)
    assert "rc=2" in r.stdout and "PROGRESS_HEARTBEAT_S" in r.stderr and bad in r.stderr


def test_prefix_lines_prefixes_whole_lines_and_flushes_waiting_dots():
    # pytest -q writes its dots without a newline: after PROGRESS_FLUSH_S they show as a line of their own.
    writer = "{ printf '...'; sleep 4; printf '.. [ 50%%]\\nline two\\n'; printf 'no newline'; }"
    r = _bash(f'{writer} | prefix_lines "[x]"', PROGRESS_FLUSH_S="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[x] ...", "[x] .. [ 50%]", "[x] line two", "[x] no newline"]


_PYTEST_STAND_IN = """case "$*" in
    "-m ruff"*) exit 0 ;;
    "-c "*) exit 1 ;;  # torch.cuda.is_available(): no GPU here
    "-m pytest tests --ignore=tests/triton"*) echo "main first line"; printf '..'; sleep 1; echo ". [100%]"
        echo "main last line"; exit "${MAIN_RC:-0}" ;;
    "-m pytest tests/triton"*) echo "triton TRITON_INTERPRET=$TRITON_INTERPRET"; sleep 3; echo "triton last line"
        exit "${TRITON_RC:-0}" ;;
    "-m pytest benchmarks"*) echo "benchmarks smoke"; exit 0 ;;
esac
echo "unexpected python call: $*" >&2; exit 99
"""


@pytest.mark.parametrize("serial,main_rc,triton_rc", [("0", 0, 0), ("0", 3, 0), ("0", 0, 4), ("1", 3, 0)])
def test_test_sh_streams_both_suites_with_headers(tmp_path, serial, main_rc, triton_rc):
    py = fake_python(tmp_path / "python", _PYTEST_STAND_IN)
    r = run_script("test.sh", {"PYTHON": str(py), "SKIP_VLLM": "1", "SKIP_LMMS_EVAL": "1", "SKIP_LINT": None,
                               "SERIAL": serial,
                               "MAIN_RC": str(main_rc), "TRITON_RC": str(triton_rc)})
    out = r.stdout.splitlines()
    assert "unexpected python call" not in r.stderr, r.stderr
    # every step says what it runs and how long it takes
    assert out[0] == "[test] 0/5 ruff check . (a few seconds)"
    took = r" \([^)]*\d+(\.\d+)? min"  # a duration in the header
    assert re.match(r"\[test\] 1/5 pytest tests --ignore=tests/triton, lines prefixed \[main\]" + took, out[1]), out
    assert any(re.match(r"\[test\] 2/5 .*pytest tests/triton, lines prefixed \[triton\]" + took, x) for x in out)
    # both suites' lines arrive whole and prefixed (the dots and the rest of their line: one line)
    suite_lines = [x for x in out if not x.startswith("[test]")]
    assert all(x.startswith(("[main] ", "[triton] ")) or x == "benchmarks smoke" for x in suite_lines), out
    assert "[main] ... [100%]" in out and "[triton] triton TRITON_INTERPRET=1" in out
    assert any(re.fullmatch(rf"\[main\] tests \(without tests/triton\): exit {main_rc} after \d+ s", x) for x in out)
    assert any(re.fullmatch(rf"\[triton\] tests/triton: exit {triton_rc} after \d+ s", x) for x in out)
    if serial == "0":  # side by side, the main suite's log streams: not held until tests/triton ends
        assert out.index("[main] main last line") < out.index("[triton] triton last line"), out
    if main_rc or triton_rc:
        assert r.returncode == 1
        assert f"[test] FAILED: tests exit {main_rc}, tests/triton exit {triton_rc}" in r.stderr
        assert "benchmarks smoke" not in out
    else:
        assert r.returncode == 0, r.stdout + r.stderr
        assert any(re.match(r"\[test\] 3/5 pytest benchmarks .*\([^)]*\d+ (s|min)\)$", x) for x in out), out
        assert out[-3:] == ["[test] SKIP_VLLM=1: vLLM plugin tests skipped",
                            "[test] SKIP_LMMS_EVAL=1: lmms-eval plugin tests skipped", out[-1]]
        assert re.fullmatch(r"\[test\] all passed in \d+ s", out[-1])
