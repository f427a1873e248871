"""systemd's notify protocol (``Type=notify``), without a dependency: a datagram to
``$NOTIFY_SOCKET``. ``READY=1`` once serving (a coordinator) or registered (a node),
``STOPPING=1`` on SIGTERM, ``WATCHDOG=1`` at half of ``WatchdogSec`` when systemd asks
for it (``$WATCHDOG_USEC``), and a ``STATUS=`` line every few seconds that
``systemctl status`` shows. Outside systemd every call does nothing.

The variables are read once, at start: a node removes them from its environment before
it starts its loops, which must not speak for the service.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

log = logging.getLogger("asyncjobs.systemd")

SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
#: how often ``report_status`` looks for a new ``STATUS=`` line
STATUS_EVERY_S = 2.0


class Notifier:
    """systemd's notification socket, or nothing outside systemd.

    :param address: ``$NOTIFY_SOCKET`` (None: not under systemd)
    :param watchdog_s: ``$WATCHDOG_USEC`` in seconds, when it is meant for us
    """

    def __init__(self, address: str | None = None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        watchdog_s = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_s)

    def notify(self, state: str) -> None:
        if not self.address:
            return
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.warning("cannot notify systemd (%s): %s", state, exc)

    async def feed_watchdog(self) -> None:
        """``WATCHDOG=1`` at half the interval systemd asked for, until cancelled. The
        event loop sends it, so a stuck loop starves it and systemd restarts us."""
        if self.watchdog_s is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await anyio.sleep(self.watchdog_s / 2)

    async def report_status(self, describe: Callable[[], str],
                            every_s: float = STATUS_EVERY_S) -> None:
        """``STATUS=<describe()>`` now and every ``every_s`` when the text changed, until
        cancelled; nothing outside systemd (``describe`` is not even called).

        :param describe: one line saying what the process is doing
        """
        if not self.address:
            return
        last = None
        while True:
            line = " ".join(describe().split())  # one line: systemd shows the first
            if line != last:
                self.notify(f"STATUS={line}")
                last = line
            await anyio.sleep(every_s)
