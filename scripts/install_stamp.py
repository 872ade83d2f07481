"""Is the install of this checkout up to date? Used by scripts/install.sh to skip the C++ rebuild.

``pip install -e`` rebuilds litelvlm_kernels._C every time (minutes), even when nothing it depends on
changed. The stamp is a sha256 over what the build and the install read: setup.py, pyproject.toml,
every file under csrc/ (sorted paths, contents), scripts/install.sh, the extras, the CUDA switches of
setup.py, the Python executable and torch's version. install.sh writes it after a successful install
and skips pip when it still matches and the install still works.

    python scripts/install_stamp.py stamp EXTRAS TORCH_VERSION          # print the stamp
    python scripts/install_stamp.py fresh REPO_ROOT EXTRAS STAMP_FILE   # exit 0 iff pip can be skipped

Both read the inputs from the current directory, the repo root.

Only the standard library (``check`` also uses ``packaging`` when there, as pip and pytest bring it):
this runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import sys
from importlib import metadata

STAMP_FILES = ("setup.py", "pyproject.toml", "scripts/install.sh")
STAMP_DIRS = ("csrc",)
# setup.py's CUDA decision reads these: a CUDA build after a CPU-only one must rebuild.
STAMP_ENV = ("USE_CUDA", "FORCE_CUDA", "CUDA_HOME")


def _files() -> list[str]:
    found = [f for f in STAMP_FILES if os.path.isfile(f)]
    for top in STAMP_DIRS:
        for d, _, names in os.walk(top):
            found += [os.path.join(d, n) for n in names]
    return sorted(p.replace(os.sep, "/") for p in found)


def stamp(extras: str, torch_version: str) -> str:
    """sha256 hex of the install's inputs, read from the current directory (the repo root)."""
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        # Length-prefixed, so moving bytes between two fields cannot give the same digest.
        h.update(label.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    for path in _files():
        with open(path, "rb") as f:
            add("file:" + path, f.read())
    for key in STAMP_ENV:
        add("env:" + key, os.environ.get(key, "").encode())
    add("extras", extras.encode())
    add("python", sys.executable.encode())
    add("torch", torch_version.encode())
    return h.hexdigest()


def _unmet_requirement(extras: str) -> str | None:
    """The first requirement of the installed litelvlm_kernels (with these extras) not met, or None.

    Not checked (None) without ``packaging``; the extras bring it (pytest, matplotlib, transformers)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip and setuptools only vendor it: requiring it would reinstall every time
        return None
    try:
        specs = metadata.requires("litelvlm_kernels") or []
    except metadata.PackageNotFoundError:  # imported through PYTHONPATH, never installed
        return "litelvlm_kernels is not installed"
    wanted = {e.strip() for e in extras.split(",") if e.strip()} | {""}
    for spec in specs:
        req = Requirement(spec)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted):
            continue  # another extra's, or another platform's
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return f"{req.name} is not installed"
        if not req.specifier.contains(version, prereleases=True):
            return f"{req.name} {version} does not satisfy {req}"
    return None


def check(root: str, extras: str) -> str | None:
    """None if litelvlm_kernels and its _C import from ``root`` with every requirement met, else why not."""
    # The current directory (on sys.path under ``python -c`` / ``-m``, or via PYTHONPATH=.) would find the
    # checkout's package whether or not it is installed: look only where an install puts it.
    sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]
    try:
        import litelvlm_kernels
        import litelvlm_kernels._C  # noqa: F401  (the built extension)
    except Exception as exc:  # any failure to import means: reinstall
        return f"litelvlm_kernels._C does not import ({type(exc).__name__}: {exc})"
    root = os.path.realpath(root)
    where = os.path.realpath(litelvlm_kernels.__file__)
    if os.path.commonpath([where, root]) != root:
        return f"litelvlm_kernels imports from {where}, not from this checkout"
    return _unmet_requirement(extras)


def fresh(root: str, extras: str, stamp_file: str) -> str | None:
    """None if the stamp in ``stamp_file`` matches the inputs and the install works, else why not.

    One process imports torch once for both (torch's import is most of the time of a skipped install).
    """
    sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]  # see check
    try:
        import torch
    except Exception as exc:
        return f"torch does not import ({type(exc).__name__}: {exc})"
    try:
        with open(stamp_file, encoding="utf-8") as f:
            stored = f.read().strip()
    except OSError:
        return f"no stamp in {stamp_file}"
    if stored != stamp(extras, torch.__version__):
        return "setup.py, pyproject.toml, csrc/, install.sh, EXTRAS, CUDA switches, python or torch changed"
    return check(root, extras)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "stamp":
        print(stamp(argv[1], argv[2]))
        return 0
    if len(argv) == 4 and argv[0] == "fresh":
        why = fresh(*argv[1:])
        if why:
            print(f"[install] {why}: full install")
            return 1
        lk, torch = sys.modules["litelvlm_kernels"], sys.modules["torch"]  # imported by fresh
        print(f"[install] up to date (stamp {stamp(argv[2], torch.__version__)[:12]}), skipping pip install")
        print(f"[install] litelvlm_kernels {lk.__version__} on torch {torch.__version__}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
