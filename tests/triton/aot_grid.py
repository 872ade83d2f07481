"""The kernel variants the Triton launchers can pick, found without a GPU (for
tests/triton/aot_compile.py, which compiles them).

Each launcher is called on ``meta`` tensors (shapes and strides, no memory) over B in
{1, 8, 64}, M in {49, 576, 577, 2880, 16384}, T in {0, 1, 2, 16} and fp16 / bf16 / fp32
(plus num_texts / spatial at fp16), with the Triton kernel's ``run`` replaced by a recorder.
The recorded arguments go through triton's own binder for the target
(``create_function_from_signature`` + ``JITFunction._pack_args``, what ``kernel[grid](...)``
does on a GPU): ints equal to 1 become constants, multiples of 16 and 16-byte aligned
pointers get divisibility hints, ``do_not_specialize`` scalars stay plain. Launches that
specialise alike are one variant.

Groups split the compile check into steps of 3-6 variants (tests/triton/test_compile_sm90.py
runs one test per group, so that a compile from scratch shows its progress): the kernel and
the input dtype (``cls_contribution-bf16``), with ``-num_texts`` for the num_texts / spatial
launches and, for fused_select, the text count (``-t01`` for T <= 1, ``-t2``, ``-t16``):
``fused_select-fp16-num_texts-t16``. A variant belongs to the group of its first launch in
the grid's order (the dtype is in its signature, so only launches of one dtype share it).
"""

import importlib
import importlib.util
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

PKG = os.environ.get("LITELVLM_AOT_PACKAGE", "litelvlm_kernels.triton_ops")  # another copy, for experiments
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BS = (1, 8, 64)
MS = (49, 576, 577, 2880, 16384)
TS = (0, 1, 2, 16)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DV = D = 1024  # CLIP ViT-L/14 widths (any multiple of 16 >= 128 specialises the same way)
R = 192


def _package():
    """The kernels' package, PKG. Installed (pip install -e .), it is imported as usual.
    Where it is not (a scratch venv with another triton, docs/triton.md "A second triton
    version"), or where the package around it does not import there (its compiled _C
    extension), the repository's triton_ops/ is loaded as PKG by itself: it needs only
    torch and triton, not litelvlm_kernels or _C."""
    if PKG in sys.modules:
        return sys.modules[PKG]
    try:
        return importlib.import_module(PKG)
    except (ImportError, OSError) as e:  # not installed here, or its _C does not load here
        if PKG != "litelvlm_kernels.triton_ops":
            raise
        err = e
    root = os.path.join(REPO, "triton_ops")
    if not os.path.exists(os.path.join(root, "__init__.py")):
        raise err
    spec = importlib.util.spec_from_file_location(PKG, os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PKG] = mod  # before running it: its relative imports look the package up there
    spec.loader.exec_module(mod)
    return mod


def kernel(mod, kname):
    """The @triton.jit function kname of PKG's module mod."""
    _package()
    return getattr(importlib.import_module(f"{PKG}.{mod}"), kname)


class _Recorded(Exception):
    pass


def _record(fn, launch):
    """(args, kwargs) that `launch` hands to `fn[grid](...)`, without running it."""
    got = {}

    def run(*args, grid, warmup, **kwargs):
        got["call"] = (args, kwargs)
        raise _Recorded

    fn.run = run  # the instance attribute shadows JITFunction.run for this kernel only
    try:
        launch()
    except _Recorded:
        pass
    finally:
        del fn.run
    return got.get("call")


def _launches(quick):
    """(label, group, module, kernel name, launch thunk) for every launch of the grid."""
    tops = _package()

    meta = dict(device="meta")
    bs, ms, ts, dts = ((1, 64), (576, 16384), (2,), ("fp16",)) if quick else (BS, MS, TS, tuple(DTYPES))
    for dn in dts:
        dt = DTYPES[dn]
        for B in bs:
            for M in ms:
                hidden = torch.empty(B, M, DV, dtype=dt, **meta)
                keys = torch.empty(B, M, D, dtype=dt, **meta)
                values = torch.empty(B, M, D, dtype=dt, **meta)
                q = torch.empty(B, D, dtype=dt, **meta)
                yield (f"B={B} M={M} {dn}", f"cls_contribution-{dn}", "cls_contribution", "_cls_contribution_kernel",
                       lambda q=q, k=keys, v=values: tops.cls_contribution(q, k, v))
                for T in ts:
                    w = torch.empty(B, T, DV, dtype=torch.float32, **meta)
                    b = torch.empty(B, T, dtype=torch.float32, **meta)
                    r = min(R, M)
                    lab = f"B={B} M={M} T={T} {dn}"
                    if T:
                        yield (lab, f"text_similarity-{dn}", "text_similarity", "_text_similarity_kernel",
                               lambda h=hidden, w=w, b=b: tops.text_similarity(h, w, b, 1e-5))
                    nt = torch.empty(B, dtype=torch.int64, **meta)
                    flags = [(None, "official"), (nt, "spatial")] if dn == "fp16" else [(None, "official")]
                    for ntx, order in flags:
                        lab2 = lab + ("" if ntx is None else " num_texts") + f" {order}"
                        tail = "" if ntx is None else "-num_texts"
                        tclass = f"-t{T}" if T >= 2 else "-t01"  # text tiles TB 1 / 2 / 4: 6 variants each
                        yield (lab2, f"fused_select-{dn}{tail}{tclass}", "fused_select", "_fused_select_kernel",
                               lambda h=hidden, w=w, b=b, q=q, k=keys, v=values, r=r, o=order, n=ntx:
                               tops.fused_select(h, w, b, 1e-5, q, k, v, r, order=o, num_texts=n))
                        if dn == "fp32":
                            s = torch.empty(B, T, M, dtype=torch.float32, **meta)
                            c = torch.empty(B, M, dtype=torch.float32, **meta)
                            yield (lab2, f"select_tokens-{dn}{tail}", "select_tokens", "_select_tokens_kernel",
                                   lambda s=s, c=c, r=r, o=order, n=ntx: tops.select_tokens(s, c, r, 1, 0, o, n))


def _specialise(fn, args, kwargs, backend):
    """What JITFunction.run computes for these arguments: (key, signature, constexprs, attrs, options)."""
    kwargs = dict(kwargs, debug=False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    key = (fn.__name__, str(spec), str(options))
    consts = {fn.arg_names[p[0]]: v for p, v in constexprs.items() if len(p) == 1}
    # JSON-able for the worker process: tuple paths as JSON strings
    cx = {json.dumps(list(p)): v for p, v in constexprs.items()}
    at = {json.dumps(list(p)): v for p, v in attrs.items()}
    return key, (signature, cx, at, options.__dict__), consts


def variants(backend, quick=False, keep=lambda kname, label, group: True):
    """The distinct variants of the grid whose launches `keep` accepts, in the grid's order:
    {specialisation key: dict(mod, kname, cargs (what the compile needs), consts, num_warps,
    group (its first launch's), labels (the launches that map to it))}."""
    found = {}
    for label, group, mod, kname, launch in _launches(quick):
        if not keep(kname, label, group):
            continue
        fn = kernel(mod, kname)
        call = _record(fn, launch)
        if call is None:  # no launch (empty shapes)
            continue
        key, cargs, consts = _specialise(fn, *call, backend)
        v = found.setdefault(key, dict(mod=mod, kname=kname, cargs=cargs, consts=consts,
                                       num_warps=call[1].get("num_warps"), group=group, labels=[]))
        v["labels"].append(label)
    return found


def groups(quick=False):
    """Every group of the grid, in the grid's order (no launch is recorded: cheap)."""
    return list(dict.fromkeys(g for _, g, _, _, _ in _launches(quick)))
