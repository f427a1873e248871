"""Real ``asyncjobs coordinator`` and ``asyncjobs node`` processes for tests.

Each is started on a free port of 127.0.0.1 (the coordinator listens on port 0 and says
which port it got), logs to a file in the test's folder, and is stopped by its PID:
``stop()`` sends SIGTERM, then SIGKILL after a deadline. Use them in ``with``.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio

from asyncjobs.protocol import Role
from asyncjobs.protocol.messages import StatusReply, StatusRequest
from asyncjobs.transport import connect

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT_S = 20.0


def daemon_env(secret: str | None = None, extra: Mapping[str, str] | None = None
               ) -> dict[str, str]:
    """Our environment, with the repository importable (``tests.jobs``) and the secret set
    (or removed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    env.pop("ASYNCJOBS_SECRET", None)
    if secret is not None:
        env["ASYNCJOBS_SECRET"] = secret
    env.update(extra or {})
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the test process dies, so a pytest
    killed by its timeout (no ``finally`` runs then) leaves no daemon behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


class Daemon:
    """A process we started; ``log`` is its stderr."""

    def __init__(self, argv: Sequence[str], log: Path, env: Mapping[str, str]) -> None:
        self.argv = list(argv)
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asyncjobs", *argv], stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=self._log_file, env=dict(env), cwd=REPO,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match[str]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            found = re.search(pattern, self.text())
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited with {self.proc.returncode} "
                                     f"before {pattern!r}:\n{self.text()}")
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} from {self.argv[0]} in {timeout_s} s:\n"
                             f"{self.text()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL past ``timeout_s``; the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            return self.proc.returncode
        finally:
            self._log_file.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Coordinator(Daemon):
    """``asyncjobs coordinator`` on a free port; ``address`` is its HOST:PORT."""

    def __init__(self, tmp: Path, *args: str, secret: str | None = None,
                 env: Mapping[str, str] | None = None, name: str = "coordinator") -> None:
        if "--state" not in args and "--no-state" not in args:
            args = (*args, "--state", str(tmp / f"{name}.db"))
        super().__init__(["coordinator", "--listen", "127.0.0.1:0", *args],
                         tmp / f"{name}.log", daemon_env(secret, env))
        self.secret = secret
        try:
            found = self.wait_for_line(r"listening on (\S+):(\d+)")
        except BaseException:
            self.stop()
            raise
        self.host, self.port = found.group(1), int(found.group(2))
        self.address = f"{self.host}:{self.port}"


class Node(Daemon):
    """``asyncjobs node`` connected to ``address``."""

    def __init__(self, tmp: Path, address: str, name: str, *args: str,
                 loops: int = 1, cpu_workers: int = 1, secret: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(["node", "--connect", address, "--name", name, "--loops", str(loops),
                          "--cpu-workers", str(cpu_workers), *args],
                         tmp / f"node-{name}.log", daemon_env(secret, env))
        self.name = name


async def status(coordinator: Coordinator, secret: str | None = None) -> StatusReply:
    """The coordinator's ``StatusReply``, over a client link of our own."""
    key = (secret if secret is not None else coordinator.secret or "").encode()
    link = await connect(coordinator.host, coordinator.port, role=Role.CLIENT, secret=key)
    async with link:
        await link.send(StatusRequest(1))
        with anyio.fail_after(5):
            async for msg in link:
                if isinstance(msg, StatusReply):
                    return msg
    raise AssertionError("the coordinator closed the link before its StatusReply")


async def wait_for_nodes(coordinator: Coordinator, names: Sequence[str], *, loops: int = 1,
                         slots: int | None = None, timeout_s: float = START_TIMEOUT_S
                         ) -> dict[str, Any]:
    """Wait until each named node is alive, with ``slots`` in all when given (all its
    loops registered)."""
    end = time.monotonic() + timeout_s
    seen: dict[str, Any] = {}
    while time.monotonic() < end:
        reply = await status(coordinator)
        seen = {n.name: n for n in reply.nodes}
        if all(n in seen and seen[n].alive and seen[n].loops == loops
               and seen[n].slots_total > 0
               and (slots is None or seen[n].slots_total == slots) for n in names):
            return seen
        await anyio.sleep(0.05)
    raise AssertionError(f"nodes {list(names)} not all up in {timeout_s} s: {seen}")
