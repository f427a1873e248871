"""Starting one loop process (``_loop_main``) and waiting for it to end: what the node's
supervisor does, and ``Runner(loops=N)`` as the supervisor of its own loops.

A loop process imports what it needs first and only then reads its settings on stdin,
so it can be started before its settings are known: ``asyncjobs run --loops N`` calls
``start_early`` first thing, and the loops' interpreters boot and import while it
imports, loads the flow and starts the coordinator that their settings will name. Hence
this module is light (no asyncio at import).

It waits for a process with a pidfd on the event loop (no thread, no SIGCHLD handler to
share with the event loop's own); elsewhere than Linux it polls.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .settings import LoopSettings

LOOP_MAIN = "asyncjobs.daemons._loop_main"


class LoopChild:
    """One loop process we started; it waits for its settings until ``send``.

    :param env: its environment (never the secret: that travels in the settings)
    :param output: where its stdout and stderr go (None: ours)
    :param preload: modules it imports in a thread while it waits for its settings
        (names, in its argv: nothing secret)
    :raises OSError: it cannot be started
    """

    def __init__(self, env: Mapping[str, str], output: IO[bytes] | None = None,
                 preload: Sequence[str] = ()) -> None:
        ours, theirs = os.pipe()  # its status pipe (``settings.PULSE``, ``REGISTERED``)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", LOOP_MAIN, *preload], stdin=subprocess.PIPE,
                stdout=output,
                stderr=output, close_fds=True, pass_fds=(theirs,), env=env, bufsize=0)
        except BaseException:
            os.close(ours)
            raise
        finally:
            os.close(theirs)
        self.pid = self.proc.pid
        #: our end of its status pipe (its end has the same number in it)
        self.status_fd = ours
        self._their_status_fd = theirs
        self._closed = False

    @property
    def returncode(self) -> int | None:
        """Its exit status once reaped (``wait``), else None."""
        return self.proc.returncode

    def send(self, settings: LoopSettings) -> None:
        """Send its settings, once. The pipe stays open: its end tells the loop that its
        supervisor is gone."""
        line = json.dumps(dataclasses.replace(
            settings, status_fd=self._their_status_fd).to_json()).encode() + b"\n"
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line)  # a few hundred bytes: the pipe's buffer takes them
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died already: its exit status says so

    def send_signal(self, sig: int) -> None:
        """Signal it, by PID, unless it has been reaped (its PID may be another's)."""
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(sig)  # polls first: never a reaped PID
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        """Wait for it to exit, reap it, and return its exit status."""
        import asyncio

        proc = self.proc
        if proc.poll() is not None:
            return proc.returncode
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # pragma: no cover - not Linux >= 5.3
            delay = 0.005
            while proc.poll() is None:
                await asyncio.sleep(delay)
                delay = min(2 * delay, 0.1)
            return proc.returncode
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        try:
            loop.add_reader(pidfd, readable)
            try:
                await ended
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)
        return proc.wait()

    def close(self) -> None:
        """Close our ends of its pipes (a loop still running stops at once)."""
        if self._closed:
            return
        self._closed = True
        os.close(self.status_fd)
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def discard(self) -> None:
        """Kill it and reap it, without an event loop (it never got its settings)."""
        self.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.close()


def loop_env(pythonpath: bool = False) -> dict[str, str]:
    """A loop process's environment: ours, less the cluster secret and systemd's
    variables (they are the supervisor's). With ``pythonpath``, ``PYTHONPATH`` is our
    ``sys.path``, so that the loop imports jobs by name as we would."""
    from ..auth import SECRET_ENV
    from .systemd import SYSTEMD_ENV

    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV and k not in SYSTEMD_ENV}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


#: loop processes started by ``start_early`` (them, their environment, their output)
#: until a ``LocalCluster`` adopts them or ``discard_early`` ends them. Process-wide,
#: as the processes they stand for.
_early: tuple[list[LoopChild], dict[str, str], IO[bytes]] | None = None


def start_early(loops: int, preload: Sequence[str] = ()) -> None:
    """Start ``loops`` loop processes now, for the first ``LocalCluster`` of as many loops
    opened later in this process with the same environment (``sys.path`` included).

    :param preload: modules the loops import while they wait (``LoopChild``)
    """
    global _early
    if _early is not None:
        return
    env = loop_env(pythonpath=True)
    output = tempfile.TemporaryFile()  # noqa: SIM115 - adopted with them, or discarded
    children: list[LoopChild] = []
    try:
        for _ in range(loops):
            children.append(LoopChild(env, output, preload))
    except OSError:  # the cluster starts its own, and says why if it cannot
        for child in children:
            child.discard()
        output.close()
        return
    _early = (children, env, output)


def adopt_early(loops: int, env: Mapping[str, str]
                ) -> tuple[list[LoopChild], IO[bytes]] | None:
    """The early loop processes and their output, if they are the ones wanted (one that
    died meanwhile included: its supervisor sees it and starts another)."""
    global _early
    early = _early
    if early is None or len(early[0]) != loops or early[1] != dict(env):
        discard_early()
        return None
    _early = None
    return early[0], early[2]


def discard_early() -> None:
    """End early loop processes that no cluster adopted (the run never started)."""
    global _early
    early, _early = _early, None
    if early is not None:
        for child in early[0]:
            child.discard()
        early[2].close()
