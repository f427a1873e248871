"""The CPU pool: worker processes we start, watch, kill and replace ourselves.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers dies, the whole
executor breaks and every pending future fails, and it cannot tell which job was running
in the dead worker; a timed-out call cannot be stopped; and its ``spawn``/``forkserver``
modes leave a resource-tracker process behind. This pool keeps the same model (N
processes, calls pickled by reference) and adds what the runner promises:

1. Each worker holds at most ``prefetch`` jobs and runs them in order, so the job that
   was running when a worker died is known: the oldest one it holds. That job fails,
   naming itself and the cause; the others it held go back to the front of the backlog.
2. A job's clock starts when its worker is known to start it (the previous job's answer
   arrived). Past its timeout, the worker is SIGKILLed, and a new one takes its place.
3. Cancelling a job a worker has not started removes it there; cancelling a running
   one kills its worker.
4. No job waits behind another while a worker is idle: an idle worker takes back
   ("steals") a job another worker holds but has not started.
5. Workers are started on first use and replaced when they die. Three deaths in a row
   before a worker is ready mark the pool broken: jobs then fail with the start-up error
   instead of looping forever.
6. Every process the pool starts is killed by PID before ``aclose`` returns, and by the
   kernel if this process dies first (PR_SET_PDEATHSIG in the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import multiprocessing.spawn
import os
import pickle
import signal
import socket
import subprocess
import sys
import weakref
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model import ErrorInfo
from . import _worker_main as wire
from .base import timeout_info

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .base import AttemptKey, Call, Sink

WORKER_SCRIPT = str(Path(wire.__file__).resolve())
MAX_START_FAILURES = 3
STOP_GRACE_S = 1.0
#: how long to wait for a killed worker's exit status before giving up on it
REAP_TIMEOUT_S = 5.0


class _Ticket:
    __slots__ = ("key", "token", "payload", "timeout_s", "worker", "cancel_requested",
                 "timed_out", "stealing")

    def __init__(self, key: AttemptKey, token: int, payload: bytes, timeout_s: float | None):
        self.key = key
        self.token = token
        self.payload = payload
        self.timeout_s = timeout_s
        self.worker: _Worker | None = None
        self.cancel_requested = False
        self.timed_out = False
        #: asked back from its worker, to go to an idle one
        self.stealing = False


class _Worker:
    __slots__ = ("proc", "writer", "assigned", "timer", "ready", "outbuf", "pool")

    def __init__(self, proc: asyncio.subprocess.Process, writer: asyncio.StreamWriter,
                 pool: CpuPool):
        self.proc = proc
        self.writer = writer
        self.assigned: deque[_Ticket] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.ready = False
        self.outbuf = bytearray()
        self.pool = pool

    def send(self, op: bytes, token: int, payload: bytes = b"") -> None:
        """Queue a frame; frames queued in one loop tick go out in one write."""
        if not self.outbuf:
            self.pool._dirty.append(self)
            if len(self.pool._dirty) == 1:
                asyncio.get_running_loop().call_soon(self.pool._flush)
        self.outbuf += wire.HEADER.pack(len(payload), op, token) + payload

    def flush(self) -> None:
        if self.outbuf and not self.writer.is_closing():
            self.writer.write(bytes(self.outbuf))
        self.outbuf.clear()


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == signal.SIGKILL:
            return f"killed by {name} (out of memory, or killed from outside)"
        return f"killed by {name}"
    return f"exit code {returncode}"


async def _reap(proc: asyncio.subprocess.Process) -> int | None:
    """The worker's exit status; None if it cannot be had (someone else reaped it)."""
    try:
        return await asyncio.wait_for(proc.wait(), REAP_TIMEOUT_S)
    except TimeoutError:
        return proc.returncode


def _kill_pids(pids: set[int]) -> None:
    for pid in list(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class CpuPool:
    """Runs ``Call``s in worker processes and reports each attempt's end to ``sink``.

    :param sink: receives exactly one report per started attempt
    :param workers: number of worker processes
    :param prefetch: jobs a worker holds at once: enough that it stays busy while a
        batch of answers travels back and the refill comes
    :param env: the workers' environment (default: ours, minus the cluster secret)
    """

    def __init__(
        self, sink: Sink, workers: int, *, prefetch: int = 4,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"cpu_workers must be at least 1, not {workers}")
        self.sink = sink
        self.workers = workers
        self.prefetch = prefetch
        if env is None:
            env = {k: v for k, v in os.environ.items() if k != "ASYNCJOBS_SECRET"}
        self._env = dict(env)
        self._tickets: dict[AttemptKey, _Ticket] = {}
        self._backlog: deque[_Ticket] = deque()
        self._live: list[_Worker] = []
        #: workers with frames waiting for this tick's write
        self._dirty: list[_Worker] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tokens = itertools.count(1)
        self._pids: set[int] = set()
        self._start_failures = 0
        self._broken: ErrorInfo | None = None
        self._started = False
        self._closing = False
        self._prep: dict[str, Any] | None = None
        self._finalizer = weakref.finalize(self, _kill_pids, self._pids)

    @property
    def capacity(self) -> int:
        """Jobs the pool can hold at once without a backlog."""
        return self.workers * self.prefetch

    def pids(self) -> list[int]:
        """PIDs of the worker processes alive now."""
        return sorted(self._pids)

    # -- engine side --------------------------------------------------------------------

    def start(self, key: AttemptKey, call: Call) -> None:
        """Queue one attempt. Its end is reported to the sink, never raised here."""
        if self._broken is not None:
            self.sink.failed(key, self._broken)
            return
        try:
            payload = pickle.dumps(
                (call.fn, call.args, call.kwargs), protocol=pickle.HIGHEST_PROTOCOL
            )
        except Exception as exc:
            info = ErrorInfo.from_exception(exc, retryable=False)
            msg = f"job {key[0]} cannot be sent to a worker process: {info.message}"
            self.sink.failed(key, ErrorInfo(info.type_name, msg, info.traceback, retryable=False))
            return
        ticket = _Ticket(key, next(self._tokens), payload, call.timeout_s)
        self._tickets[key] = ticket
        if not self._started:
            self._started = True
            prep = multiprocessing.spawn.get_preparation_data("asyncjobs-worker")
            prep.pop("authkey", None)  # refuses to pickle; workers use no multiprocessing auth
            self._prep = prep
            for _ in range(self.workers):
                self._spawn()
        self._backlog.append(ticket)
        self._pump()

    def cancel(self, key: AttemptKey) -> None:
        """Stop an attempt; the sink hears ``cancelled`` (or its result, if it won)."""
        ticket = self._tickets.get(key)
        if ticket is None:
            return
        worker = ticket.worker
        if worker is None:
            self._backlog.remove(ticket)
            del self._tickets[key]
            self.sink.cancelled(key)
            return
        ticket.cancel_requested = True
        if worker.assigned and worker.assigned[0] is ticket:
            self._kill(worker)
        else:
            worker.send(wire.OP_CANCEL, ticket.token)

    async def aclose(self) -> None:
        """Cancel what is left, stop every worker, and wait until each has exited."""
        self._closing = True
        for ticket in list(self._tickets.values()):
            self.sink.cancelled(ticket.key)
        self._tickets.clear()
        self._backlog.clear()
        for worker in self._live:
            worker.send(wire.OP_STOP, 0)
        self._flush()
        for worker in self._live:
            with contextlib.suppress(OSError):
                worker.writer.close()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=STOP_GRACE_S)
            if pending:
                self.kill_all()
                _, pending = await asyncio.wait(pending, timeout=REAP_TIMEOUT_S + 1)
                for task in pending:
                    task.cancel()
        self._finalizer.detach()

    def kill_all(self) -> None:
        """SIGKILL every worker now. Safe to call from any exit path."""
        _kill_pids(self._pids)

    # -- workers ------------------------------------------------------------------------

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._worker_life())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _worker_life(self) -> None:
        try:
            await self._run_worker()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a worker we could not even start or talk to
            self._on_exit(None, None, ErrorInfo.from_exception(exc, retryable=False))

    async def _run_worker(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, WORKER_SCRIPT, str(child_sock.fileno()), str(os.getpid()),
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, env=self._env,
            )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        self._pids.add(proc.pid)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent_sock)
            worker = _Worker(proc, writer, self)
            worker.send(wire.OP_INIT, 0, pickle.dumps(self._prep))
            start_error: ErrorInfo | None = None
            try:
                while True:
                    head = await reader.readexactly(wire.HEADER.size)
                    size, op, token = wire.HEADER.unpack(head)
                    payload = await reader.readexactly(size) if size else b""
                    if op == wire.OP_READY:
                        self._on_ready(worker)
                    elif worker.ready:
                        self._on_answer(worker, op, token, payload)
                    elif op == wire.OP_ERR:
                        start_error = self._error_from(payload, retryable=False)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            returncode = await _reap(proc)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(_reap(proc))
            self._pids.discard(proc.pid)
        writer.close()
        if returncode is None:
            returncode = proc.returncode
        self._on_exit(worker, returncode, start_error)

    def _on_ready(self, worker: _Worker) -> None:
        worker.ready = True
        self._start_failures = 0
        if self._closing:
            worker.send(wire.OP_STOP, 0)
            return
        self._live.append(worker)
        self._pump()

    def _on_exit(
        self, worker: _Worker | None, returncode: int | None, start_error: ErrorInfo | None
    ) -> None:
        if worker is not None:
            if worker.timer is not None:
                worker.timer.cancel()
            if worker in self._live:
                self._live.remove(worker)
        if self._closing:
            return
        if worker is None or not worker.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                why = start_error.message if start_error else describe_exit(returncode)
                tb = start_error.traceback if start_error else ""
                self._broken = ErrorInfo(
                    "WorkerStartFailed",
                    f"cpu worker processes fail to start ({why})", tb, retryable=False,
                )
                self._fail_backlog(self._broken)
                return
        assigned = worker.assigned if worker is not None else deque()
        if assigned:
            assert worker is not None
            head = assigned.popleft()
            del self._tickets[head.key]
            if head.timed_out:
                assert head.timeout_s is not None
                detail = f"; its worker (pid {worker.proc.pid}) was killed"
                self.sink.failed(head.key, timeout_info(head.timeout_s, detail))
            elif head.cancel_requested:
                self.sink.cancelled(head.key)
            else:
                job_id, attempt = head.key
                self.sink.failed(head.key, ErrorInfo(
                    "WorkerCrashed",
                    f"job {job_id} (attempt {attempt}) killed its worker process "
                    f"(pid {worker.proc.pid}, {describe_exit(returncode)}); "
                    "a new worker took its place",
                ))
            for ticket in reversed(assigned):
                ticket.worker = None
                ticket.stealing = False
                if ticket.cancel_requested:
                    del self._tickets[ticket.key]
                    self.sink.cancelled(ticket.key)
                else:
                    self._backlog.appendleft(ticket)
            assigned.clear()
        self._spawn()
        self._pump()

    def _fail_backlog(self, error: ErrorInfo) -> None:
        while self._backlog:
            ticket = self._backlog.popleft()
            del self._tickets[ticket.key]
            self.sink.failed(ticket.key, error)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for worker in dirty:
            worker.flush()

    def _kill(self, worker: _Worker) -> None:
        if worker.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()

    # -- dispatch -----------------------------------------------------------------------

    def _pump(self) -> None:
        backlog = self._backlog
        prefetch = self.prefetch
        while backlog:
            best: _Worker | None = None
            for worker in self._live:
                n = len(worker.assigned)
                if n < prefetch and (best is None or n < len(best.assigned)):
                    best = worker
            if best is None:
                return
            ticket = backlog.popleft()
            ticket.worker = best
            best.assigned.append(ticket)
            best.send(wire.OP_RUN, ticket.token, ticket.payload)
            if len(best.assigned) == 1:
                self._arm(best)
        self._steal()

    def _steal(self) -> None:
        """Ask a busy worker for a job it has not started, for each idle worker."""
        idle = sum(1 for w in self._live if not w.assigned)
        if not idle:
            return
        for worker in self._live:
            if len(worker.assigned) < 2:
                continue
            for ticket in reversed(worker.assigned):
                if idle == 0:
                    return
                if ticket is worker.assigned[0]:
                    break
                if not ticket.stealing and not ticket.cancel_requested:
                    ticket.stealing = True
                    worker.send(wire.OP_CANCEL, ticket.token)
                    idle -= 1

    def _arm(self, worker: _Worker) -> None:
        head = worker.assigned[0]
        if head.timeout_s is not None:
            loop = asyncio.get_running_loop()
            worker.timer = loop.call_later(head.timeout_s, self._on_timeout, worker, head)

    def _on_timeout(self, worker: _Worker, ticket: _Ticket) -> None:
        if worker.assigned and worker.assigned[0] is ticket:
            ticket.timed_out = True
            self._kill(worker)

    def _on_answer(self, worker: _Worker, op: bytes, token: int, payload: bytes) -> None:
        assigned = worker.assigned
        if assigned and assigned[0].token == token:
            ticket = assigned.popleft()
            if worker.timer is not None:
                worker.timer.cancel()
                worker.timer = None
            if assigned:
                self._arm(worker)
        else:
            for ticket in assigned:
                if ticket.token == token:
                    assigned.remove(ticket)
                    break
            else:
                return
        key = ticket.key
        if op == wire.OP_CANCELLED and ticket.stealing and not ticket.cancel_requested:
            ticket.stealing = False
            ticket.worker = None
            self._backlog.appendleft(ticket)
            self._pump()
            return
        del self._tickets[key]
        if ticket.cancel_requested or op == wire.OP_CANCELLED:
            self.sink.cancelled(key)
        elif op == wire.OP_OK:
            try:
                result = pickle.loads(payload)
            except Exception as exc:
                self.sink.failed(key, ErrorInfo.from_exception(exc, retryable=False))
            else:
                self.sink.succeeded(key, result)
        else:
            self.sink.failed(key, self._error_from(payload))
        if self._backlog or not assigned:
            self._pump()

    @staticmethod
    def _error_from(payload: bytes, *, retryable: bool = True) -> ErrorInfo:
        info = ErrorInfo.from_wire(pickle.loads(payload))
        if info.retryable and not retryable:
            info = dataclasses.replace(info, retryable=False)
        return info
