"""Runs ``gpu_check``'s steps: probe the machine, time-box each step, classify, log, pack.

Every step runs in its own process group under coreutils ``timeout`` (and is killed
as a group if it outlives that), with its output in a log file. After each step (or
group of concurrent steps) the results so far are in ``OUTDIR/steps.json``, the logs
in ``OUTDIR/logs.tar.gz`` and a line per step in ``OUTDIR/gpu_check.log``, so a run
cut short anywhere loses at most the step in flight.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

from benchmarks import gpu_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANITIZER_ERROR_EXIT = 86  # --error-exitcode: tells "the tool found errors" from "the test failed"
PACK_RESERVE_S = 5  # kept back from the deadline for the last packing and the summary
MIN_STEP_S = 10  # a step with less time than this left is skipped, not started
TAR_FILE_CAP = 8 << 20  # bytes of one log kept in logs.tar.gz (its tail): the tool returns files <= 16 MiB

_PROBE = r"""
import importlib.util, json, os, sys
info = {"python": sys.version.split()[0], "cores": os.cpu_count()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda=torch.cuda.is_available())
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), arch=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    mem_gib=round(p.total_memory / 2**30, 1))
    else:
        info["why"] = "torch.cuda.is_available() is False" + (
            "" if torch.version.cuda else f"; torch {torch.__version__} is a CPU build")
except Exception as e:
    info.update(cuda=False, why=f"torch not importable: {type(e).__name__}: {e}")
for m in ("triton", "transformers"):
    try:
        info[m] = __import__(m).__version__
    except Exception:
        info[m] = None
info["xdist"] = importlib.util.find_spec("xdist") is not None
info["pytest_timeout"] = importlib.util.find_spec("pytest_timeout") is not None
print(json.dumps(info))
"""


def probe(python: str, timeout_s: float = 90.0) -> dict:
    """Versions, the GPU (name, arch, SMs) and optional pytest plugins, from a child process."""
    try:
        p = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s, cwd="/",
                           check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"cuda": False, "why": f"probe failed: {type(e).__name__}: {e}"}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"cuda": False, "why": f"probe failed (exit {p.returncode}): {p.stderr.strip()[-300:]}"}


def classify_sanitizer(rc: int, text: str) -> tuple:
    """(status, note) of a compute-sanitizer run from its exit status and output."""
    refused = ("Device not supported", "not supported on this platform", "Unable to find injection",
               "Target application terminated before first instrumented API call", "error 999")
    m = re.search(r"(ERROR|RACECHECK|SYNCCHECK) SUMMARY: (\d+) (?:errors?|hazards? displayed \((\d+) errors?)", text)
    errors = None
    if m:
        errors = int(m.group(3) if m.group(3) is not None else m.group(2))
    if rc == 127 or any(s in text for s in refused):
        return "unavailable", "sanitizer refused or missing here: " + _last_line(text)
    if rc == SANITIZER_ERROR_EXIT or (errors or 0) > 0:
        return "FAIL", f"{errors if errors is not None else '?'} sanitizer error(s)"
    if rc != 0:
        return "FAIL", f"exit {rc}: {_last_line(text)}"
    return "ok", "0 errors" if errors is not None else "exit 0"


def pytest_note(text: str) -> str:
    """pytest's final counts line ('312 passed, 4 skipped in 80.1s'), or ''."""
    for line in reversed(text.splitlines()):
        if re.search(r"\d+ (passed|failed|errors?|skipped|deselected)\b", line) and " in " in line:
            return line.strip("= \n")
    return ""


# Skip reasons that mean "this machine lacks CUDA / the GPU / a tool" (the tests' own words: "no CUDA
# device", "needs CUDA", "needs a GPU", "_C was built without CUDA kernels", "... is not installed",
# "nvcc not found"); not "a GPU is present" or "a GPU compiles the kernels for real", which a GPU expects.
_MISSING = re.compile(r"no cuda|no gpu|needs (?:a )?(?:gpu|cuda)|without cuda|cuda (?:is )?not available"
                      r"|built without|not installed|not found", re.IGNORECASE)


def gpu_skips(text: str) -> int:
    """How many tests pytest's ``-rs`` summary says were skipped for want of CUDA, a GPU or a tool."""
    return sum(int(count) for count, reason in re.findall(r"^SKIPPED \[(\d+)\] \S+?:\d+: (.*)$", text, re.MULTILINE)
               if _MISSING.search(reason))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def _tail(path: str, n: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 64 * 1024))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return ""


class Runner:
    """Runs steps in order (a group's steps at once) inside the run's deadline."""

    def __init__(self, outdir: str, logdir: str, start: float, deadline_s: float, info: dict, *,
                 sanitizer_found: bool = True):
        self.outdir, self.logdir, self.start, self.deadline_s, self.info = outdir, logdir, start, deadline_s, info
        self.sanitizer_found = sanitizer_found
        self.results: list[dict] = []
        self._log = open(os.path.join(outdir, "gpu_check.log"), "a", buffering=1)  # noqa: SIM115  (the whole run)

    def say(self, msg: str) -> None:
        line = f"[gpu_check +{time.monotonic() - self.start:5.0f}s] {msg}"
        print(line, flush=True)
        self._log.write(line + "\n")

    def left(self) -> float:
        return self.deadline_s - (time.monotonic() - self.start) - PACK_RESERVE_S

    def run_all(self, steps) -> int:
        i = self.info
        self.say(f"{i.get('device')} (sm {i.get('arch')}, {i.get('sms')} SMs, {i.get('mem_gib')} GiB), "
                 f"{i.get('cores')} cores; python {i.get('python')}, "
                 f"torch {i.get('torch')} (CUDA {i.get('torch_cuda')}), "
                 f"triton {i.get('triton')}, transformers {i.get('transformers')}, xdist {i.get('xdist')}; "
                 f"deadline {self.deadline_s:.0f} s")
        for cmd in (["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used",
                     "--format=csv,noheader"], ["nvcc", "--version"]):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False).stdout.strip()
                self.say(f"{cmd[0]}: {' | '.join(out.splitlines()[-2:])}")
            except (OSError, subprocess.TimeoutExpired) as e:
                self.say(f"{cmd[0]}: not available ({type(e).__name__})")
        batches, k = [], 0
        while k < len(steps):  # consecutive steps of one group run together
            g = steps[k].group
            j = k + 1
            while g is not None and j < len(steps) and steps[j].group == g:
                j += 1
            batches.append(steps[k:j])
            k = j
        for batch in batches:
            self._run_batch(batch)
            self._save()
        rows = gpu_summary.load_rows(self.outdir)
        text = gpu_summary.render(self.results, rows, f"{i.get('device')} ({i.get('torch')}, triton {i.get('triton')})")
        with open(os.path.join(self.outdir, "summary.md"), "w") as f:
            f.write(text)
        self._log.write(text)
        self._pack()
        print("\n" + text, flush=True)
        bad = [r["name"] for r in self.results if r["status"] not in ("ok", "unavailable")]
        if any(r["name"] == "build-check" and r["status"] != "ok" for r in self.results):
            print("!!! litelvlm::gather_tokens has NO CUDA kernel after the build: see build / build-check !!!",
                  flush=True)
        print(f"gpu_check: {'all steps passed' if not bad else 'NOT passed: ' + ', '.join(bad)} "
              f"in {time.monotonic() - self.start:.0f} s", flush=True)
        return 0 if not bad else 1

    def _run_batch(self, batch) -> None:
        left = self.left()
        procs = []
        for s in batch:
            budget = int(min(s.budget_s, left))
            res = {"name": s.name, "budget_s": budget, "what": s.what, "cmd": shlex.join(s.cmd), "env": s.env}
            if budget < MIN_STEP_S:
                res.update(status="skipped", seconds=0.0, note=f"{left:.0f} s left before the deadline")
            elif s.kind == "sanitizer" and not self.sanitizer_found:
                res.update(status="unavailable", seconds=0.0, note="compute-sanitizer not found")
            else:
                procs.append((s, res, *self._start(s, budget)))
                self.say(f"start {s.name} (budget {budget} s): {s.what}")
            if "status" in res:
                self.say(f"{s.name}: {res['status']} ({res['note']})")
            self.results.append(res)
        for s, res, p, log, t0, fh in procs:
            try:
                rc = p.wait(timeout=max(1.0, t0 + res["budget_s"] + 10 - time.monotonic()))
            except subprocess.TimeoutExpired:  # `timeout` itself hung or was missing: kill the group
                self._killpg(p)
                rc = -9
            fh.close()
            self._finish(s, res, rc, log, time.monotonic() - t0)

    def _start(self, s, budget: int):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **s.env)
        env.pop("TRITON_INTERPRET", None)  # real kernels: the interpreter is for machines without a GPU
        log = os.path.join(self.logdir, f"{s.name}.log")
        fh = open(log, "w")  # noqa: SIM115  (the child writes to it; closed in _run_batch)
        fh.write("$ " + " ".join([f"{k}={v}" for k, v in s.env.items()] + [shlex.join(s.cmd)]) + "\n")
        fh.flush()
        cmd = (["timeout", "--kill-after=5", str(budget)] if shutil.which("timeout") else []) + s.cmd
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        return p, log, time.monotonic(), fh

    @staticmethod
    def _killpg(p) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
                p.wait(timeout=5)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue

    def _finish(self, s, res: dict, rc: int, log: str, seconds: float) -> None:
        text = _tail(log, 400)
        timed_out = rc in (124, 137, -9) or (rc < 0 and seconds >= res["budget_s"])
        if timed_out:
            status, note = "TIMEOUT", f"stopped after {seconds:.0f} s; last: {_last_line(text)}"
            found = len(re.findall(r"^=+ (?:Invalid|Error|Race|Barrier|Warning)", text, re.MULTILINE))
            if s.kind == "sanitizer" and found:
                note = f"{found} sanitizer report(s) before the time box; " + note
        elif s.kind == "sanitizer":
            status, note = classify_sanitizer(rc, text)
        elif rc == 0:
            status, note = "ok", pytest_note(text) or _last_line(text)
        else:
            status, note = "FAIL", pytest_note(text) or f"exit {rc}: {_last_line(text)}"
        n_gpu_skips = gpu_skips(text)
        if n_gpu_skips:  # on the GPU machine a test skipped "for want of CUDA" is a finding
            note += f"; {n_gpu_skips} skipped for want of CUDA, a GPU or a tool (see the log)"
        if s.kind == "build-check" and status != "ok":
            note = "litelvlm::gather_tokens / fused_select has NO CUDA kernel after the build. " + note
        res.update(status=status, rc=rc, seconds=round(seconds, 1), note=note.replace("|", "/"))
        self.say(f"{s.name}: {status} in {seconds:.0f} s ({note})")
        if status not in ("ok",):
            self._log.write(f"---- last lines of {s.name} ----\n{_tail(log, 40)}\n----\n")

    def _save(self) -> None:
        path = os.path.join(self.outdir, "steps.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"info": self.info, "steps": self.results}, f, indent=1)
        os.replace(path + ".tmp", path)
        self._pack()

    def _pack(self) -> None:
        path = os.path.join(self.outdir, "logs.tar.gz")
        with tarfile.open(path + ".tmp", "w:gz") as tar:
            for name in sorted(os.listdir(self.logdir)):
                full = os.path.join(self.logdir, name)
                size = os.path.getsize(full)
                info = tarfile.TarInfo(f"logs/{name}")
                with open(full, "rb") as f:
                    f.seek(max(0, size - TAR_FILE_CAP))  # a log that ran away keeps its end
                    data = f.read()
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
        os.replace(path + ".tmp", path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run benchmarks.gpu_check (scripts/gpu_check.sh)")
