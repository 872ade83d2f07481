"""Compile every kernel variant the launchers can pick for a CUDA target WITHOUT a GPU
(triton's bundled ptxas and cuobjdump), with the launch's real specialisation, and fail on
any register spill. Run in a process without TRITON_INTERPRET:

    python tests/triton/aot_compile.py [--sm 90] [--jobs 2] [--quick] [--groups G,...] [--jsonl]

The variants are those of tests/triton/aot_grid.py: each launcher called on ``meta`` tensors
over B in {1, 8, 64}, M in {49, 576, 577, 2880, 16384}, T in {0, 1, 2, 16} and fp16 / bf16 /
fp32, through triton's own binder for the target, deduplicated by the specialisation key, and
grouped by kernel and dtype (``fused_select-fp16``, ...; ``--groups`` picks some, in order).
They are compiled in ``--jobs`` worker processes, each variant in a fresh triton cache so
that ptxas runs and its log ("bytes spill stores") is read, one group after another; a
group's lines are printed as soon as all its variants are known, so that a run from scratch
(105 variants, 2-5 minutes on 2 cores) shows its progress.

Figures are read back, never recomputed, where a real ptxas run already gave them for the
same key: a hash of triton's and ptxas's versions, the kernel's source with everything it
calls (``JITFunction.cache_key``), the specialisation, the options and the target. Two
places: ``$LITELVLM_AOT_CACHE`` (default ~/.cache/litelvlm/aot.json; every compile here
adds to it), then ``--seed`` (default tests/triton/aot_figures.json, committed, read-only,
rewritten only by ``--update-seed`` from a full run: a fresh CI machine then compiles only
the variants whose source or specialisation changed since; ``$LITELVLM_AOT_SEED`` names
another file, or none when empty). ``--no-cache`` ignores both.

One line per compiled variant: kernel, meta-parameters, registers, stack bytes
(``cuobjdump -res-usage``), ptxas spill stores / loads, SASS instruction count, and the
(B, M, T, dtype) launches that map to it; one line per group; a summary line. ``--jsonl``
prints JSON objects instead, one per line: ``plan`` first, one ``group`` per group as it
completes, ``summary`` last (tests/triton/test_compile_sm90.py reads them). Exit status 1
when a variant fails to compile, or has STACK > 0 or spill stores > 0.

Under a second triton version (the GPU machines' 3.6 while this environment has 3.9),
run it with that venv's python; it needs no install of this package there
(``aot_grid._package`` loads the repository's triton_ops/ by itself) and runs unchanged
under 3.6 and 3.9:

    python3 -m venv /tmp/tri36venv
    /tmp/tri36venv/bin/pip install torch==2.13.0 "triton==3.6.*" "numpy<2.3"
    /tmp/tri36venv/bin/python tests/triton/aot_compile.py

The versions' figures never mix (both versions are in the key); docs/triton.md states both
versions' results.
"""

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)

import aot_grid  # noqa: E402  (tests/triton: this script's directory)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# LITELVLM_AOT_SEED="" reads no seed (a CI run that recompiles the whole grid), or names another file
SEED = os.environ.get("LITELVLM_AOT_SEED", os.path.join(os.path.dirname(os.path.abspath(__file__)), "aot_figures.json"))


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
    fn = aot_grid.kernel(mod, kname)
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


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sm", type=int, default=90)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="B in {1, 64}, M in {576, 16384}, T = 2, fp16")
    ap.add_argument("--match", default="", help="only launches whose 'kernel label' matches this regex")
    ap.add_argument("--groups", default="", help="comma-separated groups to check, in this order (default: all)")
    ap.add_argument("--jsonl", action="store_true", help="JSON lines (plan, one per group, summary), not a table")
    ap.add_argument("--no-cache", action="store_true", help="compile every variant, ignore cached and seed figures")
    ap.add_argument("--cached-only", action="store_true", help="report the cached variants, compile nothing")
    ap.add_argument("--seed", default=SEED, help="read-only figures read after the cache ('' for none)")
    ap.add_argument("--update-seed", action="store_true", help="rewrite --seed with the full grid's figures")
    a = ap.parse_args(argv)
    if a.update_seed and (a.quick or a.match or a.groups or a.cached_only or not a.seed):
        ap.error("--update-seed writes the full grid's figures to --seed: "
                 "not with --quick, --match, --groups, --cached-only or an empty --seed")
    return ap, a


def main(argv=None) -> int:
    ap, a = _parse(argv)
    t0 = time.monotonic()
    backend = make_backend(GPUTarget("cuda", a.sm, 32))
    grid_groups = aot_grid.groups(a.quick)
    wanted = [g for g in a.groups.split(",") if g] or grid_groups
    unknown = [g for g in wanted if g not in grid_groups]
    if unknown:
        ap.error(f"--groups: no group {', '.join(unknown)} in the grid; it has {', '.join(grid_groups)}")
    variants = aot_grid.variants(backend, a.quick, lambda kname, label, group: group in wanted and (
        not a.match or re.search(a.match, f"{kname} {label}")))
    tools = _toolchain()
    cache_path = os.environ.get("LITELVLM_AOT_CACHE", os.path.expanduser("~/.cache/litelvlm/aot.json"))
    cache = {} if a.no_cache else _load(cache_path)
    seed = {} if a.no_cache or not a.seed else _load(a.seed)
    hashes = {key: _figure_key(tools, v, key, a.sm) for key, v in variants.items()}
    results = {key: cache.get(h, seed.get(h)) for key, h in hashes.items() if h in cache or h in seed}
    if a.cached_only:
        variants = {k: v for k, v in variants.items() if k in results}
    order = {g: i for i, g in enumerate(wanted)}
    todo = sorted((k for k in variants if k not in results), key=lambda k: order[variants[k]["group"]])
    report = _Report(a.jsonl, variants, wanted, t0)
    hs = hashes.values()
    report.plan(a.sm, tools, a.jobs, cache_path, a.seed, grid_groups, from_cache=sum(h in cache for h in hs),
                from_seed=sum(h not in cache and h in seed for h in hs), to_compile=len(todo),
                not_in_seed=sum(h not in seed for h in hs))
    for key in results:
        report.done(key, results[key])
    tasks = {k: (variants[k]["mod"], variants[k]["kname"], variants[k]["cargs"], a.sm) for k in todo}
    for key, r in _compile_all(tasks, a.jobs):
        if "error" not in r:
            cache[hashes[key]] = r
            _save(cache_path, cache)
        report.done(key, r)
    report.summary()
    if a.update_seed:
        _write_seed(a.seed, variants, hashes, report.results, tools)
    return 1 if report.failed or report.bad else 0


def _figure_key(tools, v, key, sm):
    """The figures' cache key (module docstring): unchanged from earlier versions of this script,
    so that caches written by them stay valid."""
    fn = aot_grid.kernel(v["mod"], v["kname"])
    return hashlib.sha256(repr((tools, fn.cache_key, key, sm)).encode()).hexdigest()


class _Report:
    """Prints each group (table lines or one JSON line) once all its variants are known."""

    def __init__(self, jsonl, variants, groups, t0):
        self.jsonl, self.variants, self.t0 = jsonl, variants, t0
        self.members = {g: [k for k, v in variants.items() if v["group"] == g] for g in groups}
        self.results = {}
        self.failed = self.bad = 0

    def _emit(self, event, text):
        print(json.dumps(event) if self.jsonl else text, flush=True)

    def plan(self, sm, tools, jobs, cache_path, seed_path, grid_groups, **counts):
        n = len(self.variants)
        self._emit(dict(event="plan", sm=sm, triton=tools[0], ptxas=tools[1], variants=n, grid_groups=grid_groups,
                        groups={g: len(m) for g, m in self.members.items()}, **counts),
                   f"{n} distinct variants (by triton's specialisation key) in {len(self.members)} groups for "
                   f"sm_{sm}, triton {tools[0]} (ptxas {tools[1]}), {jobs} jobs\n"
                   f"{counts['from_cache']} read from {cache_path}, {counts['from_seed']} from the seed "
                   f"{seed_path or '(none)'}, {counts['to_compile']} to compile")
        for g, m in self.members.items():
            if not m:
                self._group(g)

    def done(self, key, r):
        self.results[key] = r
        g = self.variants[key]["group"]
        if all(k in self.results for k in self.members[g]):
            self._group(g)

    def _group(self, g):
        rows, lines = [], []
        failed = bad = 0
        for key in sorted(self.members[g], key=lambda k: (self.variants[k]["kname"], str(self.variants[k]["consts"]))):
            v, r = self.variants[key], self.results[key]
            what = f"{v['kname']} {v['consts']} num_warps={v['num_warps']}"
            if "error" in r:
                failed += 1
                line = f"FAIL {what}: {r['error']}"
            else:
                spills = r["stack"] != 0 or r["spill_st"] != 0
                bad += spills
                line = (f"{'SPILL' if spills else 'ok   '} {what} regs={r['reg']} stack={r['stack']} "
                        f"spill_stores={r['spill_st']} spill_loads={r['spill_ld']} STL={r['stl']} sass={r['sass']} "
                        f"<- {len(v['labels'])} launches, e.g. {v['labels'][0]}")
            lines.append(line)
            rows.append(dict(kernel=v["kname"], line=line, **{k: r[k] for k in r if k != "what"}))
        self.failed += failed
        self.bad += bad
        t = time.monotonic() - self.t0
        head = f"group {g}: {len(rows)} variants, {failed} failed to compile, {bad} with stack or spill stores > 0"
        self._emit(dict(event="group", group=g, variants=rows, failed=failed, spills=bad, elapsed_s=round(t, 1)),
                   "\n".join(lines + [f"{head} ({t:.0f} s)"]))

    def summary(self):
        n = len(self.variants)
        self._emit(dict(event="summary", variants=n, failed=self.failed, spills=self.bad, groups=list(self.members)),
                   f"summary: {n} variants, {self.failed} failed to compile, {self.bad} with stack or spill stores > 0")


def _write_seed(path, variants, hashes, results, tools):
    """The figures of every variant that compiled, with what it is (for a reader of the diff);
    only this run's entries, so figures of kernels that changed since do not pile up."""
    seed = {hashes[k]: dict(results[k], what=f"{v['kname']} {v['group']} {v['consts']} num_warps={v['num_warps']} "
                                             f"(triton {tools[0]}, ptxas {tools[1]})")
            for k, v in variants.items() if "error" not in results[k]}
    with open(path + ".tmp", "w") as f:  # one variant a line: a kernel change shows as a few changed lines
        f.write("{\n" + ",\n".join(f"{json.dumps(h)}: {json.dumps(seed[h], sort_keys=True)}" for h in sorted(seed))
                + "\n}\n")
    os.replace(path + ".tmp", path)
    print(f"seed: {len(seed)} variants' figures written to {path}", file=sys.stderr)


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
