"""Ahead-of-time compile of every kernel variant the launchers can pick, for sm_90, without
a GPU (tests/triton/aot_compile.py: the launch's real specialisation, triton's bundled
ptxas and cuobjdump).

The interpreter proves the logic but not that the GPU compiler accepts the code, nor that
ptxas fits it in registers: this fails on a compile error, a stack frame (STACK > 0 in
``cuobjdump -res-usage``) or ptxas spill stores > 0 in any variant of the full grid.

One test per group of 3-6 variants (a kernel at one dtype, for fused_select at one text
count: tests/triton/aot_grid.py), so that pytest reports progress: the whole grid from
scratch takes 3-5 minutes on 2 cores (8-16 on a busy machine), a group under a minute. One
child process compiles all the selected groups, group after group, and reports each as a
JSON line as soon as it is done; each test waits for its own group. Figures of variants
whose source and specialisation a real ptxas run already saw are read back (the user
cache, then the committed seed tests/triton/aot_figures.json): on an unchanged tree this
takes seconds.
"""

import json
import os
import subprocess
import sys
import threading
import time
import warnings

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
AOT = os.path.join(HERE, "aot_compile.py")
TIMEOUT_S = 3000  # the whole grid from scratch on a busy 2-core machine took ~12 min
# Every group of the grid (test_groups_cover_the_grid fails when aot_grid.py's groups change
# and this list does not): 12 of fused_select, 6 variants each, then the other kernels.
GROUPS = (
    *(f"fused_select-{dt}-t{t}" for dt in ("fp16", "fp16-num_texts", "bf16", "fp32") for t in ("01", "2", "16")),
    "select_tokens-fp32", "text_similarity-fp16", "text_similarity-bf16", "text_similarity-fp32",
    "cls_contribution-fp16", "cls_contribution-bf16", "cls_contribution-fp32",
)


def _nvidia_backend():
    try:
        import triton

        return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))
    except Exception:
        return False


pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU compiles the kernels for real in the other tests"),
    pytest.mark.skipif(not _nvidia_backend(), reason="triton's NVIDIA backend (ptxas) is not installed"),
]


class _AotRun:
    """`aot_compile.py --jsonl` in a child process without TRITON_INTERPRET (triton reads it at
    import), its events collected by a reader thread as they come."""

    def __init__(self, groups):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.proc = subprocess.Popen([sys.executable, AOT, "--sm", "90", "--jsonl", "--groups", ",".join(groups)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events, self.stdout, self.stderr = {}, [], []
        self.ended = False
        self.cond = threading.Condition()
        self.deadline = time.monotonic() + TIMEOUT_S
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read_events(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = None
            with self.cond:
                if isinstance(ev, dict) and "event" in ev:
                    self.events[ev["event"] + (" " + ev["group"] if ev["event"] == "group" else "")] = ev
                else:
                    self.stdout.append(line)
                self.cond.notify_all()
        self.proc.wait()
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def wait_for(self, name):
        """The event `name` ("plan", "group fused_select-fp16", "summary"), once it has come."""
        with self.cond:
            while name not in self.events and not self.ended:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"aot_compile.py gave no '{name}' within {TIMEOUT_S} s")
                self.cond.wait(min(left, 10))
            if name in self.events:
                return self.events[name]
        pytest.fail(f"aot_compile.py exited {self.proc.returncode} without '{name}':\n"
                    + "".join(self.stdout)[-4000:] + "".join(self.stderr)[-4000:])

    def close(self):
        if self.proc.poll() is None:  # tests deselected or stopped early (-x): its work is not wanted
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def aot(request):
    """One compile run for the groups whose tests were collected (`-k fp32` compiles those only)."""
    picked = {item.callspec.params["group"] for item in request.session.items
              if item.module is request.module and "group" in getattr(getattr(item, "callspec", None), "params", {})}
    run = _AotRun([g for g in GROUPS if g in picked] or list(GROUPS))
    yield run
    run.close()


def test_groups_cover_the_grid(aot):
    plan = aot.wait_for("plan")
    assert sorted(plan["grid_groups"]) == sorted(GROUPS), "aot_grid.py's groups changed: update GROUPS here"
    assert plan["triton"] and plan["ptxas"]
    if plan["not_in_seed"]:
        warnings.warn(f"{plan['not_in_seed']} of the {plan['variants']} sm_90 variants are not in "
                      "tests/triton/aot_figures.json, so a fresh machine compiles them (2-5 s each on 2 cores); "
                      "refresh it: python tests/triton/aot_compile.py --update-seed", stacklevel=1)


@pytest.mark.parametrize("group", GROUPS)
def test_group_compiles_for_sm90_without_spills(aot, group):
    ev = aot.wait_for(f"group {group}")
    lines = [v["line"] for v in ev["variants"]]
    print(f"{group}: {len(lines)} variants, done {ev['elapsed_s']} s into the run")
    print("\n".join(lines))
    if not lines:  # each of its launches maps to a variant of an earlier group (block-size rules changed)
        pytest.skip(f"every variant of {group}'s launches is checked in an earlier group")
    bad = [v["line"] for v in ev["variants"] if not v["line"].startswith("ok ")]
    assert not bad and ev["failed"] == 0 and ev["spills"] == 0, "\n".join(bad)
    # real figures in every row ("ok" needs stack == spill stores == 0; a missing ptxas log reads -1)
    assert all(v["reg"] > 0 and v["sass"] > 0 for v in ev["variants"]), lines


def test_run_ends_clean(aot):
    summary = aot.wait_for("summary")
    aot.proc.wait(timeout=60)
    assert aot.proc.returncode == 0, "".join(aot.stderr)[-4000:]
    assert summary["failed"] == 0 and summary["spills"] == 0
    assert all(f"group {g}" in aot.events for g in summary["groups"])


@pytest.mark.parametrize("args,named", [(["--groups", "fused_select-fp8"], "--groups"),
                                        (["--update-seed", "--quick"], "--update-seed")])
def test_bad_arguments_are_named(args, named):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, AOT, *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and named in r.stderr, r.stderr
