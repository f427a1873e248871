"""Waiting for processes to end, without reaping them (the runner's watchers must)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from collections.abc import Iterable


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_until_gone(pids: Iterable[int], deadline_s: float = 5.0) -> None:
    """Poll (process death has no event to await) until every pid is gone, or fail."""
    pids = list(pids)
    end = time.monotonic() + deadline_s
    while not all(gone(p) for p in pids):  # noqa: ASYNC110
        alive = [p for p in pids if not gone(p)]
        assert time.monotonic() < end, f"still running after {deadline_s}s: {alive}"
        await asyncio.sleep(0.02)


def wait_until_gone_sync(pids: Iterable[int], deadline_s: float = 5.0) -> None:
    pids = list(pids)
    end = time.monotonic() + deadline_s
    while not all(gone(p) for p in pids):
        alive = [p for p in pids if not gone(p)]
        assert time.monotonic() < end, f"still running after {deadline_s}s: {alive}"
        time.sleep(0.02)
