"""Jobs for the client tests: module-level, so nodes import them by name."""

from __future__ import annotations

import asyncio
import os

from tests.cluster_jobs import append_line


async def nap(i: int, seconds: float) -> int:
    """Sleep, then return ``i`` (items finish out of order when their sleeps differ)."""
    await asyncio.sleep(seconds)
    return i


async def where(i: int) -> list[int]:
    """``[i, pid]``, after a moment, so a batch spreads over the nodes."""
    await asyncio.sleep(0.2)
    return [i, os.getpid()]


def broken(text: str) -> None:
    raise ValueError(f"no good: {text}")




async def mark_and_sleep(path: str, seconds: float) -> None:
    """Note its start in a file, then sleep (a job to cancel while it runs)."""
    append_line(path, "started\n")
    await asyncio.sleep(seconds)
    append_line(path, "ended\n")


def total(values: list[int]) -> int:
    return sum(values)


def size_of(data: bytes) -> int:
    return len(data)
