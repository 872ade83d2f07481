"""Timing and result rows shared by every benchmark script.

One row per measurement, long format:
op, provider, shape (dict), dtype, p50_ms / p20_ms / p80_ms, device, torch and
triton versions, timestamp, plus whatever the script adds (GB/s, ratios).
Markdown tables and plots are drawn from these files by ``benchmarks.report``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from typing import Callable, Dict, Iterable, List, Optional

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The committed rows the docs quote. Only an explicit publishing command writes here (``--publish``,
#: ``--out benchmarks/results``, ``make publish-bench``), never a quick / smoke run.
RESULTS_DIR = os.path.join(_HERE, "results")
#: Where every other run writes (git-ignored): a casual run cannot overwrite what the docs quote.
OUT_DIR = os.path.join(_HERE, "out")
QUANTILES = (0.5, 0.2, 0.8)


def add_output_args(parser, out_help: str = "directory the rows go to") -> None:
    """Add the mutually exclusive ``--out DIR`` and ``--publish`` options to a benchmark's parser.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The script's parser; ``output_dir`` reads the two options back.
    out_help : str
        What ``--out`` names, for the help text.
    """
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--out", default=None, metavar="DIR",
                   help=f"{out_help} (default benchmarks/out/, git-ignored; benchmarks/results/ publishes)")
    g.add_argument("--publish", action="store_true",
                   help="write to benchmarks/results/: the committed rows the docs quote (never with a smoke run)")


def parse_run_args(parser, argv=None, smoke_flag: Optional[str] = None) -> tuple:
    """The end of every benchmark's argument parsing: ``--no-write`` and the output options added, the arguments
    parsed, the output directory chosen (``output_dir``; ``smoke_flag``: the flag that makes this run a smoke
    run, e.g. "--quick", if the parser has it), and ``--threads`` applied when the parser has it and it is set.

    Returns ``(args, directory)``.
    """
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    add_output_args(parser)
    args = parser.parse_args(argv)
    smoke = smoke_flag if smoke_flag and getattr(args, smoke_flag.lstrip("-").replace("-", "_"), False) else None
    directory = output_dir(parser, args, smoke)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return args, directory


def publishes(path: str) -> bool:
    """Whether ``path`` is ``RESULTS_DIR`` or inside it (symlinks and ``..`` resolved)."""
    real, results = os.path.realpath(path), os.path.realpath(RESULTS_DIR)
    return os.path.commonpath([real, results]) == results


def output_dir(parser, args, smoke: Optional[str] = None) -> str:
    """The directory a run writes: ``RESULTS_DIR`` with ``--publish``, else ``--out``, else ``OUT_DIR``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Reports a refused combination (``parser.error``: usage, message, exit status 2).
    args : argparse.Namespace
        Parsed options; ``publish`` (absent: False) and ``out`` (absent or None: the default) are read.
    smoke : str, optional
        The flag that makes this a quick / smoke run (``"--quick"``), or None for a real run. A smoke run's
        rows never go to ``RESULTS_DIR``, whatever flag names it.

    Returns
    -------
    str
        The output directory (not created here).
    """
    publish, out = getattr(args, "publish", False), getattr(args, "out", None)
    directory = RESULTS_DIR if publish else (out or OUT_DIR)
    if smoke and publishes(directory):
        given = "--publish" if publish else f"--out {out}"
        parser.error(f"{smoke} is a smoke run: its rows never go to benchmarks/results/ ({given}); "
                     f"drop {smoke} to publish, or write them elsewhere")
    return directory


def device_name(device) -> str:
    """Human name of the device: the GPU's name, or the CPU model and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def device_slug(device) -> str:
    """File-name-safe name: 'nvidia-h100-80gb-hbm3', 'cpu'."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def _triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:  # triton absent or broken: a benchmark row still records that
        return None


def measure(fn: Callable[[], object], device, *, cuda_graph: bool = False,
            warmup_ms: float = 25.0, rep_ms: float = 100.0, min_runs: int = 10) -> Dict[str, float]:
    """p50/p20/p80 of ``fn()`` in milliseconds.

    CUDA: ``triton.testing.do_bench`` (or ``do_bench_cudagraph`` when
    ``cuda_graph``, which takes launch overhead out, as a serving stack would).
    CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` runs; quantiles
    over its blocks' per-call times.
    """
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing as tt

        if cuda_graph:
            q = tt.do_bench_cudagraph(fn, rep=rep_ms, quantiles=list(QUANTILES))
        else:
            q = tt.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES))
        return {"p50_ms": float(q[0]), "p20_ms": float(q[1]), "p80_ms": float(q[2])}
    if cuda_graph:
        raise ValueError("cuda_graph=True needs a CUDA device")
    import torch.utils.benchmark as tb

    fn()  # warm-up: first-call costs (compilation, allocation) are not steady state
    timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=rep_ms / 1000.0)
    times = sorted(m.times)
    while len(times) < min_runs:
        times = sorted(times + timer.blocked_autorange(min_run_time=rep_ms / 1000.0).times)
    t = torch.tensor(times, dtype=torch.float64) * 1e3
    qs = torch.quantile(t, torch.tensor(QUANTILES, dtype=torch.float64))
    return {"p50_ms": float(qs[0]), "p20_ms": float(qs[1]), "p80_ms": float(qs[2])}


def git_commit() -> str:
    """The repository's HEAD (short), with "-dirty" when tracked files differ from it: every row names the code
    it measured. Results files (benchmarks/results/) are outputs, not code: one benchmark's fresh rows do not
    make the next benchmark of the same run "dirty"."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("-dirty" if dirty else "")


def make_row(op: str, provider: str, shape: dict, dtype, timing: Dict[str, float], *,
             device="cpu", **extra) -> dict:
    row = {
        "op": op,
        "provider": provider,
        "shape": dict(shape),
        "dtype": str(dtype).replace("torch.", ""),
        **timing,
        "device": device_name(device),
        "device_type": torch.device(device).type,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "commit": git_commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    row.update(extra)
    return row


def write_rows(rows: Iterable[dict], name: str, device="cpu", directory: Optional[str] = None) -> str:
    """Write rows to ``<directory>/<name>-<device slug>.json`` (default ``OUT_DIR``) and return the path."""
    rows: List[dict] = list(rows)
    directory = directory or OUT_DIR
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}-{device_slug(device)}.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    return path


def write_report(rows: List[dict], name: str, title: str, blurb: str, table: str, device="cpu",
                 directory: Optional[str] = None) -> List[str]:
    """Write ``<name>-<device slug>.json`` (the rows) and ``.md`` ("# <title> on <device> (commit ...)", the
    blurb, the table) in ``directory`` (default ``OUT_DIR``); returns both paths."""
    directory = directory or OUT_DIR
    path = write_rows(rows, name, device, directory)
    md = os.path.join(directory, f"{name}-{device_slug(device)}.md")
    with open(md, "w") as f:
        f.write(f"# {title} on {rows[0]['device']} (commit {rows[0]['commit']})\n\n{blurb}\n\n{table}\n")
    return [path, md]


def markdown_table(rows: Iterable[dict], columns: List[str]) -> str:
    """A plain markdown table of the given columns (shape dicts are flattened)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, r.get("shape", {}).get(c, ""))
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_copy(device, nbytes: int = 1 << 28) -> Dict[str, float]:
    """Time a device-to-device copy of ``nbytes``: ``measure``'s quantiles plus ``gbs``.

    ``gbs`` counts bytes read + written (2 * nbytes) per second at the median: the
    100% mark of docs/design.md section 7, measured on the same card as the kernel.
    256 MiB by default: 5x an H100's 50 MB L2, so the copy runs from HBM.
    """
    device = torch.device(device)
    src = torch.randn(nbytes // 4, dtype=torch.float32, device=device)  # not zeros (see docs/benchmarks.md)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device)
    return {**t, "gbs": 2 * nbytes / (t["p50_ms"] * 1e-3) / 1e9, "bytes": 2 * nbytes}


def copy_bandwidth_gbs(device, nbytes: int = 1 << 28) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second, in GB/s).

    The 100% mark of docs/design.md section 7, measured on the same card as the kernel.
    """
    return measure_copy(device, nbytes)["gbs"]


def wall_per_call(fn: Callable[[], object], device, *, calls: int = 100, repeats: int = 7,
                  warmup: int = 20) -> Dict[str, float]:
    """Host wall-clock time per call of ``fn`` called back to back (p50/p20/p80 over repeats, ms).

    What an eager caller pays per call: Python, dispatch and launch overhead, or the
    device time when that is longer (the queue fills and the host waits). Each repeat
    runs ``calls`` calls and synchronises once at the end, so one synchronisation
    (~10 us) is spread over 100 calls.
    """
    import time

    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        per_call.append((time.perf_counter() - t0) * 1e3 / calls)
    t = torch.tensor(per_call, dtype=torch.float64)
    qs = torch.quantile(t, torch.tensor(QUANTILES, dtype=torch.float64))
    return {"p50_ms": float(qs[0]), "p20_ms": float(qs[1]), "p80_ms": float(qs[2])}


class RowSink:
    """Rows written to ``<directory>/<name>-<device slug>.json`` (default ``OUT_DIR``) as each one is added.

    ``append=True`` keeps the rows already in the file (another step of the same run wrote them).

    The whole file is rewritten (a temporary file, then ``os.replace``) on every
    ``add``, so a run that is killed part-way leaves every row measured before the
    kill in a valid JSON file. Rows are small (~1 kB): rewriting 100 of them costs
    well under a millisecond.
    """

    def __init__(self, name: str, device="cpu", directory: Optional[str] = None, append: bool = False):
        directory = directory or OUT_DIR
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{name}-{device_slug(device)}.json")
        self.rows: List[dict] = []  # a fresh file by default: an older run's rows are replaced, as write_rows does
        if append and os.path.exists(self.path):  # a later step of the same run adds to the file
            with open(self.path) as f:
                old = json.load(f)
            self.rows = old if isinstance(old, list) else []

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.rows, f, indent=1)
        os.replace(tmp, self.path)
        return row
