"""Jobs for the cluster tests: module-level, so nodes import them by name."""

from __future__ import annotations

import asyncio
import os


def append_line(path: str, text: str) -> None:
    """Append ``text`` to a file in one write (O_APPEND: whole, from any process)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


async def ledger(path: str, i: int, seconds: float = 0.002) -> int:
    """Append ``i`` and the pid that ran it to a ledger (a line per execution, from any
    process), then return ``i``."""
    await asyncio.sleep(seconds)
    append_line(path, f"{i} {os.getpid()}\n")
    return i


async def kill_my_node(path: str) -> None:
    """Kill the loop process this io job runs in, every time (a ledger line per run)."""
    await ledger(path, os.getpid(), 0)
    os._exit(9)


def kill_my_worker() -> None:
    """Kill the cpu worker process this job runs in."""
    os._exit(7)


def square(x: int) -> int:
    return x * x


async def environment(name: str) -> str | None:
    return os.environ.get(name)


async def loop_pid(seconds: float = 0.01) -> int:
    """The pid of the process whose event loop runs this io job."""
    await asyncio.sleep(seconds)
    return os.getpid()


async def blob(size: int) -> str:
    """A result of ``size`` characters."""
    return "x" * size


async def odd_one_out(i: int, seconds: float = 0.0) -> int:
    """``i * 2`` after ``seconds`` (so later items may end first); raises for ``i == 13``."""
    await asyncio.sleep(seconds)
    if i == 13:
        raise ValueError("thirteen")
    return i * 2


async def die_once(marker: str) -> int:
    """Kill the loop process this io job runs in the first time (``marker`` absent);
    afterwards return the pid that ran it."""
    if not os.path.exists(marker):
        append_line(marker, "died\n")
        os._exit(9)
    return os.getpid()
