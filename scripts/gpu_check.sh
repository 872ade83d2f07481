#!/usr/bin/env bash
# One command on a GPU machine (issue 10): build with CUDA, run the tests on CUDA,
# compute-sanitizer, benchmarks; results and logs under OUTDIR, a short table last.
#
#   bash scripts/gpu_check.sh OUTDIR              # the device tool: bash scripts/gpu_check.sh $OUT
#   bash scripts/gpu_check.sh OUTDIR --dry-run    # print the plan (steps, budgets, commands)
#
# Budget: 8 minutes on an H100 (16 cores), each step time-boxed; the plan and the
# budgets are in benchmarks/gpu_check.py. Without a GPU it says so and exits 3 at once.
set -uo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/gpu_check.sh OUTDIR [--dry-run] [--only STEP ...] [--skip STEP ...]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m benchmarks.gpu_check "$@"
