#!/usr/bin/env bash
# The lmms-eval venv of a CPU machine: lmms-eval + litelvlm_kernels (editable) in .venv-lmms, for the
# `litelvlm` model of lmms-eval and its tests (docs/accuracy.md, tests/lmms_eval_plugin).
#
# lmms-eval resolves its own torch / transformers / datasets, so it gets a venv of its own and the main
# environment is untouched. Steps:
#   1. python -m venv "$VENV"; torch==2.13.0 FIRST (our CPU wheel; TORCH_INDEX_URL= elsewhere), then a
#      constraints file that pins that exact torch (2.13.0+cpu) and filelock<4 for every later step, so
#      that no step can pull a CUDA torch from the package index;
#   2. lmms-eval==0.7.3, filelock<4 (filelock 4 breaks lmms-eval 0.7.3's evaluator) and decord 0.6 (the
#      real one, from the package index: lmms-eval's llava_hf imports it at import, its requirements
#      do not list it);
#   3. the CPU-machine workaround for torchvision, as scripts/install_vllm_cpu.sh: lmms-eval pulls the
#      index's torchvision, a CUDA build whose C ops cannot load against a CPU torch (its import then
#      fails on register_fake("torchvision::nms")); a .pth file runs
#      litelvlm_kernels/serving/vllm/cpu_torchvision_shim.py at start-up, which defines the two missing
#      op schemas only when the C ops really cannot load. transformers then uses torchvision's
#      pure-Python transforms (its fast image processors) as on a GPU machine;
#   4. pip install --no-build-isolation -e ".[lmms-eval,test,plot]" (registers the lmms_eval.models
#      entry point; like install_vllm_cpu.sh it builds litelvlm_kernels/_C*.so in place, against the
#      same torch as the main env: same ABI).
# Idempotent: when the stamp (a sha256 of this script and setup.py, the extras and entry points) matches
# and the venv imports lmms-eval, decord, torchvision and the plugin, it does nothing (INSTALL_FORCE=1
# redoes every step). LMMS_VENV=path puts the venv elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
VENV=${LMMS_VENV:-.venv-lmms}
PYTHON=${PYTHON:-python3}
LMMS_REQ=${LMMS_REQ:-lmms-eval==0.7.3}
TORCH_REQ=${TORCH_REQ:-torch==2.13.0}
SHIM_PTH=litelvlm_cpu_torchvision_shim.pth
STAMP_FILE="$VENV/.litelvlm-install-stamp"
CONSTRAINTS="$VENV/litelvlm-constraints.txt"

stamp() { cat scripts/install_lmms_eval.sh setup.py | sha256sum | cut -d' ' -f1; }

check() {
    [ -x "$VENV/bin/python" ] || return 1
    [ "$(cat "$STAMP_FILE" 2>/dev/null)" = "$(stamp)" ] || return 1
    "$VENV/bin/python" - "$ROOT" <<'PY' 2>/dev/null
import glob, os, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
assert glob.glob(os.path.join(site, "litelvlm_cpu_torchvision_shim.pth"))
from importlib.metadata import entry_points, version
assert any(e.name == "litelvlm" for e in entry_points(group="lmms_eval.models"))
assert int(version("filelock").split(".")[0]) < 4
import decord, torchvision  # noqa: F401
import litelvlm_kernels
assert os.path.realpath(litelvlm_kernels.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep)
from lmms_eval.models import get_model
assert get_model("litelvlm").__name__ == "LiteLVLMLlavaHfChat"
PY
}

if [ "${INSTALL_FORCE:-0}" != "1" ] && check; then
    echo "[install_lmms_eval] $VENV is up to date (stamp matches; lmms-eval, decord, torchvision and the litelvlm model import); skipping"
    exit 0
fi

t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
rm -f "$STAMP_FILE"  # written back only once every step below succeeded
PIP=("$VENV/bin/python" -m pip)
echo "[install_lmms_eval] 1/4 torch ($TORCH_REQ) and build tools"
"${PIP[@]}" install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_REQ"
printf 'torch==%s\nfilelock<4\n' "$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
    >"$CONSTRAINTS"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "setuptools>=64,<81" wheel ninja
echo "[install_lmms_eval] 2/4 $LMMS_REQ, filelock<4, decord"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "$LMMS_REQ" "filelock<4" decord
echo "[install_lmms_eval] 3/4 torchvision shim (CPU-machine workaround)"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SHIM="$ROOT/litelvlm_kernels/serving/vllm/cpu_torchvision_shim.py"
# one line: a .pth runs lines that start with "import"; the shim itself imports nothing heavy
echo "import os; p = '$SHIM'; os.path.exists(p) and exec(compile(open(p).read(), p, 'exec'), {'__name__': 'litelvlm_cpu_torchvision_shim', '__file__': p})" >"$SITE/$SHIM_PTH"
echo "[install_lmms_eval] 4/4 litelvlm_kernels (editable, extras lmms-eval,test,plot)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation -e ".[lmms-eval,test,plot]"
stamp >"$STAMP_FILE"
check || { rm -f "$STAMP_FILE"; echo "[install_lmms_eval] the venv does not import lmms-eval / the litelvlm model" >&2; exit 1; }
"$VENV/bin/python" -c "import importlib.metadata as m, torch, transformers; print('[install_lmms_eval] lmms-eval', m.version('lmms_eval'), 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "[install_lmms_eval] done in $(( $(date +%s) - t0 )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
