"""One command on a GPU machine: build with CUDA, run the tests on CUDA, sanitize, benchmark (issue 10).

``bash scripts/gpu_check.sh OUTDIR [--dry-run] [--only STEP ...] [--skip STEP ...] [--deadline S]
[--budget STEP=S ...]``

Steps, in order, each in its own process group, time-boxed (coreutils ``timeout``
plus a group kill) and logged as it runs; budgets in seconds, summing to 465 (concurrent steps counted once) so that
the whole run, probe and packing included, stays inside 8 minutes (480 s) on an H100
with 16 cores (``--deadline``, default 465 s, shortens or skips the last steps if
earlier ones ran long):

====================  ======  ==============================================================
build                 90      ``pip install --no-build-isolation --no-deps --no-index -e .``
                              with ``FORCE_CUDA=1``, ``MAX_JOBS`` = cores, the card's arch
build-check           15      FAILS LOUDLY unless ``litelvlm::gather_tokens`` has a CUDA kernel
tests-main            130     ``pytest tests`` (not tests/triton; not the nvcc compile-check,
                              which the real build supersedes), CUDA tests included
tests-triton          (same)  ``pytest tests/triton`` on the GPU (no TRITON_INTERPRET)
tests-bench           (same)  ``pytest benchmarks --benchmark-disable`` (CUDA variants); the
                              three pytest runs at once, the first two with half the cores
                              each as xdist workers
memcheck-gather       70      compute-sanitizer memcheck on the gather CUDA tests
memcheck-fused        (same)  memcheck on the fused_select / Triton op CUDA tests
racecheck, synccheck  (same)  on ``benchmarks.gpu_sanitize_case`` (small fused_select case);
                              the four sanitizer runs at once
bench-select          45      select + gather at B = 1 and 64 (``benchmarks.gpu_bench``)
bench-gather          20      gather_tokens at B = 64 and 1
bench-prefill         55      LLaMA-7B-shaped prefill at 576 / 192 / 128 / 64 visual tokens
bench-compile         40      torch.compile(reference) at B = 1 (last: a time box hit here
                              costs no other figure)
====================  ======  ==============================================================

OUTDIR receives at most 8 files (the device tool brings back no more): ``gpu_check.log``
(every step's start, end, status and, on failure, its last lines), ``steps.json``,
``select-<card>.json``, ``gather-<card>.json``, ``prefill-<card>.json`` (long-format
rows, each file rewritten after every row), ``logs.tar.gz`` (every step's full output,
junit XML, sanitizer reports; re-packed after each step) and ``summary.md``, the table
printed last. A sanitizer the machine refuses (some H200 machines: "Device not
supported") is recorded as ``unavailable``, not as a failure.

Exit status: 0 when every step passed, 1 when one failed or timed out, 3 at once when
there is no CUDA GPU, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from benchmarks.gpu_runner import SANITIZER_ERROR_EXIT, Runner, probe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 465  # the whole run, probe and packing included; issue 10 asks for < 8 min on an H100
EXIT_NO_GPU = 3


MEMCHECK_FUSED = ("modes_orders_split or odd_shapes or gpu_block_sizes or chunked_finaliser or low_precision "
                  "or text_broadcast or nan_inf or long_rows or many_texts or registered or dispatch or streams")


# Steps that run side by side (16 xdist workers, or 4 sanitizer runs) would each start
# one torch thread per core and inductor's compile pool of one process per core: 16 x 16.
FEW_THREADS = {"OMP_NUM_THREADS": "2", "TORCHINDUCTOR_COMPILE_THREADS": "1"}


@dataclass
class Step:
    name: str
    budget_s: int
    cmd: list[str]
    what: str
    env: dict[str, str] = field(default_factory=dict)
    group: str | None = None  # the steps of one group run at the same time
    kind: str = "run"  # run | sanitizer | build-check


def plan(outdir: str, logdir: str, *, python: str = "python3", cores: int = 16, arch: str = "9.0",
         xdist: bool = True, pytest_timeout: bool = True, sanitizer: str | None = "compute-sanitizer") -> list[Step]:
    """The steps of a run (pure: tests print and check it without a GPU)."""
    half = max(1, cores // 2)

    def pytest(paths, junit, *extra, workers=None):
        cmd = [python, "-m", "pytest", *paths, "-q", "-rfEs", "-p", "no:cacheprovider", "--durations=10",
               f"--junitxml={os.path.join(logdir, junit)}", *extra]
        if workers and workers > 1 and xdist:
            cmd += ["-n", str(workers)]
        if pytest_timeout:
            cmd += ["--timeout=120"]  # one hung test must not eat the step's whole budget
        return cmd

    san = sanitizer or "compute-sanitizer"

    def sanitized(tool, *target):
        # --report-api-errors no: torch and triton probe the driver with calls that are meant to fail
        # (cuGetProcAddress and the like); reported, those would count as errors of ours. Kernel
        # memory, race and barrier errors stay fatal (--error-exitcode).
        return [san, "--tool", tool, "--error-exitcode", str(SANITIZER_ERROR_EXIT), "--report-api-errors", "no",
                "--launch-timeout", "0", "--target-processes", "application-only", *target]

    # The caching allocator hides out-of-bounds accesses inside its pooled blocks from
    # memcheck: one cudaMalloc per tensor instead (graph capture needs the pool: those
    # tests are left to the plain test run).
    no_cache = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", **FEW_THREADS}
    check = ("import sys, torch, litelvlm_kernels.ops; "
             "k = torch._C._dispatch_has_kernel_for_dispatch_key; "
             "g = k('litelvlm::gather_tokens', 'CUDA'); f = k('litelvlm::fused_select', 'CUDA'); "
             "print('gather_tokens CUDA kernel:', g, '| fused_select CUDA kernel:', f); "
             "sys.exit(0 if g and f else 1)")
    bench = [python, "-m", "benchmarks.gpu_bench"]
    # memcheck-gather: every CUDA gather test but the device assert (a planned failure, in a child
    # process), graph capture (needs the caching allocator) and torch.compile (Inductor's own kernels).
    # memcheck-fused: one test per code path of the kernel (split rows, odd strided shapes, the GPU's
    # blocks, the chunked finaliser, fp16/bf16, text broadcast, NaN/inf, long rows, many texts) and the
    # registered op on two streams; not the 60-case random sweep (the plain run has it) nor graph capture.
    return [
        Step("build", 90, [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                           "-e", "."],
             "build litelvlm_kernels._C with the CUDA kernels, in place (editable)",
             env={"FORCE_CUDA": "1", "MAX_JOBS": str(cores), "TORCH_CUDA_ARCH_LIST": arch}),
        Step("build-check", 15, [python, "-c", check], "the CUDA kernels are registered", kind="build-check"),
        Step("tests-main", 130, pytest(["tests", "--ignore=tests/triton", "--ignore=tests/test_cuda_compile.py"],
                                       "junit-tests.xml", workers=half),
             "pytest tests on CUDA (graph capture, streams, device assert, dtype/stride grids)", group="tests",
             env=FEW_THREADS),
        Step("tests-triton", 130, pytest(["tests/triton"], "junit-triton.xml", workers=half),
             "pytest tests/triton on the GPU (real Triton kernels)", group="tests", env=FEW_THREADS),
        Step("tests-bench", 130, pytest(["benchmarks", "--benchmark-disable"], "junit-bench.xml"),
             "pytest benchmarks --benchmark-disable: the benchmark smoke tests' CUDA variants, once each",
             group="tests", env=FEW_THREADS),
        Step("memcheck-gather", 70,
             sanitized("memcheck", python, "-m", "pytest", "tests/test_gather_tokens.py",
                       "tests/test_gather_tokens_cuda.py", "-q", "-x",
                       "-p", "no:cacheprovider", "-k", "cuda and not device_assert and not graph and not compile"),
             "compute-sanitizer memcheck: gather_tokens CUDA tests", env=no_cache, group="sanitize",
             kind="sanitizer"),
        Step("memcheck-fused", 70,
             sanitized("memcheck", python, "-m", "pytest", "tests/triton/test_fused_select_triton.py",
                       "tests/triton/test_ops_triton.py", "-q", "-x", "-p", "no:cacheprovider", "-k", MEMCHECK_FUSED),
             "compute-sanitizer memcheck: fused_select / Triton op CUDA tests", env=no_cache, group="sanitize",
             kind="sanitizer"),
        Step("racecheck", 70, sanitized("racecheck", python, "-m", "benchmarks.gpu_sanitize_case"),
             "compute-sanitizer racecheck: small fused_select case", group="sanitize", kind="sanitizer",
             env=FEW_THREADS),
        Step("synccheck", 70, sanitized("synccheck", python, "-m", "benchmarks.gpu_sanitize_case"),
             "compute-sanitizer synccheck: small fused_select case", group="sanitize", kind="sanitizer",
             env=FEW_THREADS),
        Step("bench-select", 45, bench + ["select", "--out", outdir],
             "select+gather B=1 (reference, do_bench, graph replay, wall) and B=64 (% of copy)"),
        Step("bench-gather", 20, bench + ["gather", "--out", outdir], "gather_tokens B=64 / B=1 vs torch"),
        Step("bench-prefill", 55, bench + ["prefill", "--out", outdir],
             "LLaMA-7B-shaped prefill at 576/192/128/64 visual + 64 text tokens, pruning beside it"),
        Step("bench-compile", 40, bench + ["select-compile", "--out", outdir],
             "torch.compile(reference) at B=1, added to the select rows (last: it compiles for tens of seconds)"),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", help="results directory (the device tool's $OUT)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--only", nargs="+", default=None, metavar="STEP", help="run only these steps")
    ap.add_argument("--skip", nargs="+", default=[], metavar="STEP", help="leave these steps out")
    ap.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for the whole run")
    ap.add_argument("--budget", nargs="+", default=[], metavar="STEP=S",
                    help="another time box for a step, e.g. tests-triton=300 (a rerun of one step)")
    ap.add_argument("--python", default=sys.executable or "python3")
    a = ap.parse_args(argv)
    names = {s.name for s in plan("OUT", "LOGS")}
    try:
        budgets = {k: int(v) for k, v in (b.split("=", 1) for b in a.budget)}
    except ValueError:
        ap.error(f"--budget takes STEP=SECONDS, got {a.budget}")
    unknown = [n for n in (a.only or []) + a.skip + list(budgets) if n not in names]
    if unknown:
        ap.error(f"unknown step(s) {unknown}; steps: {', '.join(sorted(names))}")
    if a.dry_run:
        steps = _budgeted(plan(a.outdir, "<logs>", python=a.python, cores=os.cpu_count() or 1, arch="<card's>"),
                          budgets)
        selected = [s for s in steps if _selected(s.name, a)]
        print(f"gpu_check plan (dry run): {len(steps)} steps, {total_budget(selected)}"
              f" s of budgets for the steps selected, deadline {a.deadline:.0f} s")
        for s in steps:
            mark = "" if _selected(s.name, a) else "  [left out]"
            env = " ".join(f"{k}={v}" for k, v in s.env.items())
            print(f"- {s.name:16s} {s.budget_s:4d} s{' (with ' + s.group + ')' if s.group else ''}{mark}: {s.what}"
                  f"\n    {env + ' ' if env else ''}{shlex.join(s.cmd)}")
        return 0
    start = time.monotonic()
    if shutil.which("nvidia-smi") is None and not glob.glob("/dev/nvidia[0-9]*"):
        info = {"cuda": False, "why": "no nvidia-smi and no /dev/nvidia* device"}  # answer at once, no torch import
    else:
        info = probe(a.python)
    if not info.get("cuda"):
        print(f"gpu_check: no CUDA GPU here ({info.get('why', 'torch.cuda.is_available() is False')}); "
              "nothing run. This command is for a GPU machine; --dry-run prints the plan.", file=sys.stderr)
        return EXIT_NO_GPU
    os.makedirs(a.outdir, exist_ok=True)
    logdir = tempfile.mkdtemp(prefix="gpu_check_logs_")
    xdist, ptimeout = info.get("xdist", False), info.get("pytest_timeout", False)
    san = find_sanitizer()
    steps = [s for s in _budgeted(plan(os.path.abspath(a.outdir), logdir, python=a.python,
                                       cores=info.get("cores", 16), arch=info.get("arch", "9.0"), xdist=xdist,
                                       pytest_timeout=ptimeout, sanitizer=san), budgets)
             if _selected(s.name, a)]
    runner = Runner(os.path.abspath(a.outdir), logdir, start, a.deadline, info, sanitizer_found=san is not None)
    return runner.run_all(steps)


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, under CUDA_HOME or a usual CUDA install folder, or None."""
    cands = [shutil.which("compute-sanitizer")]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
                 *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)):
        if root:
            cands += [os.path.join(root, "bin", "compute-sanitizer"),
                      os.path.join(root, "compute-sanitizer", "compute-sanitizer")]
    return next((c for c in cands if c and os.access(c, os.X_OK)), None)


def total_budget(steps) -> int:
    """Seconds of time boxes in a run: steps of one group run at once and count once (their longest)."""
    groups: dict = {}
    for s in steps:
        key = s.group or s.name
        groups[key] = max(groups.get(key, 0), s.budget_s)
    return sum(groups.values())


def _budgeted(steps, budgets: dict):
    for s in steps:
        s.budget_s = budgets.get(s.name, s.budget_s)
    return steps


def _selected(name: str, a) -> bool:
    return (a.only is None or name in a.only) and name not in a.skip


if __name__ == "__main__":
    sys.exit(main())
