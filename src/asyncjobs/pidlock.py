"""A lock file that names its holder: one process at a time may hold it, the lock goes
with the process however it ends (``flock``), and the holder's pid is written in it so
that the one refused can say who holds it. Used by the run store (one run of a flow
file at a time) and the coordinator's state (one coordinator per file)."""

from __future__ import annotations

import fcntl
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

#: how long a refused process waits for the holder to have written its pid
PID_WAIT_S = 0.2


class Held(Exception):
    """Another process holds the lock (``pid``: it, or None when it could not be read)."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


def lock(path: Path) -> int:
    """Lock ``path`` for this process and write our pid in it; the open descriptor.

    :raises Held: if another process holds it
    :raises OSError: if the file cannot be opened
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise Held(pid) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        unlock(fd)
        raise
    return fd


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)  # for a forked child that shares it, too
    os.close(fd)


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote, waiting a little for it to be written."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)
