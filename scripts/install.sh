#!/usr/bin/env bash
# Install litelvlm-kernels and everything it needs, without ever pulling a
# CUDA build of torch onto a CPU machine:
#  - torch already importable (a CUDA build on a GPU box, say): kept as is;
#  - else torch==2.13.0, which on our CPU machines is a local CPU wheel
#    (elsewhere set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu).
# Then the package itself, built against that torch (--no-build-isolation, so
# pip does not fetch another torch into a build environment), with the extras.
#
# pip rebuilds the C++ extension on every run (minutes), so all of it is skipped
# when nothing the build reads changed since the last successful install and that
# install still works (scripts/install_stamp.py): the stamp, a sha256 over
# setup.py, pyproject.toml, csrc/, this script, EXTRAS, the CUDA switches, the
# Python executable and torch's version, is kept in build/.install-stamp
# (git-ignored; `make clean` drops it). A fresh clone has no stamp: full install.
# INSTALL_FORCE=1 always reinstalls; INSTALL_STAMP_FILE=path keeps the stamp
# elsewhere; --print-stamp prints the stamp and installs nothing.
#
# pip runs with -q (its own output is hundreds of lines), so each pip step says first what it does
# and how long it takes here, then prints a heartbeat line every PROGRESS_HEARTBEAT_S seconds
# (default 30) until it ends (scripts/progress.sh). Times on the 2-core CPU machine: torch from the
# local CPU wheel about 30 s, the package with its C++ build about 2 min (3-4 min on a busy machine).
set -euo pipefail
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test,hf,plot}
cd "$(dirname "$0")/.."
STAMP_FILE=${INSTALL_STAMP_FILE:-build/.install-stamp}
# shellcheck source=scripts/progress.sh
source scripts/progress.sh

torch_version() { "$PYTHON" -c 'import torch; print(torch.__version__)'; }

if [ "${1:-}" = "--print-stamp" ]; then
    "$PYTHON" scripts/install_stamp.py stamp "$EXTRAS" "$(torch_version 2>/dev/null || echo none)"
    exit 0
fi
if [ "${INSTALL_FORCE:-0}" = "1" ]; then
    echo "[install] INSTALL_FORCE=1: full install"
elif [ ! -f "$STAMP_FILE" ]; then
    echo "[install] no stamp in $STAMP_FILE: full install"
elif "$PYTHON" scripts/install_stamp.py fresh "$(pwd -P)" "$EXTRAS" "$STAMP_FILE"; then
    exit 0  # it printed "[install] up to date (stamp ...), skipping pip install"; else why not
fi

t0=$SECONDS
if TORCH_VERSION=$(torch_version 2>/dev/null); then
    echo "[install] keeping torch $TORCH_VERSION"
    n=2
else
    n=3
    progress_step "[install] 1/$n" "installing torch==2.13.0" \
        "about 30 s from the local CPU wheel here; minutes when downloaded" \
        "$PYTHON" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
    TORCH_VERSION=$(torch_version)
fi
# The stamp of the inputs before pip reads them: a file edited during the build mismatches next time.
STAMP=$("$PYTHON" scripts/install_stamp.py stamp "$EXTRAS" "$TORCH_VERSION")
rm -f "$STAMP_FILE"  # written back only once the install below succeeded
progress_step "[install] $((n - 1))/$n" "installing the build tools (setuptools, wheel, ninja)" "a few seconds" \
    "$PYTHON" -m pip install -q "setuptools>=64" wheel ninja
progress_step "[install] $n/$n" "building litelvlm_kernels with its C++ extension and installing the extras [${EXTRAS}]" \
    "about 2 min on 2 cores, 3-4 min on a busy machine" \
    "$PYTHON" -m pip install -q --no-build-isolation -e ".[${EXTRAS}]"
"$PYTHON" -c "import litelvlm_kernels, torch; print('[install] litelvlm_kernels', litelvlm_kernels.__version__, 'on torch', torch.__version__)"
mkdir -p "$(dirname "$STAMP_FILE")"
echo "$STAMP" >"$STAMP_FILE"
echo "[install] done in $((SECONDS - t0)) s (stamp written to $STAMP_FILE: the next run skips pip)"
