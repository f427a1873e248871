"""systemd's notify protocol (``Type=notify``), without a dependency: a datagram to
``$NOTIFY_SOCKET``. ``READY=1`` once serving, ``STOPPING=1`` on the way out, and
``WATCHDOG=1`` at half the ``WatchdogSec`` systemd asked for (``$WATCHDOG_USEC``).
Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing."""

from __future__ import annotations

import contextlib
import os
import socket

import anyio


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``); False when not under systemd or it failed."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    with contextlib.suppress(OSError), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
        return True
    return False


def watchdog_interval_s() -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec``), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


async def keep_watchdog_fed() -> None:
    """Send ``WATCHDOG=1`` at the interval systemd asked for, until cancelled. The event
    loop sends it, so a stuck loop stops feeding it and systemd restarts the service."""
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await anyio.sleep(interval)
