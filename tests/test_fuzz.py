"""Fuzzing: 10,000 random cases per run of prune, fused_select and select_tokens against the reference.

Each case is drawn from one integer seed (tests/_fuzz_cases.py): target op, sizes
(B, M, T, R, Dv, D, P; M < R, T = R', odd sizes, B = 0, M = 0), dtype, memory
layouts, shared text (Bt = 1), num_texts, k_per_text, multi-text mode, order,
duplicated tokens (letterbox padding), CLIP-like outlier channels, NaN/inf, and
5% illegal arguments. Checks: tests/_fuzz_check.py.

Environment:
- ``LITELVLM_FUZZ_SEED``: master seed (default 13); case i's seed is derived from it.
- ``LITELVLM_FUZZ_CASES``: cases per run (default 10000), split over ``CHUNKS`` tests.
- ``LITELVLM_FUZZ_REPLAY``: comma-separated case seeds: run only those (what a failure prints).

A failure prints each failing case's seed, its arguments and the command that reruns it.
"""

from __future__ import annotations

import hashlib
import os
import time
import traceback

import pytest
from _fuzz_cases import draw
from _fuzz_check import run_case

MASTER_SEED = int(os.environ.get("LITELVLM_FUZZ_SEED", "13"))
NUM_CASES = int(os.environ.get("LITELVLM_FUZZ_CASES", "10000"))
REPLAY = [int(s) for s in os.environ.get("LITELVLM_FUZZ_REPLAY", "").replace(" ", "").split(",") if s]
CHUNKS = 10  # pytest shows progress per chunk; failures in one chunk do not stop the others
MAX_REPORTED = 5  # failing cases printed per chunk


def case_seed(master: int, i: int) -> int:
    """A 56-bit seed for case i: enough to make every case of every master seed distinct."""
    return int.from_bytes(hashlib.blake2b(f"{master}:{i}".encode(), digest_size=7).digest(), "little")


def _run(seeds) -> None:
    failures, near_ties, t0 = [], 0, time.perf_counter()
    for seed in seeds:
        case = draw(seed)
        try:
            near_ties += bool(run_case(case))
        except Exception as e:  # noqa: BLE001  (every kind of failure is reported with its case)
            failures.append((seed, case, e, traceback.format_exc(limit=-3)))
    print(f"{len(seeds)} cases in {time.perf_counter() - t0:.1f} s, {near_ties} with accepted near-tie differences")
    if failures:
        lines = [f"{len(failures)} of {len(seeds)} fuzz cases failed (master seed {MASTER_SEED})"]
        for seed, case, e, tb in failures[:MAX_REPORTED]:
            lines += [f"--- case seed {seed}: {type(e).__name__}: {e}", case.describe(), tb.rstrip(),
                      f"rerun alone: LITELVLM_FUZZ_REPLAY={seed} python -m pytest tests/test_fuzz.py -k replay -s"]
        if len(failures) > MAX_REPORTED:
            lines.append("other failing seeds: " + ",".join(str(f[0]) for f in failures[MAX_REPORTED:]))
        pytest.fail("\n".join(lines), pytrace=False)


@pytest.mark.skipif(bool(REPLAY), reason="LITELVLM_FUZZ_REPLAY is set: only the replayed cases run")
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzz_chunk(chunk):
    lo, hi = chunk * NUM_CASES // CHUNKS, (chunk + 1) * NUM_CASES // CHUNKS
    _run([case_seed(MASTER_SEED, i) for i in range(lo, hi)])


@pytest.mark.skipif(not REPLAY, reason="set LITELVLM_FUZZ_REPLAY=<case seed>[,...] to rerun printed cases")
def test_fuzz_replay():
    for seed in REPLAY:
        print(draw(seed).describe())
    _run(REPLAY)


def test_case_seeds_reproduce():
    """Same seed, same case and same tensors: a printed seed reruns the failing case exactly."""
    from _fuzz_cases import as_inputs, build

    for i in range(20):
        seed = case_seed(MASTER_SEED, i)
        a, b = draw(seed), draw(seed)
        assert a.describe() == b.describe()
        ta, tb = as_inputs(a, build(a)), as_inputs(b, build(b))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert ta[k].equal(tb[k]) or (ta[k].isnan() == tb[k].isnan()).all(), k
