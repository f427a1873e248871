"""Several event loops on one machine: ``Runner(loops=N)`` and ``asyncjobs run --loops N``.

How this works: the runner's process becomes a coordinator for itself alone, and the
supervisor of its loop processes. It serves a coordinator on 127.0.0.1 (a fresh random
secret, an ephemeral port) and runs the node's ``Supervisor`` on its own event loop:
each loop process runs an engine and talks to the coordinator over TCP, as any node's
loop does; the runner talks to it through a ``LocalLink`` (same messages, nothing
encoded). So ``loops=N`` runs the cluster's code, with its guarantees: a loop process
that dies is started again and its jobs run again; the runner's process only schedules.
There is no ``asyncjobs node`` process between them: one interpreter start fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import tempfile
import time
from typing import TYPE_CHECKING

import anyio

from .daemons.coordinator import CoordinatorServer, LocalLink
from .daemons.node import Supervisor, loop_settings
from .daemons.spawn import adopt_early, loop_env
from .errors import WorkerStartFailed
from .model import ErrorInfo

if TYPE_CHECKING:
    from typing import IO

#: how long the loops may take to register
START_TIMEOUT_S = 30.0
#: io attempts each loop runs at once when the runner sets no bound
DEFAULT_IO_PER_LOOP = 1024
#: how long the loops may take to stop (drain) before they are killed
STOP_TIMEOUT_S = 10.0
NODE_NAME = "local"


class LocalCluster:
    """A coordinator in this process, and ``loops`` loop processes it supervises.

    :param cpu_workers: the cpu workers, split across the loops
    :param io_concurrency: io attempts per loop (None: ``DEFAULT_IO_PER_LOOP``)
    """

    def __init__(self, *, loops: int, cpu_workers: int, io_concurrency: int | None) -> None:
        self.loops = loops
        self.cpu_workers = cpu_workers
        self.io_concurrency = io_concurrency or DEFAULT_IO_PER_LOOP
        self.server = CoordinatorServer(secret=secrets.token_hex(16).encode())
        self._stack = contextlib.AsyncExitStack()
        self._supervisor: Supervisor | None = None
        self._supervising: asyncio.Task[int] | None = None
        self._log: IO[bytes] | None = None
        self._log_text: IO[str] | None = None

    async def start(self) -> LocalLink:
        """Serve, start the loops, and return once they all registered.

        :raises WorkerStartFailed: the loops did not come up (their log's end says why)
        """
        try:
            tg = await self._stack.enter_async_context(anyio.create_task_group())
            self._stack.callback(tg.cancel_scope.cancel)
            host, port = await tg.start(functools.partial(self.server.serve, "127.0.0.1", 0))
            self._stack.push_async_callback(self._stop_loops)
            self._start_loops(host, port)
            await self._wait_for_loops()
            return self.server.local_link()
        except BaseException:
            await self._stack.aclose()
            raise

    async def aclose(self) -> None:
        await self._stack.aclose()

    def _start_loops(self, host: str, port: int) -> None:
        # the loops import jobs by name: let them find what this process finds
        env = loop_env(pythonpath=True)
        early = adopt_early(self.loops, env)  # started by asyncjobs run, still booting
        started, self._log = early or ([], tempfile.TemporaryFile())  # closed in _stop_loops
        settings = loop_settings(host, port, self.server.secret, loops=self.loops,
                                 cpu_workers=self.cpu_workers,
                                 io_concurrency=self.io_concurrency, name=NODE_NAME,
                                 drain_timeout_s=0.0)
        self._log_text = open(self._log.fileno(), "w", buffering=1,  # noqa: SIM115
                              closefd=False)  # closed in _stop_loops
        self._supervisor = Supervisor(settings, env=env, output=self._log,
                                      logger=_file_logger(self._log_text), signals=False,
                                      started=started)
        self._supervising = asyncio.ensure_future(self._supervisor.run())

    async def _wait_for_loops(self) -> None:
        state, supervising = self.server.state, self._supervising
        assert state is not None and supervising is not None
        joined = self.server.node_joined
        end = time.monotonic() + START_TIMEOUT_S
        while state.loops_of(NODE_NAME) < self.loops:
            if supervising.done() or time.monotonic() > end:
                why = ("stopped: " + repr(supervising.exception())
                       if supervising.done() and not supervising.cancelled()
                       else f"did not register in {START_TIMEOUT_S:g} s")
                raise WorkerStartFailed(ErrorInfo(
                    "WorkerStartFailed", f"the loop processes of loops={self.loops} {why}: "
                                         f"{self._log_tail()}"))
            joined.clear()
            with anyio.move_on_after(0.05):  # then look at the supervisor and the clock
                await joined.wait()

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "(no output)"

    async def _stop_loops(self) -> None:
        supervisor, supervising = self._supervisor, self._supervising
        if supervisor is not None and supervising is not None:
            supervisor.stop()  # the loops drain (they are given no time), then exit
            with anyio.move_on_after(STOP_TIMEOUT_S, shield=True):
                await asyncio.wait([supervising])
            if not supervising.done():  # it kills and reaps the loops when cancelled
                supervising.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([supervising])
            if not supervising.cancelled():
                supervising.exception()  # told by _wait_for_loops already, or moot now
        if self._log_text is not None:
            self._log_text.close()
        if self._log is not None:
            self._log.close()


def _file_logger(stream: IO[str]) -> logging.Logger:
    """A logger of its own (not in logging's tree) writing to the loops' log file, as
    ``asyncjobs node`` would on its stderr: the runner's stderr is the user's."""
    logger = logging.Logger("asyncjobs.local", logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s asyncjobs node {NODE_NAME} [%(levelname)s] %(message)s"))
    logger.addHandler(handler)
    return logger
