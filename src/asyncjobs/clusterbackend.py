"""``ClusterBackend``: the ``Backend`` of ``asyncjobs.connect()`` and ``Runner(loops=N)``,
through one link to a coordinator.

``ClusterBackend`` is the second implementation of ``Backend`` (the engine is the
first): ``submit``, ``map`` and flows run unchanged on it. The conversation:

1. After the handshake the coordinator sends ``ClusterInfo`` (and again whenever the
   total changes); ``capacity()`` answers from the latest one, None while no node is up.
2. Each job is sent once as a ``JobSpec``; attempts, retries and placement are the
   coordinator's. Everything submitted in one loop iteration goes out as one ``Submit``
   (split to fit the peer's frame limit). A job whose call cannot travel fails at once,
   alone; the rest are sent.
3. The coordinator answers each job once, in an ``Outcome``; that is its ``finished``.
4. One task reads the link all the time (the transport only reads when asked); one task
   writes, draining an outbox, so that no ``send`` is ever cancelled mid-write (that
   breaks the link). Heartbeats go every ``HEARTBEAT_S``; a coordinator silent for
   ``SILENCE_S`` counts as gone.
5. If the link dies, every unfinished job fails saying so, and ``submit`` raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .core.commands import JobFinished
from .errors import RunnerClosed
from .executors.remote import to_wire
from .flowrun import FlowRun
from .model import ErrorInfo, JobKind, JobStatus
from .protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    Cancel,
    ClusterInfo,
    DeclareLimits,
    Error,
    FlowStatus,
    Goodbye,
    Heartbeat,
    JobSpec,
    LocalProtocolError,
    Message,
    Outcome,
    ReleaseLimits,
    StatusReply,
    StatusRequest,
    Submit,
)
from .protocol.messages import encode
from .transport import Link

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

    from .backend import JobEntry
    from .core.policy import LimitSpec
    from .flow.plan import FlowPlan
    from .report import FlowReport

log = logging.getLogger(__name__)

#: seconds between our heartbeats
HEARTBEAT_S = 1.0
#: a coordinator silent this long (no message at all) is taken for gone
SILENCE_S = 10.0
#: jobs per ``Submit`` frame at most (a frame also stays within the peer's limit)
SUBMIT_BATCH = 4096
#: once only cancelled jobs remain, how long closing waits for their outcomes
CANCEL_WAIT_S = 5.0
#: how long closing waits for the outbox to be written
FLUSH_WAIT_S = 5.0
#: seconds between a flow's progress reports to the coordinator
FLOW_STATUS_EVERY_S = 1.0
#: how long entering waits for the coordinator's first ``ClusterInfo`` (its first
#: message, sent with the handshake's end), so a first ``map`` sizes its chunks by it
CLUSTER_INFO_WAIT_S = 2.0


class ClientLink(Protocol):
    """What the client needs of its link: a ``transport.Link``, or a coordinator's
    ``LocalLink`` in this very process."""

    #: the coordinator's address, for messages
    address: str

    async def send_many(self, msgs: Iterable[Message]) -> None: ...
    def __aiter__(self) -> AsyncIterator[Message]: ...
    async def aclose(self, reason: str = "") -> None: ...


class ClusterBackend:
    """A ``Backend`` over one link (role client) to a coordinator.

    :param link: an authenticated link (``transport.connect(..., role=Role.CLIENT)``),
        or a ``LocalLink``
    """

    def __init__(self, link: ClientLink) -> None:
        self.link = link
        self.address = link.address
        #: unfinished jobs, sent or not
        self._entries: dict[str, JobEntry] = {}
        #: jobs submitted this loop iteration, not yet in the outbox
        self._pending: dict[str, JobEntry] = {}
        #: jobs whose cancel went (or goes) to the coordinator
        self._cancelling: set[str] = set()
        self._cancels: list[str] = []
        self._cancel_reason = "cancelled"
        self._scopes: set[str] = set()
        self._capacity: dict[JobKind, int] = {}
        self._nodes = 0
        #: set once the first ``ClusterInfo`` arrived
        self.informed = asyncio.Event()
        self._outbox: list[Message] = []
        self._wake_sender = asyncio.Event()
        self._flush_due = False
        self._idle = asyncio.Event()
        self._closing = False
        #: why the link is gone (None while it is up)
        self.lost: str | None = None
        self._requests = itertools.count(1)
        self._replies: dict[int, asyncio.Future[StatusReply]] = {}
        self._heard = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._sender: asyncio.Task[None] | None = None
        self._stop_sending = False

    def start(self) -> None:
        """Start reading, writing and heartbeats (tasks owned by this backend)."""
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send_loop())
        self._tasks = [loop.create_task(self._read_loop()),
                       loop.create_task(self._heartbeat_loop())]

    # -- Backend ----------------------------------------------------------------------

    def submit(self, *entries: JobEntry) -> None:
        """Send jobs to the coordinator with everything else submitted in this loop
        iteration.

        After the link was lost the jobs fail (soon, not inside this call: a refill
        made from a job's ``finished`` must not raise into it).

        :raises RunnerClosed: once closed
        :raises ValueError: for an id already in use (nothing of the call is taken)
        """
        if self._closing:
            self._check_open()
        known = self._entries
        for entry in entries:
            if entry.job_id in known:
                raise ValueError(f"job {entry.job_id!r} was submitted twice")
        if len(entries) > 1 and len({e.job_id for e in entries}) < len(entries):
            raise ValueError("one submit() names a job id twice")
        for entry in entries:
            known[entry.job_id] = entry
            self._pending[entry.job_id] = entry
        if self.lost is not None:
            asyncio.get_running_loop().call_soon(self._fail_pending)
            return
        self._flush_soon()

    def cancel(self, job_id: str, reason: str = "cancelled") -> None:
        """Cancel a job: one not sent yet ends at once; for one sent, the coordinator
        answers with its cancelled outcome (or its result, if that came first)."""
        entry = self._pending.pop(job_id, None)
        if entry is not None:
            self._finish(entry, JobFinished(job_id, JobStatus.CANCELLED, 0,
                                            error=ErrorInfo("Cancelled", reason)))
            return
        if job_id in self._entries and job_id not in self._cancelling and self.lost is None:
            self._cancelling.add(job_id)
            self._cancels.append(job_id)
            self._cancel_reason = reason
            self._flush_soon()

    def status(self, job_id: str) -> JobStatus | None:
        # the coordinator tells us only how a job ended: queued or running, we cannot say
        return JobStatus.QUEUED if job_id in self._entries else None

    def capacity(self, kind: JobKind) -> int | None:
        if not self._nodes:
            return None
        return self._capacity.get(kind) or None

    def declare_limits(self, scope: str, limits: Mapping[str, LimitSpec]) -> None:
        """:raises ValueError: if the scope is declared already"""
        if scope in self._scopes:
            raise ValueError(f"limits of scope {scope!r} are declared already")
        self._check_open()
        self._scopes.add(scope)
        self._flush_submits()  # keep the order: jobs submitted before, then this
        self._put(DeclareLimits(scope, dict(limits)))

    def release_limits(self, scope: str) -> None:
        if scope in self._scopes:
            self._scopes.discard(scope)
            self._flush_submits()
            self._put(ReleaseLimits(scope))

    # -- the client's own -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet finished."""
        return len(self._entries)

    @property
    def is_open(self) -> bool:
        """Whether the link is up and not closing."""
        return self.lost is None and not self._closing

    def send(self, msg: Message) -> None:
        """Queue a message for the coordinator (after what was submitted before it)."""
        self._flush_submits()
        self._put(msg)

    async def request_status(self, timeout_s: float = 10.0) -> StatusReply:
        """The cluster's nodes and flows, as the coordinator sees them.

        :raises RunnerClosed: if the link is gone
        :raises TimeoutError: no answer within ``timeout_s``
        """
        self._check_open()
        request_id = next(self._requests)
        reply: asyncio.Future[StatusReply] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = reply
        self._put(StatusRequest(request_id))
        try:
            async with asyncio.timeout(timeout_s):
                return await reply
        finally:
            self._replies.pop(request_id, None)

    async def wait_idle(self) -> None:
        """Return once every submitted job has finished (the cancelled ones get at most
        ``CANCEL_WAIT_S`` for their outcomes; then they end here, cancelled)."""
        while self._entries:
            if self._entries.keys() <= self._cancelling or self.lost is not None:
                with anyio.move_on_after(CANCEL_WAIT_S):
                    await self._wait_empty()
                break
            await self._wait_empty(until_cancelling=True)
        for job_id, entry in list(self._entries.items()):
            self._finish(entry, JobFinished(job_id, JobStatus.CANCELLED, 0,
                                            error=ErrorInfo("Cancelled", "cancelled: no "
                                                            "answer from the coordinator")))

    async def _wait_empty(self, until_cancelling: bool = False) -> None:
        while self._entries:
            if until_cancelling and self._entries.keys() <= self._cancelling:
                return
            self._idle.clear()
            await self._idle.wait()

    async def aclose(self, *, cancel: bool) -> None:
        """Wait for the submitted jobs (with ``cancel``: cancel them first), say
        goodbye and close the link. Every job has finished when this returns."""
        try:
            if cancel:
                # bounded (CANCEL_WAIT_S, FLUSH_WAIT_S): safe to shield from a
                # cancellation that is the reason we close
                with anyio.CancelScope(shield=True):
                    for job_id in list(self._entries):
                        self.cancel(job_id, "cancelled: its client closed")
                    await self.wait_idle()
            else:
                await self.wait_idle()
        finally:
            self._closing = True
            with anyio.CancelScope(shield=True):
                await self._stop()

    async def _stop(self) -> None:
        self._flush_submits()
        self._stop_sending = True
        self._wake_sender.set()
        if self._sender is not None:
            # never cancelled mid-write unless the peer stopped reading for that long
            await asyncio.wait([self._sender], timeout=FLUSH_WAIT_S)
            if not self._sender.done():
                self._sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sender
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.link.aclose("client closing")
        self._lose("the client closed")

    # -- writing ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.lost is not None:
            raise RunnerClosed(f"the connection to the coordinator at {self.address} was "
                               f"lost ({self.lost}); nothing more can be submitted")
        if self._closing:
            raise RunnerClosed("this cluster connection is closed; open one with "
                               "'async with asyncjobs.connect(address)'")

    def _put(self, msg: Message) -> None:
        self._outbox.append(msg)
        self._wake_sender.set()

    def _flush_soon(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_submits)

    def _flush_submits(self) -> None:
        """This iteration's submissions and cancels, into the outbox."""
        self._flush_due = False
        if self._pending:
            batch, self._pending = self._pending, {}
            specs: list[JobSpec] = []
            for entry in batch.values():
                spec = self._spec(entry)
                if spec is not None:
                    specs.append(spec)
            for i in range(0, len(specs), SUBMIT_BATCH):
                self._put(Submit(tuple(specs[i:i + SUBMIT_BATCH])))
        if self._cancels:
            ids, self._cancels = tuple(self._cancels), []
            self._put(Cancel(job_ids=ids, reason=self._cancel_reason))

    def _spec(self, entry: JobEntry) -> JobSpec | None:
        """The job as it travels; None (and the job failed) if its call cannot."""
        try:
            call = entry.begin(1)
            ref, args, kwargs = to_wire(call)
        except Exception as exc:
            self._fail(entry, ErrorInfo.from_exception(exc, retryable=False))
            return None
        return JobSpec(entry.job_id, ref, tuple(args), kwargs or None, kind=entry.kind,
                       timeout_s=call.timeout_s, retries=entry.retries,
                       backoff_s=entry.backoff_s, limits=tuple(entry.limits))

    async def _send_loop(self) -> None:
        while True:
            if not self._outbox:
                if self._stop_sending:
                    return
                self._wake_sender.clear()
                await self._wake_sender.wait()
                continue
            batch, self._outbox = self._outbox, []
            try:
                await self._send_batch(batch)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError,
                    LocalProtocolError) as exc:
                self._lose(str(exc) or type(exc).__name__)
                return

    async def _send_batch(self, batch: list[Message]) -> None:
        link = self.link
        while batch:
            try:
                await link.send_many(batch)
                return
            except LocalProtocolError:
                # send_many queued the messages before the bad one; find it, fix it
                bad = self._first_unsendable(batch)
                if bad is None:
                    raise  # not the messages' fault: the link's state
                index, replacement = bad
                batch = [*replacement, *batch[index + 1:]]
                if index > 0:
                    await link.send_many(())  # flush what was queued before it

    def _first_unsendable(self, batch: list[Message]) -> tuple[int, list[Message]] | None:
        """The first message of ``batch`` the link refuses, and what to send instead: a
        ``Submit`` without the jobs that cannot travel (they fail), or split to fit."""
        link = self.link
        limit = (link.peer.max_frame_bytes if isinstance(link, Link)
                 else DEFAULT_MAX_FRAME_BYTES)
        for index, msg in enumerate(batch):
            try:
                size = len(encode(msg))
            except LocalProtocolError:
                size = None
            if size is not None and size + 64 <= limit:
                continue
            if not isinstance(msg, Submit):
                log.error("dropped a message the coordinator would refuse: %r", msg)
                return index, []
            if size is not None and len(msg.jobs) > 1:  # too large: halves
                half = len(msg.jobs) // 2
                return index, [Submit(msg.jobs[:half]), Submit(msg.jobs[half:])]
            keep: list[JobSpec] = []
            for spec in msg.jobs:
                try:
                    alone = len(encode(Submit((spec,))))
                except LocalProtocolError as exc:
                    self._fail_id(spec.job_id, ErrorInfo.from_exception(exc, retryable=False))
                    continue
                if alone + 64 > limit:
                    self._fail_id(spec.job_id, ErrorInfo(
                        "FrameTooLarge", f"job {spec.job_id}: its arguments take {alone} "
                        f"bytes, more than the coordinator accepts ({limit})",
                        retryable=False))
                    continue
                keep.append(spec)
            return index, ([Submit(tuple(keep))] if keep else [])
        return None

    async def _heartbeat_loop(self) -> None:
        for seq in itertools.count():
            self._put(Heartbeat(seq))
            await asyncio.sleep(HEARTBEAT_S)
            if time.monotonic() - self._heard > SILENCE_S:
                self._lose(f"no word from it for {SILENCE_S:g} s")
                await self.link.aclose("the coordinator is silent")
                return

    # -- reading ----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "it closed the connection"
        try:
            async for msg in self.link:
                self._heard = time.monotonic()
                kind = type(msg)
                if kind is Outcome:
                    self._outcomes(msg)  # type: ignore[arg-type]
                elif kind is ClusterInfo:
                    assert isinstance(msg, ClusterInfo)
                    self._capacity = dict(msg.capacity)
                    self._nodes = msg.nodes
                    self.informed.set()
                elif kind is StatusReply:
                    assert isinstance(msg, StatusReply)
                    reply = self._replies.get(msg.request_id)
                    if reply is not None and not reply.done():
                        reply.set_result(msg)
                elif kind is Error:
                    assert isinstance(msg, Error)
                    log.warning("the coordinator at %s says: %s (%s)", self.address,
                                msg.message, msg.code)
                    reason = f"it said: {msg.message}"
                elif kind is Goodbye:
                    assert isinstance(msg, Goodbye)
                    reason = f"it said goodbye ({msg.reason or 'no reason given'})"
        except anyio.ClosedResourceError:
            reason = "the client closed"
        except anyio.BrokenResourceError as exc:
            reason = str(exc) or type(exc).__name__
        self._lose(reason)

    def _outcomes(self, msg: Outcome) -> None:
        entries = self._entries
        for out in msg.jobs:
            entry = entries.get(out.job_id)
            if entry is None:
                continue  # ended here already (cancelled before it was sent, or lost)
            self._finish(entry, JobFinished(
                out.job_id, out.status, out.attempts, result=out.value, error=out.error,
                node=out.node, started_s=out.started_s, ended_s=out.ended_s))

    # -- endings ----------------------------------------------------------------------

    def _finish(self, entry: JobEntry, done: JobFinished) -> None:
        job_id = entry.job_id
        if self._entries.pop(job_id, None) is None:
            return
        self._pending.pop(job_id, None)
        self._cancelling.discard(job_id)
        try:
            entry.finished(done)
        except Exception:  # a bug in a callback must not stop the reader
            log.exception("finishing job %s failed", job_id)
        finally:
            self._idle.set()

    def _fail(self, entry: JobEntry, error: ErrorInfo, attempts: int = 0) -> None:
        self._finish(entry, JobFinished(entry.job_id, JobStatus.FAILED, attempts,
                                        error=error))

    def _fail_id(self, job_id: str, error: ErrorInfo) -> None:
        entry = self._entries.get(job_id)
        if entry is not None:
            self._fail(entry, error)

    def _lost_error(self) -> ErrorInfo:
        return ErrorInfo("ConnectionLost", f"the connection to the coordinator at "
                         f"{self.address} was lost ({self.lost})", retryable=False)

    def _fail_pending(self) -> None:
        batch, self._pending = self._pending, {}
        error = self._lost_error()
        for entry in batch.values():
            self._fail(entry, error)

    def _lose(self, reason: str) -> None:
        """The link is gone: every unfinished job fails, saying so."""
        if self.lost is not None:
            return
        self.lost = reason
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(RunnerClosed(
                    f"the connection to the coordinator at {self.address} was lost "
                    f"({reason})"))
        if self._closing and not self._entries:
            return
        error = self._lost_error()
        self._pending.clear()
        self._cancels.clear()
        for entry in list(self._entries.values()):
            self._fail(entry, error)
        self._wake_sender.set()


class ClusterFlowRun(FlowRun):
    """A flow run on a cluster: it also tells the coordinator how it goes, for
    ``asyncjobs status`` (at its start, every ``FLOW_STATUS_EVERY_S``, at its end)."""

    def __init__(self, backend: ClusterBackend, plan: FlowPlan, *, file: str,
                 **kwargs: Any) -> None:
        super().__init__(backend, plan, **kwargs)
        self.cluster = backend
        self.file = file
        self.flow_id = self.scope

    def _feed(self, running: Any) -> None:
        if self.cluster.lost is not None:
            # nothing more can run: the job ends failed with the items it sent
            running.exhausted = running.failed = True
            self._maybe_finished(running)
            return
        super()._feed(running)

    def _flow_status(self, state: str) -> FlowStatus:
        total = self.total if self.total is not None else self.done
        return FlowStatus(self.flow_id, self.file, state, self.done, max(total, self.done))

    def _tell(self, state: str) -> None:
        if self.cluster.is_open:
            self.cluster.send(self._flow_status(state))

    async def run(self) -> FlowReport:
        self._tell("running")
        reporter = asyncio.get_running_loop().create_task(self._report_loop())
        state = "failed"
        try:
            report = await super().run()
            state = "succeeded" if report.ok else "failed"
            return report
        except asyncio.CancelledError:
            state = "cancelled"
            raise
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            self._tell(state)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(FLOW_STATUS_EVERY_S)
            self._tell("running")
