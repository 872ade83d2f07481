"""Wall times shown to users: interleaved rounds, medians with their spread, ratios flagged when noise can flip them.

The demo (``python -m litelvlm_kernels.demo``), ``integrations.metrics.prefill_metrics`` and the examples time
two or more callables the same way:

* interleaved: each round calls every callable once (the order rotated from round to round), so a burst of load
  from another process lands on all of them instead of on whichever ran during it;
* summarised as p50 with the p20-p80 spread over the rounds (``Timing``);
* a ratio of two timings is flagged "within noise" when their p20-p80 intervals overlap (the ratio could then
  read the other way on another run), and "too few rounds" below ``MIN_ROUNDS`` rounds, where the spread itself
  is not measured.

``benchmarks/`` has its own timers (``do_bench`` on CUDA, rows written to files); this module is the runtime
package's, with no dependency beyond torch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, Hashable, Mapping, Sequence

import torch

__all__ = ["MIN_ROUNDS", "Timing", "summarize", "interleaved", "noise_flag", "format_ratio"]

MIN_ROUNDS = 3  # fewer rounds give no spread to judge a ratio by


@dataclasses.dataclass(frozen=True)
class Timing:
    """p50 / p20 / p80 of one callable's per-call wall times over ``rounds`` rounds, in milliseconds."""

    p50_ms: float
    p20_ms: float
    p80_ms: float
    rounds: int

    def __str__(self) -> str:
        return f"{_num(self.p50_ms)} ms (p20-p80 {_num(self.p20_ms)}-{_num(self.p80_ms)})"


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def _quantile(sorted_ms: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's and torch.quantile's default)."""
    pos = q * (len(sorted_ms) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float]) -> Timing:
    """The ``Timing`` of per-call times ``samples_ms`` (one per round).

    Raises
    ------
    ValueError
        When ``samples_ms`` is empty or holds a negative or non-finite time.
    """
    s = sorted(float(x) for x in samples_ms)
    if not s:
        raise ValueError("samples_ms: no times to summarise")
    if not all(0.0 <= x < float("inf") for x in s):
        raise ValueError(f"samples_ms: times must be finite and >= 0, got {list(samples_ms)}")
    return Timing(_quantile(s, 0.5), _quantile(s, 0.2), _quantile(s, 0.8), len(s))


def interleaved(fns: Mapping[Hashable, Callable[[], object]], *, rounds: int, device=None,
                warmup: int = 1) -> Dict[Hashable, Timing]:
    """Time each callable of ``fns`` over ``rounds`` interleaved rounds.

    Parameters
    ----------
    fns : mapping of name -> callable
        Called with no arguments.
    rounds : int
        Timed calls per callable (>= 1; ``MIN_ROUNDS`` or more for a spread that means something).
    device : torch.device or str, optional
        A CUDA device is synchronised after every call, so the time is the work's, not the launch's.
    warmup : int
        Untimed calls of each callable first (caches, allocator, lazy imports).

    Returns
    -------
    dict
        name -> ``Timing``.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds <= 0:
        raise ValueError(f"rounds must be an int > 0, got {rounds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    keys = list(fns)
    if not keys:
        raise ValueError("fns: nothing to time")
    cuda = device is not None and torch.device(device).type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for k in keys:
            fns[k]()
    sync()
    samples: Dict[Hashable, list] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotated: no callable always runs first
            t0 = time.perf_counter()
            fns[k]()
            sync()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: summarize(v) for k, v in samples.items()}


def noise_flag(a: Timing, b: Timing) -> str:
    """"" when ``a`` and ``b`` differ beyond their spread; else why their ratio may read the other way on
    another run: "too few rounds" (fewer than ``MIN_ROUNDS``) or "within noise" (p20-p80 intervals overlap)."""
    if min(a.rounds, b.rounds) < MIN_ROUNDS:
        return "too few rounds"
    if a.p20_ms <= b.p80_ms and b.p20_ms <= a.p80_ms:
        return "within noise"
    return ""


def format_ratio(num: Timing, den: Timing, spec: str = ".2f", suffix: str = "") -> str:
    """``num.p50 / den.p50`` formatted with ``spec`` (and ``suffix``, e.g. "x"), followed by the noise flag in
    parentheses when there is one: "0.41", "1.07 (within noise)"."""
    value = num.p50_ms / den.p50_ms if den.p50_ms > 0 else float("inf")
    flag = noise_flag(num, den)
    return f"{value:{spec}}{suffix}" + (f" ({flag})" if flag else "")
