"""The web app's CPU jobs. They live apart from ``app.py`` on purpose: a cpu job runs in a
worker process, which imports the job's module by name, and this one imports nothing
of the web stack (no Starlette, no uvicorn), so a worker starts light."""

from __future__ import annotations

import os
import random
import time

import asyncjobs


def hits(tries: int, seed: int | None = None) -> int:
    """Count random points of the unit square inside the quarter circle. With a ``seed``
    the count is reproducible (the tests compare answers)."""
    rand = random.Random(seed).random
    inside = 0
    for _ in range(tries):
        x, y = rand(), rand()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


@asyncjobs.job(timeout=2.0)
def spin(ms: float) -> float:
    """Burn ``ms`` milliseconds of CPU and return the milliseconds spent. A job past 2 s
    is stopped for real (its worker is killed) and fails with ``JobTimeout``."""
    start = time.perf_counter()
    end = start + ms / 1000
    while time.perf_counter() < end:
        pass
    return (time.perf_counter() - start) * 1000


def crash(code: int = 3) -> None:
    """Kill the worker process running this job, as a segfault or the OOM killer would."""
    os._exit(code)
