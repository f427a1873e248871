"""Job functions for the cluster benchmarks. Nodes import them by reference, so they
live in a module of their own, importable as ``benchmarks.cluster_jobs`` with the
repository root on ``sys.path`` (nodes are started with it on ``PYTHONPATH``, from the
repository root). Nothing heavy is imported here: every node loop and worker imports it.
"""

from __future__ import annotations

import asyncio
import os
import time


def noop(i: int) -> int:
    """A plain def: runs as a cpu job (in a node's worker process)."""
    return i


async def noop_async(i: int) -> int:
    """An async def: runs as an io job (on a node's event loop)."""
    return i


def pid_after(delay_s: float) -> int:
    """Warm-up cpu job: which worker process ran it, after a sleep (so that one worker
    cannot take them all)."""
    time.sleep(delay_s)
    return os.getpid()


async def pid_after_async(delay_s: float) -> int:
    """Warm-up io job: which loop process ran it, after a sleep."""
    await asyncio.sleep(delay_s)
    return os.getpid()



def _stamp(stamps: str, i: int) -> None:
    with open(stamps, "a") as f:
        f.write(f"{time.monotonic():.6f} {os.getpid()} {i}\n")


async def stamp_then_wait(stamps: str, gate: str, i: int) -> int:
    """A slow io job for the restart benchmark: appends ``monotonic() pid i`` to the file
    ``stamps`` as it starts (``CLOCK_MONOTONIC`` is one clock for every process of the
    machine), then waits until the file ``gate`` exists."""
    _stamp(stamps, i)
    while True:
        if os.path.exists(gate):  # noqa: ASYNC240 - a stat every 50 ms
            return i
        await asyncio.sleep(0.05)
