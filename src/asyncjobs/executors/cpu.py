"""The CPU pool: worker processes we start, watch, kill and replace ourselves.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers dies, the whole
executor breaks and every pending future fails, and it cannot tell which job was running
in the dead worker; a timed-out call cannot be stopped; and its ``spawn``/``forkserver``
modes leave a resource-tracker process behind. This pool keeps the same model (N
processes, calls pickled by reference) and adds what the runner promises.

Why a template process: a worker started as a fresh interpreter costs 50-300 ms (start,
then re-import the app's main module), and a crash, a timeout kill or a cancel kill paid
that again. The pool starts one clean interpreter, the template (``_template_main``),
prepares it once, and has it fork each worker: a millisecond. If the template cannot
start, workers are fresh interpreters again (``_worker_main`` run as a script).

1. Each worker holds at most ``prefetch`` jobs and runs them in order, so the job that
   was running when a worker died is known: the oldest one it holds. That job fails,
   naming itself and the cause; the others it held go back to the front of the backlog.
2. A job's clock starts when its worker is known to start it (the worker said it was
   ready, and the previous job's answer arrived). Past its timeout, the worker is
   SIGKILLed, and a new one takes its place.
3. Cancelling a job a worker has not started removes it there; cancelling a running
   one kills its worker.
4. A kill only fails the job it was aimed at. Before killing, the pool reads what the
   worker has sent already (``Channel.drain``): if the job's answer is there, nothing is
   killed. If the kill lands after all on the next job (it started meanwhile), that job
   goes back to the backlog, no attempt counted.
5. No job waits behind another while a worker is idle: an idle worker takes back
   ("steals") a job another worker holds but has not started.
6. The template starts when the Runner opens (``prestart``); workers on first use or at
   ``prestart()``, and are replaced when they die. Three start-up deaths in a row
   (template or worker) mark the pool broken: jobs then fail with the start-up error
   instead of looping forever. A main module that starts a Runner when imported breaks
   it at once, with an error naming the ``__main__`` guard.
7. Every process the pool starts is killed by PID before ``aclose`` returns, and by the
   kernel if this process dies first (PR_SET_PDEATHSIG in the template and workers; a
   worker dies with its template).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import weakref
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UnguardedMainModule, WorkerStartFailed
from ..model import ErrorInfo
from . import _worker_main as wire
from .base import timeout_info
from .channel import Channel
from .template import (
    REAP_TIMEOUT_S,
    TEMPLATE_SCRIPT,
    Template,
    check_not_preparing,
    describe_exit,
    preparation_data,
    reap_soon,
    worker_env,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .base import AttemptKey, Call, Sink

log = logging.getLogger("asyncjobs.cpu")

WORKER_SCRIPT = str(Path(wire.__file__).resolve())
MAX_START_FAILURES = 3
STOP_GRACE_S = 1.0


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
    __slots__ = ("id", "chan", "pid", "proc", "template", "ready", "assigned", "timer",
                 "kill_target", "eof", "exited", "returncode", "why", "blamed",
                 "start_error", "finished")

    def __init__(self, worker_id: int) -> None:
        self.id = worker_id
        self.chan: Channel
        self.pid: int | None = None
        #: a fresh interpreter's process; None for a worker forked by ``template``
        self.proc: subprocess.Popen[bytes] | None = None
        self.template: Template | None = None
        self.ready = False
        self.assigned: deque[_Ticket] = deque()
        self.timer: asyncio.TimerHandle | None = None
        #: the job a kill was aimed at (rule 4)
        self.kill_target: _Ticket | None = None
        #: its socket has closed: it has sent all it will
        self.eof = False
        #: its exit status is known (``returncode``, None when it could not be had)
        self.exited = False
        self.returncode: int | None = None
        #: what killed it when it was not its own doing
        self.why = ""
        #: the job to blame once the exit status is known
        self.blamed: _Ticket | None = None
        self.start_error: ErrorInfo | None = None
        self.finished = False


def _kill_pids(pids: set[int]) -> None:
    for pid in list(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Mark a prestart future's error as seen: not awaiting it is allowed."""
    if not fut.cancelled():
        fut.exception()


class CpuPool:
    """Runs ``Call``s in worker processes and reports each attempt's end to ``sink``.

    :param sink: receives exactly one report per started attempt
    :param workers: number of worker processes
    :param prefetch: jobs a worker holds at once: enough that it stays busy while a
        batch of answers travels back and the refill comes
    :param env: the workers' environment (default: ours, minus the cluster secret)
    :param template: fork workers from a template process (False: start each as a fresh
        interpreter)
    :raises UnguardedMainModule: when made while a worker imports the main module
    """

    #: the template's script (tests point it elsewhere to see the fallback)
    template_script: str | None = None

    def __init__(
        self, sink: Sink, workers: int, *, prefetch: int = 4,
        env: Mapping[str, str] | None = None, template: bool = True,
    ) -> None:
        check_not_preparing()
        if workers < 1:
            raise ValueError(f"cpu_workers must be at least 1, not {workers}")
        self.sink = sink
        self.workers = workers
        self.prefetch = prefetch
        self._env = worker_env() if env is None else dict(env)
        self._use_template = template and hasattr(os, "fork") and hasattr(socket, "send_fds")
        self._tickets: dict[AttemptKey, _Ticket] = {}
        self._backlog: deque[_Ticket] = deque()
        #: workers that take jobs (a forked one from the moment it is asked for)
        self._live: list[_Worker] = []
        #: every worker not yet finished, by id
        self._workers: dict[int, _Worker] = {}
        self._by_pid: dict[int, _Worker] = {}
        #: workers waiting for the template to be ready, with the end it will get
        self._waiting: list[tuple[_Worker, socket.socket]] = []
        self._template: Template | None = None
        #: templates not yet reaped
        self._templates: set[Template] = set()
        self._preloaded: set[str] = set()
        self._ready_waiters: list[tuple[asyncio.Future[None], bool]] = []
        self._tokens = itertools.count(1)
        self._ids = itertools.count(1)
        #: PIDs we may signal: workers and templates not yet reaped
        self._pids: set[int] = set()
        self._start_failures = 0
        self._broken: ErrorInfo | None = None
        self._started = False
        self._closing = False
        self._gone: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prep: bytes | None = None
        self._finalizer = weakref.finalize(self, _kill_pids, self._pids)

    @property
    def capacity(self) -> int:
        """Jobs the pool can hold at once without a backlog."""
        return self.workers * self.prefetch

    def pids(self) -> list[int]:
        """PIDs of the worker processes alive now."""
        return sorted(pid for pid, w in self._by_pid.items() if not w.eof)

    def template_pid(self) -> int | None:
        """PID of the template process, while there is one."""
        t = self._template
        return None if t is None or t.gone else t.pid

    # -- engine side --------------------------------------------------------------------

    def prestart(self, *, workers: bool = True) -> asyncio.Future[None]:
        """Start now what the first job would start: the template process, and with
        ``workers`` every worker process. Starting happens in this call; the future it
        returns is done once they are ready for a first job. Not awaiting it is fine:
        a start-up error then reaches the jobs.

        :param workers: start the workers too, not only the template
        :returns: a future done when ready; its error is ``WorkerStartFailed`` if they
            cannot start, and it is cancelled if the pool closes first
        """
        loop = self._loop_now()
        fut: asyncio.Future[None] = loop.create_future()
        fut.add_done_callback(_retrieve)
        if self._broken is not None:
            fut.set_exception(WorkerStartFailed(self._broken))
            return fut
        if self._closing:
            fut.cancel()
            return fut
        self._ready_waiters.append((fut, workers))
        if workers:
            self._start_workers()
        elif self._use_template:
            self._ensure_template()
        self._check_ready()
        return fut

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
        self._backlog.append(ticket)
        self._start_workers()
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
        worker.chan.drain()  # its answer, or those of the jobs before it, may be waiting
        if key not in self._tickets or worker.eof:
            return
        if worker.ready and worker.assigned and worker.assigned[0] is ticket:
            self._stop(worker, ticket)
        else:
            worker.chan.send(wire.OP_CANCEL, ticket.token)

    async def aclose(self) -> None:
        """Cancel what is left, stop every process, and wait until each has exited."""
        self._closing = True
        for ticket in list(self._tickets.values()):
            self.sink.cancelled(ticket.key)
        self._tickets.clear()
        self._backlog.clear()
        for fut, _ in self._ready_waiters:
            fut.cancel()
        self._ready_waiters.clear()
        self._drop_waiting()
        for worker in list(self._workers.values()):
            if not worker.eof:
                worker.chan.send(wire.OP_STOP, 0)
                worker.chan.flush()
        for template in list(self._templates):
            template.close()
        self._gone = asyncio.Event()
        self._check_gone()
        for grace in (STOP_GRACE_S, REAP_TIMEOUT_S + 1):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), grace)
            if self._gone.is_set():
                break
            self.kill_all()
        self._finalizer.detach()

    def kill_all(self) -> None:
        """SIGKILL every process of the pool now. Safe to call from any exit path."""
        _kill_pids(self._pids)

    # -- starting processes ---------------------------------------------------------------

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _prep_data(self) -> bytes:
        if self._prep is None:
            self._prep = preparation_data()
        return self._prep

    def _start_workers(self) -> None:
        if not self._started:
            self._started = True
            for _ in range(self.workers):
                self._spawn()

    def _spawn(self) -> None:
        if self._closing or self._broken is not None:
            return
        template = self._ensure_template() if self._use_template else None
        if template is None:
            self._spawn_fresh()
            return
        ours, theirs = socket.socketpair()
        worker = self._new_worker(ours)
        if template.ready:
            self._fork(template, worker, theirs)
        else:
            self._waiting.append((worker, theirs))

    def _new_worker(self, sock: socket.socket) -> _Worker:
        worker = _Worker(next(self._ids))
        worker.chan = Channel(sock, self._loop_now(),
                              functools.partial(self._on_frame, worker),
                              functools.partial(self._on_eof, worker))
        self._workers[worker.id] = worker
        return worker

    def _fork(self, template: Template, worker: _Worker, theirs: socket.socket) -> None:
        worker.template = template
        template.fork(worker.id, theirs)
        self._live.append(worker)
        self._pump()

    def _spawn_fresh(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, WORKER_SCRIPT, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=self._env,
            )
        except OSError as exc:
            ours.close()
            self._start_failed(str(exc), ErrorInfo.from_exception(exc, retryable=False),
                               respawn=True)
            return
        finally:
            theirs.close()
        worker = self._new_worker(ours)
        worker.proc = proc
        self._set_pid(worker, proc.pid)
        worker.chan.send(wire.OP_INIT, 0, self._prep_data())

    def _ensure_template(self) -> Template | None:
        template = self._template
        if template is not None:
            template.chan.drain()  # its end, if it has come, before asking it for more
            if not template.chan.closed:
                return template
        try:
            template = Template(self, self._loop_now(), self._prep_data(), self._env,
                                self.template_script or TEMPLATE_SCRIPT)
        except OSError as exc:
            self._fall_back(f"could not start ({exc})")
            return None
        self._template = template
        self._templates.add(template)
        self._pids.add(template.pid)
        return template

    def _fall_back(self, why: str) -> None:
        """The template does not work here: start workers as fresh interpreters."""
        if not self._use_template:
            return
        self._use_template = False
        log.warning("asyncjobs: the cpu pool's template process %s; starting each worker "
                    "as a fresh interpreter instead (slower to start and to replace)", why)
        waiting = len(self._waiting)
        self._drop_waiting()
        for _ in range(waiting):
            self._spawn_fresh()
        self._check_ready()

    def _drop_waiting(self) -> None:
        for worker, theirs in self._waiting:
            theirs.close()
            worker.chan.close()
            del self._workers[worker.id]
        self._waiting.clear()

    def _set_pid(self, worker: _Worker, pid: int) -> None:
        if worker.pid is None:
            worker.pid = pid
            self._by_pid[pid] = worker
            self._pids.add(pid)
            if worker.kill_target is not None:
                self._kill(worker)

    # -- what the template says -----------------------------------------------------------

    def template_ready(self, template: Template) -> None:
        if template is not self._template:
            return
        if self._closing:
            template.close()
            return
        if self._preloaded:  # first: the workers it forks next have them
            template.preload(sorted(self._preloaded))
        waiting, self._waiting = self._waiting, []
        for worker, theirs in waiting:
            self._fork(template, worker, theirs)
        self._check_ready()

    def worker_forked(self, worker_id: int, pid: int) -> None:
        worker = self._workers.get(worker_id)
        if worker is not None:
            self._set_pid(worker, pid)

    def worker_not_forked(self, worker_id: int, error: ErrorInfo) -> None:
        worker = self._workers.get(worker_id)
        if worker is not None:  # its end of the socket is closed: its EOF follows
            worker.start_error = error

    def worker_exited(self, pid: int, returncode: int) -> None:
        worker = self._by_pid.get(pid)
        if worker is None:
            if self._template is not None:
                self._template.reap(pid)
            return
        worker.exited = True
        worker.returncode = returncode
        if worker.eof:
            self._finish(worker)
        else:
            self._retire(worker)
            worker.chan.drain()  # it has exited: everything it sent is there, then EOF

    def template_gone(self, template: Template) -> None:
        self._templates.discard(template)
        self._pids.discard(template.pid)
        why = f"killed with the pool's template process (pid {template.pid}, " \
              f"{describe_exit(template.returncode)})"
        for worker in list(self._workers.values()):
            if worker.template is template and not worker.exited:
                worker.exited = True
                worker.why = why
                if worker.eof:
                    self._finish(worker)
                else:
                    self._retire(worker)
                    worker.chan.drain()
        if template is self._template:
            self._template = None
        if self._closing:
            self._check_gone()
            return
        if template.ready:
            log.warning("asyncjobs: the cpu pool's template process (pid %d) ended (%s); "
                        "starting a new one", template.pid, describe_exit(template.returncode))
            if self._waiting:
                self._ensure_template()
            return
        error = template.error
        if error is not None and error.type_name == UnguardedMainModule.__name__:
            self._break(f"cpu worker processes cannot start: {error.message}",
                        error.traceback)
            return
        ended = describe_exit(template.returncode)
        self._start_failed(error.message if error else f"its template process {ended}",
                           error, respawn=False)
        if self._broken is not None:
            return
        if error is not None:  # the app's main module failed to import: try again
            self._ensure_template()
        else:
            self._fall_back(f"(pid {template.pid}) ended before it was ready ({ended})")

    # -- what workers say -----------------------------------------------------------------

    def _on_frame(self, worker: _Worker, op: bytes, token: int, payload: bytes) -> None:
        if worker.ready:
            if op == wire.OP_IMPORTED:
                self._on_imported(payload)
            else:
                self._on_answer(worker, op, token, payload)
        elif op == wire.OP_READY:
            self._on_ready(worker, token)
        elif op == wire.OP_ERR:
            worker.start_error = self._error_from(payload, retryable=False)

    def _on_ready(self, worker: _Worker, pid: int) -> None:
        worker.ready = True
        self._set_pid(worker, pid)
        self._start_failures = 0
        if self._closing:
            worker.chan.send(wire.OP_STOP, 0)
            return
        if worker.proc is not None:
            self._live.append(worker)
        self._head_changed(worker)
        self._pump()
        self._check_ready()

    def _on_imported(self, payload: bytes) -> None:
        self.preload(payload.decode().split("\n"))

    def preload(self, modules: Iterable[str]) -> None:
        """Have the template import ``modules`` before it forks more workers, so that a
        new worker does not import them at its first job (``asyncjobs run`` names the
        modules of a flow's calls before the first workers fork)."""
        new = [n for n in modules if n not in self._preloaded]
        self._preloaded.update(new)
        template = self._template
        if new and template is not None and template.ready:
            template.preload(new)

    def _on_answer(self, worker: _Worker, op: bytes, token: int, payload: bytes) -> None:
        assigned = worker.assigned
        head_done = bool(assigned) and assigned[0].token == token
        if head_done:
            ticket = assigned.popleft()
            if worker.timer is not None:
                worker.timer.cancel()
                worker.timer = None
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
        else:
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
        if head_done:
            self._head_changed(worker)
        if self._backlog or not assigned:
            self._pump()

    # -- stopping jobs --------------------------------------------------------------------

    def _head_changed(self, worker: _Worker) -> None:
        """The worker runs its first job now: start its clock, or stop it if cancelled."""
        if (not worker.ready or worker.eof or not worker.assigned
                or worker.kill_target is not None):
            return
        head = worker.assigned[0]
        if head.cancel_requested:
            self._stop(worker, head)
        elif head.timeout_s is not None and worker.timer is None:
            worker.timer = self._loop_now().call_later(
                head.timeout_s, self._on_timeout, worker, head)

    def _on_timeout(self, worker: _Worker, ticket: _Ticket) -> None:
        worker.timer = None
        if not worker.eof and worker.assigned and worker.assigned[0] is ticket:
            ticket.timed_out = True
            self._stop(worker, ticket)

    def _stop(self, worker: _Worker, ticket: _Ticket) -> None:
        """Kill ``worker`` to stop ``ticket``, unless what it sent says it is done (rule 4)."""
        worker.chan.drain()
        if (worker.eof or worker.kill_target is not None or not worker.assigned
                or worker.assigned[0] is not ticket):
            return
        worker.kill_target = ticket
        self._kill(worker)

    def _kill(self, worker: _Worker) -> None:
        # a worker's PID stays its own until we reap it (a template reaps on our word)
        if worker.pid is not None and not worker.exited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)

    # -- workers that end -----------------------------------------------------------------

    def _retire(self, worker: _Worker) -> None:
        """A worker known to be dead before its socket's EOF gets no new job: one sent
        now would fail with it (a job submitted just after its template was killed did).
        What it holds is settled at its EOF, as for any worker."""
        if worker in self._live:
            self._live.remove(worker)

    def _on_eof(self, worker: _Worker) -> None:
        """The worker's socket closed: it has exited (or is exiting), and every answer it
        sent has been handled."""
        worker.eof = True
        if worker.timer is not None:
            worker.timer.cancel()
            worker.timer = None
        if worker in self._live:
            self._live.remove(worker)
        if worker.ready:
            worker.blamed = self._settle(worker)
            self._spawn()
        else:
            self._requeue(worker.assigned)
        if worker.exited:
            self._finish(worker)
        elif worker.proc is not None:
            reap_soon(self._loop_now(), worker.proc,
                      functools.partial(self._on_reaped, worker))
        else:  # the template reports its exit; should it never, do not wait forever
            self._loop_now().call_later(REAP_TIMEOUT_S, self._on_reaped, worker, None)
        self._pump()

    def _settle(self, worker: _Worker) -> _Ticket | None:
        """Decide the fate of the jobs a dead worker held; return the one to blame once
        its exit status is known."""
        assigned = worker.assigned
        target = worker.kill_target
        blamed = None
        if assigned and (target is None or assigned[0] is target):
            head = assigned.popleft()
            if head is target and head.key in self._tickets:
                del self._tickets[head.key]
                if head.cancel_requested:
                    self.sink.cancelled(head.key)
                else:
                    assert head.timeout_s is not None
                    detail = f"; its worker (pid {worker.pid}) was killed"
                    self.sink.failed(head.key, timeout_info(head.timeout_s, detail))
            else:
                blamed = head
        # with a target that finished before the kill landed, the head goes back too
        self._requeue(assigned)
        return blamed

    def _requeue(self, tickets: deque[_Ticket]) -> None:
        for ticket in reversed(tickets):
            ticket.worker = None
            ticket.stealing = False
            if ticket.cancel_requested:
                if self._tickets.pop(ticket.key, None) is not None:
                    self.sink.cancelled(ticket.key)
            elif ticket.key in self._tickets:
                self._backlog.appendleft(ticket)
        tickets.clear()
        if self._broken is not None:
            self._fail_backlog(self._broken)

    def _on_reaped(self, worker: _Worker, returncode: int | None) -> None:
        if not worker.exited:
            worker.exited = True
            worker.returncode = returncode
        self._finish(worker)

    def _finish(self, worker: _Worker) -> None:
        """Both ends are in: its socket closed and its exit status known (or given up)."""
        if worker.finished or not worker.eof:
            return
        worker.finished = True
        self._workers.pop(worker.id, None)
        if worker.pid is not None:
            self._by_pid.pop(worker.pid, None)
            self._pids.discard(worker.pid)
            template = worker.template
            if template is not None and not template.chan.closed:
                template.reap(worker.pid)
        head = worker.blamed
        if head is not None and self._tickets.get(head.key) is head:
            del self._tickets[head.key]
            self._blame(worker, head)
        if not worker.ready:
            if worker.why:  # killed with its template: not a failure of its own
                self._spawn()
            else:
                why = (worker.start_error.message if worker.start_error
                       else describe_exit(worker.returncode))
                self._start_failed(why, worker.start_error, respawn=True)
        self._check_gone()

    def _blame(self, worker: _Worker, head: _Ticket) -> None:
        key = head.key
        if head.cancel_requested:
            self.sink.cancelled(key)
            return
        ended = worker.why or describe_exit(worker.returncode)
        if head.timed_out:
            assert head.timeout_s is not None
            detail = f"; its worker (pid {worker.pid}) ended: {ended}"
            self.sink.failed(key, timeout_info(head.timeout_s, detail))
            return
        job_id, attempt = key
        if worker.why:
            msg = (f"job {job_id} (attempt {attempt}) was running in worker process (pid "
                   f"{worker.pid}) when it was {worker.why}; a new worker took its place")
        else:
            msg = (f"job {job_id} (attempt {attempt}) killed its worker process (pid "
                   f"{worker.pid}, {ended}); a new worker took its place")
        self.sink.failed(key, ErrorInfo("WorkerCrashed", msg))

    def _start_failed(self, why: str, error: ErrorInfo | None, *, respawn: bool) -> None:
        """A worker or the template died before it was ready (rule 6)."""
        if self._closing or self._broken is not None:
            return
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES:
            self._break(f"cpu worker processes fail to start ({why})",
                        error.traceback if error else "")
        elif respawn:
            self._spawn()

    def _break(self, message: str, traceback: str) -> None:
        self._broken = ErrorInfo("WorkerStartFailed", message, traceback, retryable=False)
        self._drop_waiting()
        self._fail_backlog(self._broken)
        for fut, _ in self._ready_waiters:
            if not fut.done():
                fut.set_exception(WorkerStartFailed(self._broken))
        self._ready_waiters.clear()

    def _fail_backlog(self, error: ErrorInfo) -> None:
        while self._backlog:
            ticket = self._backlog.popleft()
            del self._tickets[ticket.key]
            self.sink.failed(ticket.key, error)

    def _check_ready(self) -> None:
        if not self._ready_waiters:
            return
        workers_up = sum(1 for w in self._live if w.ready) >= self.workers
        template = self._template
        template_up = not self._use_template or (template is not None and template.ready)
        still = []
        for fut, want_workers in self._ready_waiters:
            if fut.done():
                continue
            if workers_up if want_workers else template_up:
                fut.set_result(None)
            else:
                still.append((fut, want_workers))
        self._ready_waiters = still

    def _check_gone(self) -> None:
        if self._gone is not None and not self._workers and not self._templates:
            self._gone.set()

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
            best.chan.send(wire.OP_RUN, ticket.token, ticket.payload)
            if len(best.assigned) == 1:
                self._head_changed(best)
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
                    worker.chan.send(wire.OP_CANCEL, ticket.token)
                    idle -= 1

    @staticmethod
    def _error_from(payload: bytes, *, retryable: bool = True) -> ErrorInfo:
        info = ErrorInfo.from_wire(pickle.loads(payload))
        if info.retryable and not retryable:
            info = dataclasses.replace(info, retryable=False)
        return info
