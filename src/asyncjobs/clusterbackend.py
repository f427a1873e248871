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
6. A client with a session (``connect()`` always has one) sends ``Attach(session)`` first
   on each link it opens, then a ``StatusRequest``: its reply means the coordinator took
   the session (messages are answered in order), ``Error("session-busy")`` that another
   live link holds it. A link made again after a break (rule 5 with ``reconnect``)
   finds the session kept: jobs re-sent that still run are adopted, those that succeeded
   are answered without running again. The old link is dropped without a ``Goodbye``
   (a goodbye ends the session); ``aclose`` says goodbye, ending it. A succeeded
   outcome for a job not submitted here (a session taken back by a new process: its
   job ended between the ``Attach`` and the job's submission) is kept, and submitting
   that job takes it instead of sending the job again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .backend import check_new_ids
from .core.chunking import io_chunk_size
from .core.commands import JobFinished
from .errors import AsyncJobsError, ConnectionFailed, RunnerClosed, SessionBusy
from .executors.remote import to_wire
from .flowrun import FlowRun
from .model import ErrorInfo, JobKind, JobStatus
from .protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    Attach,
    Cancel,
    ClusterInfo,
    DeclareLimits,
    Error,
    FlowStatus,
    FrameTooLarge,
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
from .targets import Target, TargetError
from .transport import Link

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping

    from .backend import JobEntry
    from .core.policy import LimitSpec
    from .flow.plan import FlowPlan
    from .protocol.messages import JobOutcome
    from .report import FlowReport

log = logging.getLogger(__name__)

#: seconds between our heartbeats
HEARTBEAT_S = 1.0
#: a coordinator silent this long (no message at all) is taken for gone
SILENCE_S = 10.0
#: jobs per ``Submit`` frame at most (a frame also stays within the peer's limit)
SUBMIT_BATCH = 4096
#: how long a client tries to link again with a coordinator that went away (one that
#: restarts comes back within it), and the delays between its tries
RECONNECT_S = 30.0
RECONNECT_FIRST_S = 0.1
RECONNECT_CAP_S = 2.0
#: once only cancelled jobs remain, how long closing waits for their outcomes
CANCEL_WAIT_S = 5.0
#: bytes a frame adds to its message (prefix, sequence number, MAC), and some to spare
FRAME_OVERHEAD = 64
#: how long closing waits for the outbox to be written
FLUSH_WAIT_S = 5.0
#: seconds between a flow's progress reports to the coordinator
FLOW_STATUS_EVERY_S = 1.0
#: how long entering waits for the coordinator's first ``ClusterInfo`` (its first
#: message, sent with the handshake's end), so a first ``map`` sizes its chunks by it
CLUSTER_INFO_WAIT_S = 2.0
#: how long a coordinator keeps a named session while its client is away (at most)
SESSION_KEEP_S = 3600.0
#: a random session (``connect()`` without one) cannot be named again by another
#: process: kept only while this one may link again, and a margin
RANDOM_SESSION_MARGIN_S = 30.0
#: how long attaching a session waits for the coordinator to take it
ATTACH_WAIT_S = 10.0


class ByName:
    """A ``"module:attribute"`` this process cannot import: it travels as the name alone
    (kind, timeout and retries nil), and the node that imports it applies its
    ``@asyncjobs.job`` defaults. Calling it here is an error."""

    __slots__ = ("ref",)

    def __init__(self, ref: str) -> None:
        self.ref = ref

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TargetError(f"{self.ref!r} cannot be imported here; only a node runs it")

    def __repr__(self) -> str:
        return f"<{self.ref} (imported on the nodes)>"


def by_name(ref: str) -> Target | None:
    """A target for ``ref`` when its module is not found here (only then: a module
    found here answers for itself, with its error)."""
    module, sep, attr = ref.partition(":")
    if not (sep and all(p.isidentifier() for p in (*module.split("."), *attr.split(".")))):
        return None
    try:
        if importlib.util.find_spec(module) is not None:
            return None
    except (ImportError, ValueError):
        pass
    return Target(fn=ByName(ref), name=attr.rpartition(".")[2], kind=JobKind.IO)


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
    :param session: the session this client names first on each link it opens (None:
        anonymous, its jobs cancelled when its link ends)
    :param keep_s: how long the coordinator is to keep the session while this client is
        away (its jobs running): past that, they are cancelled
    :param reconnect: opens a new link to the same coordinator after a break (None: a
        lost link is lost for good)
    :param reconnect_s: how long to try linking again
    """

    def __init__(self, link: ClientLink, *, session: str | None = None,
                 keep_s: float = SESSION_KEEP_S,
                 reconnect: Callable[[], Awaitable[ClientLink]] | None = None,
                 reconnect_s: float = RECONNECT_S) -> None:
        self.link = link
        self.address = link.address
        self.session = session
        self.keep_s = keep_s
        #: the link our ``Attach`` went out on (it goes first on each)
        self._attached: ClientLink | None = None
        #: opens a new link to the same coordinator (None: a lost link is lost for good)
        self._reconnect = reconnect
        self._reconnect_s = reconnect_s
        #: the task that links again after the link broke, while it runs
        self._recovering: asyncio.Task[None] | None = None
        #: what was sent of each unfinished job, and each live scope's limits: sent
        #: again to a coordinator that came back
        self._sent: dict[str, JobSpec] = {}
        self._scope_limits: dict[str, dict[str, LimitSpec]] = {}
        #: links made after the first (tests and logs)
        self.reconnects = 0
        #: unfinished jobs, sent or not
        self._entries: dict[str, JobEntry] = {}
        #: succeeded outcomes of our session's jobs not submitted here (yet)
        self._unclaimed: dict[str, JobOutcome] = {}
        #: jobs submitted this loop iteration, not yet in the outbox
        self._pending: dict[str, JobEntry] = {}
        #: jobs whose cancel went (or goes) to the coordinator
        self._cancelling: set[str] = set()
        self._cancels: list[str] = []
        self._cancel_reason = "cancelled"
        self._scopes: set[str] = set()
        self._capacity: dict[JobKind, int] = {}
        self._nodes = 0
        self._loops = 0
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
        #: (jobs not finished yet, what to call once they have)
        self._waiters: list[tuple[set[str], Callable[[], None]]] = []
        self._stop_sending = False

    async def attach(self, timeout_s: float = ATTACH_WAIT_S) -> None:
        """Name our session on the link and wait until the coordinator has taken it
        (before ``start``; nothing to do without a session). Messages that arrive
        meanwhile (``ClusterInfo``) count as read.

        :raises SessionBusy: a live link of another client holds the session
        :raises ConnectionFailed: the link ended, or no answer within ``timeout_s``
        """
        if self.session is not None and self._attached is not self.link:
            await self._attach_on(self.link, timeout_s)

    async def _attach_on(self, link: ClientLink, timeout_s: float = ATTACH_WAIT_S) -> None:
        assert self.session is not None
        request_id = next(self._requests)
        why = "it closed the link before taking our session"
        try:
            await link.send_many((Attach(self.session, self.keep_s),
                                  StatusRequest(request_id)))
            self._attached = link
            with anyio.fail_after(timeout_s):
                async for msg in link:
                    self._heard = time.monotonic()
                    if isinstance(msg, StatusReply) and msg.request_id == request_id:
                        return
                    if isinstance(msg, Error) and msg.code == "session-busy":
                        raise SessionBusy(self.address, self.session)
                    why = self._on_message(msg) or why
        except SessionBusy:
            raise
        except TimeoutError:
            why = f"it did not take our session within {timeout_s:g} s"
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError,
                LocalProtocolError) as exc:
            why = str(exc) or type(exc).__name__
        raise ConnectionFailed(self.address, why)

    def start(self) -> None:
        """Start reading, writing and heartbeats (tasks owned by this backend). With a
        session not attached on this link (no ``attach``), ``Attach`` goes first."""
        if self.session is not None and self._attached is not self.link:
            self._outbox.insert(0, Attach(self.session, self.keep_s))
            self._attached = self.link
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
        check_new_ids(known, entries)
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

    def io_chunk(self, most: int | None, total: int | None) -> int:
        # each job crosses client, coordinator and loop, a message each way per hop
        return io_chunk_size(most, self._loops, self._capacity.get(JobKind.IO), total)

    def declare_limits(self, scope: str, limits: Mapping[str, LimitSpec]) -> None:
        """:raises ValueError: if the scope is declared already"""
        if scope in self._scopes:
            raise ValueError(f"limits of scope {scope!r} are declared already")
        self._scopes.add(scope)
        self._scope_limits[scope] = dict(limits)
        self._flush_submits()  # keep the order: jobs submitted before, then this
        self._put(DeclareLimits(scope, dict(limits)))

    def release_limits(self, scope: str) -> None:
        if scope in self._scopes:
            self._scopes.discard(scope)
            self._scope_limits.pop(scope, None)
            self._flush_submits()
            self._put(ReleaseLimits(scope))

    # -- the client's own -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet finished."""
        return len(self._entries)

    def when_finished(self, job_ids: set[str], callback: Callable[[], None]) -> None:
        """Call ``callback`` once every job of ``job_ids`` has finished (now, if none is
        unfinished)."""
        ids = {job_id for job_id in job_ids if job_id in self._entries}
        if ids:
            self._waiters.append((ids, callback))
        else:
            callback()

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
        goodbye (which ends our session on the coordinator) and close the link. Every
        job has finished when this returns."""
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
        if self._recovering is not None:
            self._recovering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovering
            self._recovering = None
        self._flush_submits()
        if self.lost is None:
            self._put(Goodbye("client closing"))  # the link's own would not go mid-write
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
        if self._closing:
            raise RunnerClosed("this cluster connection is closed; open one with "
                               "'async with asyncjobs.connect(address)'")
        if self.lost is not None:
            raise RunnerClosed(f"the connection to the coordinator at {self.address} was "
                               f"lost ({self.lost}); nothing more can be submitted")

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
        if self._unclaimed:
            self._claim()
        if self._pending:
            batch, self._pending = self._pending, {}
            specs: list[JobSpec] = []
            sent = self._sent
            for entry in batch.values():
                spec = self._spec(entry)
                if spec is not None:
                    specs.append(spec)
                    sent[spec.job_id] = spec
            for i in range(0, len(specs), SUBMIT_BATCH):
                self._put(Submit(tuple(specs[i:i + SUBMIT_BATCH])))
        if self._cancels:
            ids, self._cancels = tuple(self._cancels), []
            self._put(Cancel(job_ids=ids, reason=self._cancel_reason))

    def _spec(self, entry: JobEntry) -> JobSpec | None:
        """The job as it travels; None (and the job failed) if its call cannot."""
        try:
            call = entry.begin(1)
            if isinstance(call.fn, ByName):
                return JobSpec(entry.job_id, call.fn.ref, tuple(call.args),
                               call.kwargs or None, limits=tuple(entry.limits),
                               weight=entry.weight)
            ref, args, kwargs = to_wire(call)
        except Exception as exc:
            self._fail(entry, ErrorInfo.from_exception(exc, retryable=False))
            return None
        return JobSpec(entry.job_id, ref, tuple(args), kwargs or None, kind=entry.kind,
                       timeout_s=call.timeout_s, retries=entry.retries,
                       backoff_s=entry.backoff_s, limits=tuple(entry.limits),
                       weight=entry.weight)

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
                self._link_down(str(exc) or type(exc).__name__)
                return

    async def _send_batch(self, batch: list[Message]) -> None:
        # One message per send, so that a refusal (LocalProtocolError) names the message
        # at fault and nothing before it is sent twice; an outbox holds few messages (a
        # Submit per loop iteration carries the jobs), so this costs few writes.
        todo = deque(batch)
        while todo:
            msg = todo.popleft()
            try:
                await self.link.send_many((msg,))
            except LocalProtocolError as exc:
                todo.extendleft(reversed(self._mend(msg, exc)))

    def _mend(self, msg: Message, exc: LocalProtocolError) -> list[Message]:
        """What to send instead of a message the link refused (nothing was sent): a
        ``Submit`` split in halves to fit the peer's frame limit, or without the jobs
        that cannot travel (they fail, alone); any other message is dropped."""
        if not isinstance(msg, Submit):
            log.error("dropped a message the coordinator would refuse: %s", exc)
            return []
        if isinstance(exc, FrameTooLarge) and len(msg.jobs) > 1:
            half = len(msg.jobs) // 2
            return [Submit(msg.jobs[:half]), Submit(msg.jobs[half:])]
        link = self.link
        limit = (link.peer.max_frame_bytes if isinstance(link, Link)
                 else DEFAULT_MAX_FRAME_BYTES)
        keep: list[JobSpec] = []
        for spec in msg.jobs:
            try:
                alone = len(encode(Submit((spec,))))
            except LocalProtocolError as bad:
                self._fail_id(spec.job_id, ErrorInfo.from_exception(bad, retryable=False))
                continue
            if alone + FRAME_OVERHEAD > limit:
                self._fail_id(spec.job_id, ErrorInfo(
                    "FrameTooLarge", f"job {spec.job_id}: it takes {alone} bytes on the "
                    f"wire, more than the coordinator accepts ({limit}); pass a path or a "
                    f"URL instead of the data", retryable=False))
                continue
            keep.append(spec)
        if len(keep) == len(msg.jobs):  # no job is at fault: do not try again forever
            error = ErrorInfo.from_exception(exc, retryable=False)
            for spec in keep:
                self._fail_id(spec.job_id, error)
            return []
        return [Submit(tuple(keep))] if keep else []

    async def _heartbeat_loop(self) -> None:
        for seq in itertools.count():
            self._put(Heartbeat(seq))
            await asyncio.sleep(HEARTBEAT_S)
            if time.monotonic() - self._heard > SILENCE_S:
                self._link_down(f"no word from it for {SILENCE_S:g} s")
                return

    # -- reading ----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "it closed the connection"
        try:
            async for msg in self.link:
                self._heard = time.monotonic()
                if type(msg) is Outcome:  # the hot path: no isinstance chain
                    self._outcomes(msg)
                else:
                    reason = self._on_message(msg) or reason
        except anyio.ClosedResourceError:
            reason = "the client closed"
        except anyio.BrokenResourceError as exc:
            reason = str(exc) or type(exc).__name__
        self._link_down(reason)

    def _on_message(self, msg: Message) -> str | None:
        """Take one message; for an ``Error`` or a ``Goodbye``, why the link will end."""
        kind = type(msg)
        if kind is Outcome:
            self._outcomes(msg)  # type: ignore[arg-type]
        elif kind is ClusterInfo:
            assert isinstance(msg, ClusterInfo)
            self._capacity = dict(msg.capacity)
            self._nodes = msg.nodes
            self._loops = msg.loops
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
            return f"it said: {msg.message}"
        elif kind is Goodbye:
            assert isinstance(msg, Goodbye)
            return f"it said goodbye ({msg.reason or 'no reason given'})"
        return None

    def _outcomes(self, msg: Outcome) -> None:
        entries = self._entries
        for out in msg.jobs:
            entry = entries.get(out.job_id)
            if entry is None:
                # ended here already (cancelled before it was sent, or lost); or, in a
                # session taken back, a job of the session not submitted here yet: kept,
                # so submitting it takes this outcome instead of running it again
                if self.session is not None and out.status is JobStatus.SUCCEEDED:
                    self._unclaimed[out.job_id] = out
                continue
            self._finish(entry, _finished(out))

    # -- endings ----------------------------------------------------------------------

    def _claim(self) -> None:
        """Finish the jobs just submitted whose outcome came before they were."""
        for job_id in [j for j in self._pending if j in self._unclaimed]:
            entry = self._pending.pop(job_id)
            self._finish(entry, _finished(self._unclaimed.pop(job_id)))

    def _finish(self, entry: JobEntry, done: JobFinished) -> None:
        job_id = entry.job_id
        if self._entries.pop(job_id, None) is None:
            return
        self._pending.pop(job_id, None)
        self._sent.pop(job_id, None)
        self._cancelling.discard(job_id)
        try:
            entry.finished(done)
        except Exception:  # a bug in a callback must not stop the reader
            log.exception("finishing job %s failed", job_id)
        self._idle.set()
        if self._waiters:
            self._wake_waiters(job_id)

    def _wake_waiters(self, job_id: str) -> None:
        for waiter in list(self._waiters):
            ids, callback = waiter
            ids.discard(job_id)
            if not ids:
                self._waiters.remove(waiter)
                try:
                    callback()
                except Exception:
                    log.exception("a callback after jobs finished failed")

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

    def _link_down(self, reason: str) -> None:
        """The link broke (or the coordinator went silent): link again if we may, else
        the link is lost for good (``_lose``)."""
        if self._closing or self._reconnect is None or self.lost is not None:
            self._lose(reason)
        elif self._recovering is None:
            log.warning("the link with the coordinator at %s broke (%s); linking again",
                        self.address, reason)
            self._recovering = asyncio.get_running_loop().create_task(self._recover(reason))

    async def _recover(self, reason: str) -> None:
        """Link again within ``reconnect_s`` (the coordinator restarting, a network
        blip), attach our session first, then send again what it may not have: each live
        scope's limits and every unfinished job (at-least-once: a job may run twice; its
        result counts once). Jobs being cancelled end here, cancelled; with a session
        they are sent again with their cancel, to end as the coordinator says. A
        ``session-busy`` answer is tried again (our old link may not look dead to the
        coordinator yet). Past the deadline, the link is lost."""
        me = asyncio.current_task()
        for task in (*self._tasks, self._sender):
            if task is not None and task is not me:
                task.cancel()
        await drop_link(self.link)
        deadline = time.monotonic() + self._reconnect_s
        delay = RECONNECT_FIRST_S
        link: ClientLink | None = None
        last = reason
        while link is None and not self._closing:
            try:
                assert self._reconnect is not None
                link = await self._reconnect()
                if self.session is not None:
                    try:
                        await self._attach_on(link, max(1.0, deadline - time.monotonic()))
                    except BaseException:
                        await drop_link(link)
                        raise
            except (OSError, AsyncJobsError) as exc:  # ConnectionFailed and its kin
                link = None
                last = str(exc)
                if time.monotonic() + delay > deadline:
                    break
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, RECONNECT_CAP_S)
        self._recovering = None
        if link is None:
            self._lose(f"{reason}; no coordinator at {self.address} for "
                       f"{self._reconnect_s:g} s ({last})")
            return
        self.link = link
        self.reconnects += 1
        self._heard = time.monotonic()
        cancelling: tuple[str, ...] = ()
        if self.session is None:
            for job_id in list(self._cancelling):
                entry = self._entries.get(job_id)
                if entry is not None:
                    self._finish(entry, JobFinished(job_id, JobStatus.CANCELLED, 0,
                                                    error=ErrorInfo("Cancelled", reason)))
        else:
            cancelling = tuple(j for j in self._cancelling if j in self._sent)
        self._cancels.clear()
        again: list[Message] = [DeclareLimits(scope, dict(limits))
                                for scope, limits in self._scope_limits.items()]
        specs = list(self._sent.values())
        again += [Submit(tuple(specs[i:i + SUBMIT_BATCH]))
                  for i in range(0, len(specs), SUBMIT_BATCH)]
        if cancelling:
            again.append(Cancel(job_ids=cancelling, reason=self._cancel_reason))
        # what was queued meanwhile that is still news: flow reports, status requests
        again += [m for m in self._outbox
                  if not isinstance(m, Submit | DeclareLimits | ReleaseLimits | Cancel
                                    | Heartbeat)]
        self._outbox = again
        log.warning("linked again with the coordinator at %s; %d unfinished jobs sent "
                    "again", self.address, len(specs))
        self.start()
        self._wake_sender.set()

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


async def drop_link(link: ClientLink) -> None:
    """Close a link without a ``Goodbye``: to the coordinator it broke, so it keeps our
    session for the link we make next (a goodbye would end the session)."""
    with contextlib.suppress(Exception):
        if isinstance(link, Link):
            await link.abort("dropped by the client to link again")
        else:
            await link.aclose("linking again")


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
            # cancelled jobs end when the coordinator says so: count them first
            self.cluster.when_finished(set(self._live), lambda: self._tell(state))

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(FLOW_STATUS_EVERY_S)
            self._tell("running")


def _finished(out: JobOutcome) -> JobFinished:
    return JobFinished(out.job_id, out.status, out.attempts, result=out.value,
                       error=out.error, node=out.node, started_s=out.started_s,
                       ended_s=out.ended_s)
