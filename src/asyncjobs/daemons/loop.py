"""One loop process of ``asyncjobs node``: an event loop running an ``Engine`` for the
attempts a coordinator assigns it over one link.

How this works:

1. ``LoopProcess.run`` connects, registers, and runs a session until the link is lost;
   then it cancels what the engine runs (the coordinator requeues those attempts),
   waits with exponential backoff and full jitter, and connects again, forever. Only a
   stop request (SIGTERM, SIGINT, the supervisor gone) ends it.
2. A session has three tasks: the reader (reads the link continuously: the transport
   buffers nothing otherwise), the sender (the only task that writes: a ``send`` cut
   short breaks the link, so nothing else may be cancelled mid-write) and the heartbeat.
   Everything to send goes through one outbox; results ended in one loop iteration
   leave together, in one ``Result`` frame.
3. Each assigned attempt runs as an engine job ``"job#attempt"`` with no retries (the
   coordinator owns retries) and is answered exactly once, in the session it came in:
   a result from an earlier session is dropped (its attempt was requeued already).
4. Draining (SIGTERM): attempts not started yet go back in one ``Drain`` and get no
   ``Result``; running ones may finish within the drain timeout, then are cancelled
   without an answer either (the node stopping is not the job's failure: the
   coordinator runs them again elsewhere once the link closes); then ``Goodbye``.
5. A coordinator silent for ``SILENCE_S`` is gone, as is a link that breaks or ends.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import msgpack

from ..backend import Entry
from ..engine import CPU_PREFETCH, Engine
from ..errors import ConnectionFailed, HandshakeFailed
from ..executors.remote import NodeCalls
from ..executors.shell import ShellGuard
from ..model import ErrorInfo, JobKind, JobStatus
from ..protocol import (
    Assign,
    AttemptRef,
    AttemptResult,
    AttemptSpec,
    Cancel,
    Drain,
    Error,
    FrameTooLarge,
    Goodbye,
    Heartbeat,
    LocalProtocolError,
    Message,
    Register,
    Result,
    Role,
)
from ..transport import Link, connect
from .settings import PULSE as PULSE
from .settings import REGISTERED as REGISTERED
from .settings import LoopSettings as LoopSettings

if TYPE_CHECKING:

    from ..core.commands import JobFinished
    from ..executors.base import Executor, Sink

log = logging.getLogger("asyncjobs.node")

#: seconds between our heartbeats
HEARTBEAT_S = 1.0
#: a coordinator that sent nothing for this long is gone
SILENCE_S = 5.0
#: reconnect delays: the first bound, doubled each failure up to the cap (full jitter)
BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 5.0
#: a link that lived this long resets the backoff (a link that dies at once does not)
BACKOFF_RESET_AFTER_S = 10.0
#: a failed connection attempt (wrong secret, nobody listening) is logged at most this
#: often: a node may wait hours for its coordinator
CONNECT_LOG_EVERY_S = 60.0
#: results per ``Result`` frame at most (a frame too large for the peer is split further)
RESULTS_PER_FRAME = 1000
#: how long cancelled attempts may take to end when the link is lost or we stop
CANCEL_WAIT_S = 5.0


def prepare() -> None:
    """Import what a loop's engine runs with (``node_engine``) before its settings come:
    a loop started early waits for them meanwhile (a loop without cpu workers imports
    the cpu pool's module for nothing, ~3 ms)."""
    from ..executors import cpu, io, thread  # noqa: F401


def node_engine(settings: LoopSettings) -> Engine:
    """The loop's engine. Its cpu attempts are held one per worker (no prefetch inside
    the pool): the coordinator prefetches already, and an attempt the pool has not
    started must show as queued, so that a drain can hand it back."""
    from ..executors.cpu import CpuPool
    from ..executors.io import IoExecutor
    from ..executors.thread import ThreadExecutor

    cpu = settings.cpu_workers

    def executors(sink: Sink) -> dict[JobKind, Executor]:
        made: dict[JobKind, Executor] = {
            JobKind.IO: IoExecutor(sink),
            JobKind.THREAD: ThreadExecutor(sink, settings.thread_workers)}
        if cpu:
            made[JobKind.CPU] = CpuPool(sink, cpu, prefetch=CPU_PREFETCH)
        return made

    concurrency: dict[JobKind, int | None] = {
        JobKind.IO: settings.io_concurrency, JobKind.CPU: cpu or None,
        JobKind.THREAD: settings.thread_workers}
    return Engine(executors, concurrency)


@dataclass(slots=True)
class _Held:
    """An attempt this loop holds, from its ``Assign`` to its one ``Result``."""

    job_id: str
    attempt: int
    session: int
    started: float | None = None
    #: handed back by a drain: it gets no result
    returned: bool = False
    #: why it was cancelled here, when it was (the error its result carries)
    cancel_reason: str | None = None


class _LinkLost(Exception):
    """The session's link is gone (broken, ended, silent): reconnect."""


class LoopProcess:
    """The loop: an engine, and links to the coordinator one after another.

    :param settings: this loop's settings
    :param rng: the jitter of reconnect delays
    """

    def __init__(self, settings: LoopSettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.tag = f"node {settings.name} loop {settings.index}"
        self._rng = rng or random.Random()
        self._tls = settings.client_tls()
        self._guard = ShellGuard()
        self._calls = NodeCalls(shell_guard=self._guard)
        self.engine = node_engine(settings)
        self._held: dict[str, _Held] = {}
        self._by_job: dict[str, set[str]] = {}
        self._session = 0
        self._link: Link | None = None
        self._outbox: list[Message] = []
        self._results: list[AttemptResult] = []
        self._wake = anyio.Event()
        self._stop = anyio.Event()
        #: True: stop without draining (the supervisor is gone)
        self._hurry = False
        self._last_connect_log = -CONNECT_LOG_EVERY_S
        #: failed connection attempts since the last link
        self._failed_connects = 0
        #: connection attempts made (tests and logs)
        self.connects = 0
        #: the drain is over: the sender stops once its outbox is empty
        self._drained = False
        #: the connection attempt in progress (a stop cancels it)
        self._connecting = anyio.CancelScope()

    # -- control ------------------------------------------------------------------------

    def request_stop(self, *, hurry: bool = False) -> None:
        """Drain and stop (SIGTERM); with ``hurry``, stop at once.

        A second SIGTERM is no hurry: systemd signals every process of the unit and the
        supervisor forwards its own, so a loop commonly gets two."""
        self._hurry = self._hurry or hurry
        self._connecting.cancel()
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Serve coordinators until asked to stop; close the engine either way."""
        try:
            async with anyio.create_task_group() as tg:
                if self.settings.status_fd is not None:
                    tg.start_soon(self._pulse)
                await self._serve_forever()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown()

    def _tell_supervisor(self, what: bytes) -> None:
        fd = self.settings.status_fd
        if fd is not None:
            try:
                os.write(fd, what)
            except (BlockingIOError, BrokenPipeError, OSError):
                pass  # a full pipe: the supervisor is behind, the next pulse will do

    async def _pulse(self) -> None:
        """Tell the supervisor that this event loop still turns (a loop stuck in a job
        that never yields is killed and started again: the coordinator cannot see it)."""
        while True:
            self._tell_supervisor(PULSE)
            await anyio.sleep(HEARTBEAT_S)

    async def _serve_forever(self) -> None:
        failures = 0
        while not self._stop.is_set():
            link = await self._connect()
            if link is not None and self._stop.is_set():
                await link.aclose("draining")
                return
            if link is not None:
                began = time.monotonic()
                try:
                    await self._run_session(link)
                finally:
                    await self._end_session(link)
                if time.monotonic() - began >= BACKOFF_RESET_AFTER_S:
                    failures = 0
            if self._stop.is_set():
                return
            bound = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(failures, 16))
            failures += 1
            with anyio.move_on_after(self._rng.uniform(0, bound)):
                await self._stop.wait()

    async def _connect(self) -> Link | None:
        s = self.settings
        self.connects += 1
        try:
            with anyio.CancelScope() as self._connecting:
                if self._stop.is_set():
                    return None
                link = await connect(s.host, s.port, role=Role.NODE, secret=s.secret,
                                     tls=self._tls)
            if self._connecting.cancelled_caught:
                return None  # stopped meanwhile
        except HandshakeFailed as exc:
            self._connect_failed(logging.ERROR, f"the handshake with {exc.address} failed: "
                                                f"{exc.cause}")
            return None
        except ConnectionFailed as exc:
            self._connect_failed(logging.WARNING, f"cannot connect: {exc}")
            return None
        except OSError as exc:
            self._connect_failed(logging.WARNING,
                                 f"cannot connect to {s.host}:{s.port}: {exc}")
            return None
        if self._failed_connects:
            log.info("%s: connected to %s after %d failed attempts", self.tag,
                     link.address, self._failed_connects)
        self._failed_connects = 0
        return link

    def _connect_failed(self, level: int, what: str) -> None:
        self._failed_connects += 1
        now = time.monotonic()
        if now - self._last_connect_log >= CONNECT_LOG_EVERY_S:
            self._last_connect_log = now
            log.log(level, "%s: %s (attempt %d; retrying with backoff, logged once a "
                           "minute)", self.tag, what, self._failed_connects)

    # -- one session --------------------------------------------------------------------

    async def _run_session(self, link: Link) -> None:
        s = self.settings
        self._session += 1
        self._link = link
        self._outbox = [Register(s.name, s.index, s.loops, {
            JobKind.IO: s.io_concurrency, JobKind.CPU: s.cpu_workers,
            JobKind.THREAD: s.thread_workers})]
        self._results = []
        # the sender goes at once: it would otherwise wait for the first heartbeat's
        # wake-up, and the node would register a second late
        self._wake.set()
        try:
            async with anyio.create_task_group() as tg:
                sender_done = anyio.Event()
                tg.start_soon(self._sender, link, sender_done)
                tg.start_soon(self._heartbeats)
                tg.start_soon(self._reader, link)
                await self._stop.wait()
                await self._drain()
                self._wake.set()
                with anyio.move_on_after(CANCEL_WAIT_S):
                    await sender_done.wait()
                tg.cancel_scope.cancel()
        except* _LinkLost as group:
            log.warning("%s: lost the link with %s: %s", self.tag, link.address,
                        group.exceptions[0])
        except* (anyio.BrokenResourceError, anyio.ClosedResourceError) as group:
            log.warning("%s: lost the link with %s: %s", self.tag, link.address,
                        group.exceptions[0])
        except* Exception as group:  # a bug of ours: say so, and start over on a new link
            log.error("%s: the session with %s failed", self.tag, link.address,
                      exc_info=group.exceptions[0])

    async def _end_session(self, link: Link) -> None:
        with anyio.CancelScope(shield=True):
            self._session += 1  # what ends from here on belongs to no link
            self._link = None
            self._cancel_all("cancelled: the link to the coordinator was lost")
            await link.aclose("draining" if self._stop.is_set() else "")
            with anyio.move_on_after(CANCEL_WAIT_S):
                await self.engine.wait_idle()
            self._outbox.clear()
            self._results.clear()

    async def _reader(self, link: Link) -> None:
        while True:
            try:
                with anyio.fail_after(SILENCE_S):
                    msg = await link.receive()
            except TimeoutError:
                raise _LinkLost(f"the coordinator was silent for {SILENCE_S:g} s") from None
            except anyio.EndOfStream:
                raise _LinkLost("the coordinator closed the link") from None
            if isinstance(msg, Assign):
                await self._import_targets(msg.attempts)
                self._assign(msg.attempts)
            elif isinstance(msg, Cancel):
                self._cancel_jobs(msg.job_ids, msg.reason)
            elif isinstance(msg, Error):
                log.error("%s: the coordinator says: %s: %s", self.tag, msg.code,
                          msg.message)
            elif isinstance(msg, Goodbye):
                raise _LinkLost(f"the coordinator said goodbye ({msg.reason})")
            elif not isinstance(msg, Heartbeat):
                log.warning("%s: ignored an unexpected %s", self.tag, type(msg).__name__)

    async def _heartbeats(self) -> None:
        seq = 0
        while True:
            await anyio.sleep(HEARTBEAT_S)
            self._post(Heartbeat(seq))
            seq += 1

    def _post(self, msg: Message) -> None:
        self._outbox.append(msg)
        self._wake.set()

    async def _sender(self, link: Link, done: anyio.Event) -> None:
        """The only writer: what was posted, then the results, in as few writes as
        possible. Returns once the outbox is empty after a stop."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await anyio.lowlevel.checkpoint()  # results of this iteration join the batch
            msgs, self._outbox = self._outbox, []
            results, self._results = self._results, []
            for start in range(0, len(results), RESULTS_PER_FRAME):
                msgs.append(Result(tuple(results[start:start + RESULTS_PER_FRAME])))
            for msg in msgs:
                await self._send(link, msg)
            if self._stop.is_set() and self._drained and not self._outbox \
                    and not self._results:
                done.set()
                return

    async def _send(self, link: Link, msg: Message) -> None:
        try:
            await link.send(msg)
            if isinstance(msg, Register):
                log.info("%s: registered with %s", self.tag, link.address)
                self._tell_supervisor(REGISTERED)
        except FrameTooLarge:
            if not isinstance(msg, Result):
                raise
            items = msg.results
            if len(items) > 1:
                half = len(items) // 2
                await self._send(link, Result(items[:half]))
                await self._send(link, Result(items[half:]))
            else:
                r = items[0]
                await link.send(Result((dataclasses.replace(
                    r, value=None, error=self._error(
                        "ResultTooLarge", f"{r.job_id}: its result is larger than the "
                        "coordinator accepts in one frame", retryable=False)),)))
        except LocalProtocolError:
            if not isinstance(msg, Result) or all(
                    self._encodable(r) is r for r in msg.results):
                raise
            # UnencodableValue names one job; mend every item that needs it, once
            await self._send(link, Result(tuple(self._encodable(r) for r in msg.results)))

    def _encodable(self, r: AttemptResult) -> AttemptResult:
        """``r`` as msgpack can carry it: a value it cannot carry fails the attempt, and
        an error's text with unencodable characters (lone surrogates) is mended."""
        try:
            msgpack.packb(r.value)
        except (TypeError, ValueError, OverflowError) as exc:
            r = dataclasses.replace(r, value=None, error=self._error(
                "UnencodableValue",
                f"{r.job_id}: its result cannot travel as msgpack: {exc}", retryable=False))
        if r.error is not None:
            try:
                msgpack.packb(r.error.to_wire())
            except (TypeError, ValueError, OverflowError):
                e = r.error
                r = dataclasses.replace(r, error=dataclasses.replace(
                    e, type_name=_mend(e.type_name), message=_mend(e.message),
                    traceback=_mend(e.traceback), where=_mend(e.where)))
        return r

    def _error(self, type_name: str, message: str, *, retryable: bool = True,
               timed_out: bool = False) -> ErrorInfo:
        return ErrorInfo(type_name, message, timed_out=timed_out, retryable=retryable,
                         where=self.settings.name)

    # -- attempts -----------------------------------------------------------------------

    async def _import_targets(self, attempts: tuple[AttemptSpec, ...]) -> None:
        """Import the targets never seen before in a thread, before the attempts start:
        the event loop (heartbeats, results) keeps turning while a slow module imports.
        Reading the link waits meanwhile, so messages keep their order."""
        refs = {ref for spec in attempts
                if (ref := self._calls.to_import(spec.target, spec.args)) is not None}
        if refs:
            await anyio.to_thread.run_sync(self._calls.preload, refs)

    def _assign(self, attempts: tuple[AttemptSpec, ...]) -> None:
        entries = []
        returned = []
        for spec in attempts:
            key = f"{spec.job_id}#{spec.attempt}"
            if key in self._held:
                if self._held[key].session == self._session:
                    log.warning("%s: %s was assigned twice; ignored", self.tag, key)
                else:  # a thread job of a lost link, which no one can stop, still runs
                    self._results.append(AttemptResult(
                        spec.job_id, spec.attempt, None, self._error(
                            "Busy", f"{spec.job_id}: attempt {spec.attempt} still runs "
                            "here from before the link was lost"), 0.0))
                    self._wake.set()
                continue
            if self._stop.is_set():
                returned.append(AttemptRef(spec.job_id, spec.attempt))
                continue
            held = _Held(spec.job_id, spec.attempt, self._session)
            # a chunk of io calls holds that many io slots, no more than this loop has
            weight = min(spec.weight, self.settings.io_concurrency or spec.weight)
            try:
                call, kind = self._calls.build(spec.target, spec.args, spec.kwargs,
                                               spec.kind, spec.timeout_s, weight)
                if kind is JobKind.CPU and not self.settings.cpu_workers:
                    raise ValueError(f"{spec.job_id}: a cpu job, and this loop of node "
                                     f"{self.settings.name} has no cpu workers")
            except Exception as exc:
                info = dataclasses.replace(
                    ErrorInfo.from_exception(exc, retryable=False), where=self.settings.name)
                self._results.append(AttemptResult(spec.job_id, spec.attempt, None, info, 0.0))
                self._wake.set()
                continue
            self._held[key] = held
            self._by_job.setdefault(spec.job_id, set()).add(key)
            entries.append(Entry(key, kind, self._ended_callback(key, held), call=call,
                                 retries=0, on_start=self._started_callback(held),
                                 weight=weight if kind is JobKind.IO else 1))
        if returned:
            self._post(Drain(tuple(returned)))
        if entries:
            self.engine.submit(*entries)

    @staticmethod
    def _started_callback(held: _Held) -> Any:
        def started(attempt: int) -> None:
            held.started = time.monotonic()
        return started

    def _ended_callback(self, key: str, held: _Held) -> Any:
        def ended(done: JobFinished) -> None:
            self._ended(key, held, done)
        return ended

    def _ended(self, key: str, held: _Held, done: JobFinished) -> None:
        self._held.pop(key, None)
        keys = self._by_job.get(held.job_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_job[held.job_id]
        if held.returned or held.session != self._session:
            return
        duration = 0.0 if held.started is None else time.monotonic() - held.started
        value = None
        if done.status is JobStatus.SUCCEEDED:
            value, error = done.result, None
        elif done.status is JobStatus.CANCELLED:
            error = self._error("CancelledError", held.cancel_reason or "cancelled")
        else:
            error = done.error or self._error("Error", "the attempt failed")
            error = dataclasses.replace(error, where=self.settings.name)
        self._results.append(AttemptResult(held.job_id, held.attempt, value, error,
                                           duration))
        self._wake.set()

    def _cancel_jobs(self, job_ids: tuple[str, ...], reason: str) -> None:
        why = f"cancelled by the coordinator{': ' + reason if reason else ''}"
        for job_id in job_ids:
            for key in list(self._by_job.get(job_id, ())):
                held = self._held.get(key)
                if held is not None and held.cancel_reason is None:
                    held.cancel_reason = why
                    self.engine.cancel(key, why)

    def _cancel_all(self, why: str, *, hand_back: bool = False) -> None:
        """Cancel every attempt here. With ``hand_back`` (the node stops) none of them
        is answered: an attempt cut short by its node stopping is not the job's failure,
        and the coordinator runs it again elsewhere once this link closes."""
        for key, held in list(self._held.items()):
            if hand_back:
                held.returned = True
            if held.cancel_reason is None:
                held.cancel_reason = why
                self.engine.cancel(key, why)

    # -- draining and stopping ----------------------------------------------------------

    async def _drain(self) -> None:
        """Hand back what has not started, let the rest finish (bounded), answer it."""
        returned = []
        count = len(self._held)
        if not self._hurry:
            for key, held in list(self._held.items()):
                if self.engine.status(key) is not JobStatus.RUNNING:
                    held.returned = True
                    returned.append(AttemptRef(held.job_id, held.attempt))
                    self.engine.cancel(key, "handed back: the node is draining")
            self._post(Drain(tuple(returned)))
            log.info("%s: draining: %d attempts handed back, %d running", self.tag,
                     len(returned), count - len(returned))
            with anyio.move_on_after(self.settings.drain_timeout_s):
                while self._held and not self._hurry:
                    with anyio.move_on_after(0.1):
                        await self.engine.wait_idle()
        self._cancel_all("the node stopped before the attempt finished", hand_back=True)
        with anyio.move_on_after(CANCEL_WAIT_S):
            await self.engine.wait_idle()
        self._drained = True

    async def _shutdown(self) -> None:
        self._cancel_all("the node stopped before the attempt finished", hand_back=True)
        try:
            await self.engine.aclose(cancel=True)
        finally:
            try:
                await self._calls.aclose()
            finally:
                await self._guard.aclose()
        log.info("%s: stopped", self.tag)


def _mend(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")
