"""Job functions for the tests: module-level, so worker processes import them by name."""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from pathlib import Path

import asyncjobs


def add(a: int, b: int) -> int:
    return a + b


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def crash(code: int = 13) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def pid() -> int:
    return os.getpid()


def hang(pid_file: str, seconds: float = 60.0) -> None:
    """Record our PID, then burn CPU: a job only a kill can stop."""
    Path(pid_file).write_text(str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def sleep_then(seconds: float, value: object = None, marker: str | None = None) -> object:
    if marker:
        Path(marker).write_text("ran")
    time.sleep(seconds)
    return value


def flaky(counter_file: str, fail_times: int) -> int:
    """Fail the first ``fail_times`` calls (counted in a file, across processes)."""
    path = Path(counter_file)
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + 1))
    if n < fail_times:
        raise ConnectionError(f"transient failure {n + 1}")
    return n + 1


def unpicklable_result() -> object:
    return lambda: None


@asyncjobs.job(kind="thread", timeout=5, retries=1)
def marked_thread_job(x: int) -> str:
    import threading

    return f"{x}:{threading.current_thread().name}"


async def aio_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def aio_fail(message: str) -> None:
    await asyncio.sleep(0)
    raise KeyError(message)


async def aio_sleep(seconds: float, value: object = None) -> object:
    await asyncio.sleep(seconds)
    return value


@asyncjobs.job(timeout=0.5, retries=1, backoff=0)
def hangs_first_time(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        time.sleep(30)
    return "second attempt"


def square_unless(x: int, bad: int, how: str = "raise") -> int:
    """x squared; item ``bad`` raises, or kills its worker when ``how == "crash"``."""
    if x == bad:
        if how == "crash":
            os._exit(7)
        raise ValueError(f"bad item {x}")
    return x * x


@asyncjobs.job(retries=1)
def add_with_retries(a: int, b: int) -> int:
    return a + b


@asyncjobs.job(timeout=1)
def hang_with_timeout(pid_file: str) -> None:
    hang(pid_file)


@asyncjobs.job(retries=3, backoff=0.01)
def flaky_with_retries(counter_file: str, fail_times: int) -> int:
    return flaky(counter_file, fail_times)
