"""Running a test's calls from several threads at once (the server pattern)."""

from __future__ import annotations

import threading


def run_in_threads(fn, jobs: list, threads: int = 2) -> list:
    """fn(job) for every job, ``threads`` workers taking jobs round-robin; exceptions are re-raised."""
    out, errors = [None] * len(jobs), []

    def work(start):
        try:
            for i in range(start, len(jobs), threads):
                out[i] = fn(jobs[i])
        except BaseException as exc:  # noqa: B036 - handed back to the test thread
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return out
