"""Several event loops on one machine: ``Runner(loops=N)`` and ``asyncjobs run --loops N``.

How this works: the runner's process becomes a coordinator for itself alone. It serves
a coordinator on 127.0.0.1 (a fresh random secret, an ephemeral port) and starts one
``asyncjobs node --loops N`` beside it, whose loop processes each run an engine. The
runner talks to its coordinator through a ``LocalLink`` (same messages, nothing
encoded); the loops talk to it over TCP, as any node does. So ``loops=N`` runs exactly
the cluster's code, with its guarantees: a loop process that dies is replaced and its
jobs run again; the runner's process only schedules.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import signal
import sys
import tempfile
import time
from typing import TYPE_CHECKING

import anyio

from .daemons.coordinator import CoordinatorServer, LocalLink
from .errors import WorkerStartFailed
from .model import ErrorInfo

if TYPE_CHECKING:
    from typing import IO

#: how long the node's loops may take to register
START_TIMEOUT_S = 30.0
#: io attempts each loop runs at once when the runner sets no bound
DEFAULT_IO_PER_LOOP = 1024
#: how long the node may take to stop (drain) before it is killed
STOP_TIMEOUT_S = 10.0
NODE_NAME = "local"


class LocalCluster:
    """A coordinator in this process and one node of ``loops`` loop processes.

    :param cpu_workers: the node's cpu workers, split across its loops
    :param io_concurrency: io attempts per loop (None: ``DEFAULT_IO_PER_LOOP``)
    """

    def __init__(self, *, loops: int, cpu_workers: int, io_concurrency: int | None) -> None:
        self.loops = loops
        self.cpu_workers = cpu_workers
        self.io_concurrency = io_concurrency or DEFAULT_IO_PER_LOOP
        self.server = CoordinatorServer(secret=secrets.token_hex(16).encode())
        self._stack = contextlib.AsyncExitStack()
        self._node: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> LocalLink:
        """Serve, start the node, and return once all its loops registered.

        :raises WorkerStartFailed: the node did not come up (its log's end says why)
        """
        try:
            tg = await self._stack.enter_async_context(anyio.create_task_group())
            self._stack.callback(tg.cancel_scope.cancel)
            host, port = await tg.start(functools.partial(self.server.serve, "127.0.0.1", 0))
            self._stack.push_async_callback(self._stop_node)
            await self._start_node(f"{host}:{port}")
            await self._wait_for_loops()
            return self.server.local_link()
        except BaseException:
            await self._stack.aclose()
            raise

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def _start_node(self, address: str) -> None:
        env = dict(os.environ)
        env["ASYNCJOBS_SECRET"] = self.server.secret.decode()  # the node scrubs it
        # the loops import jobs by name: let them find what this process finds
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _stop_node
        self._node = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asyncjobs", "node", "--connect", address,
            "--loops", str(self.loops), "--cpu-workers", str(self.cpu_workers),
            "--io-concurrency", str(self.io_concurrency), "--name", NODE_NAME,
            "--drain-timeout", "0",
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env,
        )

    async def _wait_for_loops(self) -> None:
        state = self.server.state
        assert state is not None and self._node is not None
        end = time.monotonic() + START_TIMEOUT_S
        while state.loops_of(NODE_NAME) < self.loops:  # noqa: ASYNC110 - no event for it
            if self._node.returncode is not None or time.monotonic() > end:
                why = ("exited with code " + str(self._node.returncode)
                       if self._node.returncode is not None
                       else f"did not register in {START_TIMEOUT_S:g} s")
                raise WorkerStartFailed(ErrorInfo(
                    "WorkerStartFailed", f"the loop processes of loops={self.loops} {why}: "
                                         f"{self._log_tail()}"))
            await anyio.sleep(0.01)

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "(no output)"

    async def _stop_node(self) -> None:
        node = self._node
        if node is not None and node.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                node.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_TIMEOUT_S, shield=True):
                await node.wait()
            if node.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    node.kill()
                with anyio.CancelScope(shield=True):
                    await node.wait()
        if self._log is not None:
            self._log.close()
