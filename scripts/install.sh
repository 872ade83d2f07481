#!/usr/bin/env bash
# Install litelvlm-kernels and everything it needs, without ever pulling a
# CUDA build of torch onto a CPU machine:
#  - torch already importable (a CUDA build on a GPU box, say): kept as is;
#  - else torch==2.13.0, which on our CPU machines is a local CPU wheel
#    (elsewhere set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu).
# Then the package itself, built against that torch (--no-build-isolation, so
# pip does not fetch another torch into a build environment), with the extras.
set -euo pipefail
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test,hf,plot}
cd "$(dirname "$0")/.."

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "[install] keeping torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
    echo "[install] installing torch==2.13.0"
    "$PYTHON" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
fi
"$PYTHON" -m pip install -q "setuptools>=64" wheel ninja
"$PYTHON" -m pip install -q --no-build-isolation -e ".[${EXTRAS}]"
"$PYTHON" -c "import litelvlm_kernels, torch; print('[install] litelvlm_kernels', litelvlm_kernels.__version__, 'on torch', torch.__version__)"
