"""Compile every kernel variant the launchers can pick for a CUDA target WITHOUT a GPU
(triton's bundled ptxas and cuobjdump), with the launch's real specialisation, and fail on
any register spill. Run in a process without TRITON_INTERPRET:

    python tests/triton/aot_compile.py [--sm 90] [--jobs 2] [--quick]

How a variant is found: each launcher is called on ``meta`` tensors (shapes and strides,
no memory) over B in {1, 8, 64}, M in {49, 576, 577, 2880, 16384}, T in {0, 1, 2, 16} and
fp16 / bf16 / fp32, with the Triton kernel's ``run`` replaced by a recorder. The recorded
arguments go through triton's own binder for the target (``create_function_from_signature``
+ ``JITFunction._pack_args``, what ``kernel[grid](...)`` does on a GPU): ints equal to 1
become constants, multiples of 16 and 16-byte aligned pointers get divisibility hints,
``do_not_specialize`` scalars stay plain. Variants are deduplicated by that specialisation
key and compiled in ``--jobs`` worker processes, each variant in a fresh triton cache so
that ptxas runs and its log ("bytes spill stores") is read.

Figures are cached in ``$LITELVLM_AOT_CACHE`` (default ~/.cache/litelvlm/aot.json) under a
hash of triton's and ptxas's versions, the kernel's source with everything it calls
(``JITFunction.cache_key``), the specialisation, the options and the target: a rerun on
unchanged code reads them back (each came from a real ptxas run); ``--no-cache`` forces
every compile.

One line per compiled variant: kernel, meta-parameters, registers, stack bytes
(``cuobjdump -res-usage``), ptxas spill stores / loads, SASS instruction count, and the
(B, M, T, dtype) launches that map to it. Exit status 1 when a variant fails to compile,
or has STACK > 0 or spill stores > 0.

Under a second triton version (the GPU machines' 3.6 while this environment has 3.9),
run it with that venv's python; it needs no install of this package there (``_package``
loads the repository's triton_ops/ by itself) and runs unchanged under 3.6 and 3.9:

    python3 -m venv /tmp/tri36venv
    /tmp/tri36venv/bin/pip install torch==2.13.0 "triton==3.6.*" "numpy<2.3"
    /tmp/tri36venv/bin/python tests/triton/aot_compile.py

The versions' figures never mix in the cache (both versions are in the key);
docs/triton.md states both versions' results.
"""

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

PKG = os.environ.get("LITELVLM_AOT_PACKAGE", "litelvlm_kernels.triton_ops")  # another copy, for experiments
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BS = (1, 8, 64)
MS = (49, 576, 577, 2880, 16384)
TS = (0, 1, 2, 16)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DV = D = 1024  # CLIP ViT-L/14 widths (any multiple of 16 >= 128 specialises the same way)
R = 192
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


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


def _kernel(mod, kname):
    """The @triton.jit function kname of PKG's module mod."""
    _package()
    return getattr(importlib.import_module(f"{PKG}.{mod}"), kname)


class _Recorded(Exception):
    pass


def _record(kernel, launch):
    """(args, kwargs) that `launch` hands to `kernel[grid](...)`, without running it."""
    got = {}

    def run(*args, grid, warmup, **kwargs):
        got["call"] = (args, kwargs)
        raise _Recorded

    kernel.run = run  # the instance attribute shadows JITFunction.run for this kernel only
    try:
        launch()
    except _Recorded:
        pass
    finally:
        del kernel.run
    return got.get("call")


def _launches(quick):
    """(label, module, kernel name, launch thunk) for every launch of the grid."""
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
                yield (f"B={B} M={M} {dn}", "cls_contribution", "_cls_contribution_kernel",
                       lambda q=q, k=keys, v=values: tops.cls_contribution(q, k, v))
                for T in ts:
                    w = torch.empty(B, T, DV, dtype=torch.float32, **meta)
                    b = torch.empty(B, T, dtype=torch.float32, **meta)
                    r = min(R, M)
                    lab = f"B={B} M={M} T={T} {dn}"
                    if T:
                        yield (lab, "text_similarity", "_text_similarity_kernel",
                               lambda h=hidden, w=w, b=b: tops.text_similarity(h, w, b, 1e-5))
                    nt = torch.empty(B, dtype=torch.int64, **meta)
                    flags = [(None, "official"), (nt, "spatial")] if dn == "fp16" else [(None, "official")]
                    for ntx, order in flags:
                        lab2 = lab + ("" if ntx is None else " num_texts") + f" {order}"
                        yield (lab2, "fused_select", "_fused_select_kernel",
                               lambda h=hidden, w=w, b=b, q=q, k=keys, v=values, r=r, o=order, n=ntx:
                               tops.fused_select(h, w, b, 1e-5, q, k, v, r, order=o, num_texts=n))
                        if dn == "fp32":
                            s = torch.empty(B, T, M, dtype=torch.float32, **meta)
                            c = torch.empty(B, M, dtype=torch.float32, **meta)
                            yield (lab2, "select_tokens", "_select_tokens_kernel",
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


def _toolchain():
    """(triton version, ptxas version) in the figure cache's key: figures of one triton (or
    of a ptxas swapped in with TRITON_PTXAS_PATH) are never read back under another."""
    try:
        from triton import knobs

        ptxas = knobs.nvidia.ptxas.version
    except Exception:  # a triton without knobs.nvidia.ptxas: the bundled one's banner
        ptxas = (_tool("ptxas", "--version").strip().splitlines() or ["?"])[-1]
    return triton.__version__, ptxas


def _tool(name, *args):
    return subprocess.run([os.path.join(BIN, name), *args], capture_output=True, text=True).stdout


def _compile(task):
    """Worker: compile one variant in a fresh cache; return its resource figures."""
    mod, kname, (signature, constexprs, attrs, options), sm = task
    fn = _kernel(mod, kname)
    from triton import knobs

    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        k = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", sm, 32),
                           options=options)
    ptx = log.getvalue()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        res = _tool("cuobjdump", "-res-usage", f.name)
        sass = _tool("cuobjdump", "-sass", f.name)
    reg = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptx)
    n_sass = len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass, flags=re.M))
    return dict(reg=int(reg.group(1)) if reg else -1, stack=int(stack.group(1)) if stack else -1,
                spill_st=int(spill.group(1)) if spill else -1, spill_ld=int(spill.group(2)) if spill else -1,
                sass=n_sass, stl=len(re.findall(r"\bSTL\b", sass)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sm", type=int, default=90)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="B in {1, 64}, M in {576, 16384}, T = 2, fp16")
    ap.add_argument("--match", default="", help="only launches whose 'kernel label' matches this regex")
    ap.add_argument("--no-cache", action="store_true", help="compile every variant, ignore cached figures")
    ap.add_argument("--cached-only", action="store_true", help="report the cached variants, compile nothing")
    a = ap.parse_args(argv)
    backend = make_backend(GPUTarget("cuda", a.sm, 32))
    variants = {}  # key -> [module, kernel name, compile args, constexprs, labels]
    for label, mod, kname, launch in _launches(a.quick):
        if a.match and not re.search(a.match, f"{kname} {label}"):
            continue
        fn = _kernel(mod, kname)
        call = _record(fn, launch)
        if call is None:  # no launch (empty shapes)
            continue
        key, cargs, consts = _specialise(fn, *call, backend)
        variants.setdefault(key, [mod, kname, cargs, consts, call[1].get("num_warps"), []])[5].append(label)
    tools = _toolchain()
    print(f"{len(variants)} distinct variants (by triton's specialisation key) for sm_{a.sm}, "
          f"triton {triton.__version__} (ptxas {tools[1]}), {a.jobs} jobs", flush=True)
    cache_path = os.environ.get("LITELVLM_AOT_CACHE", os.path.expanduser("~/.cache/litelvlm/aot.json"))
    cache = {} if a.no_cache else _load(cache_path)
    failed = bad = 0
    todo = {}
    results = {}
    for key, v in variants.items():
        fn = _kernel(v[0], v[1])
        h = hashlib.sha256(repr((tools, fn.cache_key, key, a.sm)).encode()).hexdigest()
        if h in cache:
            results[key] = cache[h]
        else:
            todo[key] = h
    print(f"{len(results)} read from {cache_path}, {len(todo)} to compile", flush=True)
    if a.cached_only:
        variants = {k: v for k, v in variants.items() if k in results}
        todo = {}
    tasks = {k: (variants[k][0], variants[k][1], variants[k][2], a.sm) for k in todo}
    for key, r in _compile_all(tasks, a.jobs):
        results[key] = r
        if "error" not in r:
            cache[todo[key]] = r
            _save(cache_path, cache)
    for key in sorted(variants, key=lambda k: (variants[k][1], str(variants[k][3]))):
        mod, kname, _, consts, nw, labels = variants[key]
        r = results[key]
        what = f"{kname} {consts} num_warps={nw}"
        if "error" in r:
            failed += 1
            print(f"FAIL {what}: {r['error']}")
            continue
        spills = r["stack"] != 0 or r["spill_st"] != 0
        bad += spills
        print(f"{'SPILL' if spills else 'ok   '} {what} regs={r['reg']} stack={r['stack']} "
              f"spill_stores={r['spill_st']} spill_loads={r['spill_ld']} STL={r['stl']} sass={r['sass']} "
              f"<- {len(labels)} launches, e.g. {labels[0]}")
    print(f"summary: {len(variants)} variants, {failed} failed to compile, {bad} with stack or spill stores > 0")
    return 1 if failed or bad else 0


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save(path, cache):
    # Merge with what another run saved meanwhile (several processes may share the file).
    cache.update({k: v for k, v in _load(path).items() if k not in cache})
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cache, f)
    os.replace(tmp, path)


def _compile_all(tasks, jobs):
    """(key, figures) of every task, compiled in `jobs` long-lived worker processes (each
    imports torch and triton once, not once per variant: about 2.5 s saved per variant).
    A worker that dies (a compiler crash) breaks the pool: the variants not yet done are
    then compiled one child process each, so the crash fails its own variant only."""
    if not tasks:
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that has started torch's threads
    with cf.ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx) as ex:
        futs = {ex.submit(_compile_fresh_cache, task): key for key, task in tasks.items()}
        for fut in cf.as_completed(futs):
            key = futs[fut]
            try:
                yield key, fut.result()
            except cf.process.BrokenProcessPool:
                yield key, _compile_in_subprocess(tasks[key])
            except Exception as e:  # a compile error: this variant fails, the others go on
                yield key, dict(error=f"{type(e).__name__}: {(str(e).strip().splitlines() or ['?'])[-1]}"[:1500])


def _compile_fresh_cache(task):
    """_compile in an empty triton cache, so that ptxas runs and logs the spills."""
    with tempfile.TemporaryDirectory(prefix="aot-triton-") as d:
        os.environ["TRITON_CACHE_DIR"] = d
        return _compile(_rebuild(task))


def _compile_in_subprocess(task):
    """One variant in a child process (after a worker crash): a crash fails this variant only."""
    with tempfile.TemporaryDirectory(prefix="aot-triton-") as d:
        env = dict(os.environ, TRITON_CACHE_DIR=d)
        env.pop("TRITON_INTERPRET", None)
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"],
                           input=json.dumps(task, default=_enc), capture_output=True, text=True, env=env)
    last = p.stdout.strip().splitlines()[-1:] if p.stdout.strip() else []
    if p.returncode == 0 and last:
        return json.loads(last[0])
    return dict(error=f"exit {p.returncode}: " + (p.stderr.strip().splitlines() or ["?"])[-1][:1500])


def _enc(o):
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o))


def _rebuild(task):
    """The task as ASTSource expects it, from its JSON form (tuple keys and values were
    turned into strings and lists so that it can cross a process boundary)."""
    mod, kname, (signature, constexprs, attrs, options), sm = json.loads(json.dumps(task, default=_enc))
    constexprs = {tuple(json.loads(k)): v for k, v in constexprs.items()}
    attrs = {tuple(json.loads(k)): v for k, v in attrs.items()}
    options = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
               for k, v in options.items()}
    return mod, kname, (signature, constexprs, attrs, options), sm


def _worker():
    print(json.dumps(_compile(_rebuild(json.loads(sys.stdin.read())))))


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker()
    else:
        sys.exit(main())
