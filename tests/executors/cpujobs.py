"""Job functions for the cpu pool's tests: module-level, so worker processes import them
by name, and importing nothing of pytest, so a worker's start stays light."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import asyncjobs


def busy(seconds: float, marker: str | None = None) -> int:
    """Record our PID in ``marker``, sleep, and return our PID."""
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@asyncjobs.job(kind="cpu", timeout=0.1)
def busy_with_timeout(seconds: float, marker: str | None = None) -> int:
    return busy(seconds, marker)


def env(name: str) -> str | None:
    return os.environ.get(name)


def parent() -> int:
    return os.getppid()


def crash() -> None:
    os._exit(9)


def has_module(name: str) -> bool:
    return name in sys.modules
