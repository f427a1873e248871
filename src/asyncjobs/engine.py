"""The engine: one per event loop. Feeds events to the pure scheduler and carries out the
commands it returns, through the executors. All IO for jobs happens here or below."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .core.commands import CancelAttempt, JobFinished, StartAttempt
from .core.events import (
    AttemptCancelled,
    AttemptFailed,
    AttemptSucceeded,
    CancelRequested,
    Event,
    JobSubmitted,
    Tick,
)
from .core.policy import Limit
from .core.scheduler import SchedulerState
from .errors import RunnerClosed
from .executors.base import Call, error_info
from .executors.cpu import CpuPool
from .executors.io import IoExecutor
from .executors.thread import ThreadExecutor
from .model import JobKind

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Mapping

    from .executors.base import AttemptKey, Executor
    from .model import ErrorInfo, JobStatus

#: the limit each kind's attempts hold; '@' keeps them apart from user-named limits
KIND_LIMIT = {JobKind.IO: "@io", JobKind.CPU: "@cpu", JobKind.THREAD: "@thread"}


class Entry:
    """What the engine keeps for a job until it finishes.

    The engine calls ``begin`` as each attempt starts and ``finished`` once at the end.
    This class forwards them to the callbacks it was given; a subclass may override both
    instead, so that one object per job is all a caller allocates (flows do, per item).
    """

    __slots__ = ("job_id", "kind", "call", "prepare", "on_done", "on_start", "limits",
                 "retries", "backoff_s", "needs", "remember")

    def __init__(
        self,
        job_id: str,
        kind: JobKind,
        on_done: Callable[[JobFinished], None],
        *,
        call: Call | None = None,
        prepare: Callable[[int], Call] | None = None,
        retries: int = 0,
        backoff_s: float = 1.0,
        limits: tuple[str, ...] = (),
        needs: tuple[str, ...] = (),
        remember: bool = False,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        if (call is None) == (prepare is None):
            raise ValueError("give exactly one of call= and prepare=")
        self.job_id = job_id
        self.kind = kind
        self.call = call
        #: builds the call when an attempt starts (flows render templates then)
        self.prepare = prepare
        self.on_done = on_done
        #: called with the attempt number as each attempt starts
        self.on_start = on_start
        self.limits = (KIND_LIMIT[kind], *limits)
        self.retries = retries
        self.backoff_s = backoff_s
        self.needs = needs
        self.remember = remember

    def begin(self, attempt: int) -> Call:
        """An attempt starts: return the call it runs (raising fails the attempt, for
        good: a call that cannot be built will not build on a retry)."""
        if self.on_start is not None:
            self.on_start(attempt)
        if self.call is not None:
            return self.call
        assert self.prepare is not None
        return self.prepare(attempt)

    def finished(self, done: JobFinished) -> None:
        """The job ended (any terminal status)."""
        self.on_done(done)


class Engine:
    """Runs jobs on the current event loop, its CPU pool and its thread pool.

    :param cpu_workers: worker processes for ``cpu`` jobs (started on first use)
    :param io_concurrency: most ``io`` attempts at once (None: no bound)
    :param thread_workers: threads for ``thread`` jobs
    :param limits: named limits jobs may hold besides their kind's
    """

    def __init__(
        self,
        *,
        cpu_workers: int,
        io_concurrency: int | None,
        thread_workers: int,
        limits: Mapping[str, Limit] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cpu = CpuPool(self, cpu_workers)
        self.io = IoExecutor(self)
        self.thread = ThreadExecutor(self, thread_workers)
        all_limits = {
            "@io": Limit(concurrency=io_concurrency),
            "@cpu": Limit(concurrency=self.cpu.capacity),
            "@thread": Limit(concurrency=thread_workers),
        }
        all_limits.update(limits or {})
        self.core = SchedulerState(all_limits, rng=rng)
        self._executors: dict[JobKind, Executor] = {
            JobKind.IO: self.io, JobKind.CPU: self.cpu, JobKind.THREAD: self.thread
        }
        self._entries: dict[str, Entry] = {}
        self._inbox: list[Event] = []
        self._busy = False
        self._drain_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._closed = False

    # -- public -----------------------------------------------------------------------

    def submit(self, *entries: Entry) -> None:
        """Hand jobs to the scheduler; each entry's ``on_done`` is called once at its end.

        :raises RunnerClosed: once the engine is closing
        :raises ValueError: for a duplicate id, an unknown need or an unknown limit
        """
        if self._closed:
            raise RunnerClosed("the runner is closed; open it with 'async with Runner()'")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._inbox and not self._busy:
            self._feed(())  # reports first: a bad submission must not take them down with it
        now = loop.time()
        events = []
        for entry in entries:
            self._entries[entry.job_id] = entry
            events.append(JobSubmitted(
                entry.job_id, entry.limits, entry.retries, entry.backoff_s, entry.needs,
                entry.remember, now,
            ))
        try:
            self._feed(events)
        except ValueError:
            for entry in entries:
                if self.core.status(entry.job_id) is None:
                    self._entries.pop(entry.job_id, None)
            raise

    def add_limit(self, name: str, limit: Limit) -> None:
        """Declare a named limit jobs may then hold.

        :raises ValueError: if the name is taken
        """
        if name in self.core.limits:
            raise ValueError(f"limit {name!r} is already defined")
        self.core.limits[name] = limit

    def remove_limit(self, name: str) -> None:
        """Forget a named limit once no job holds or names it."""
        self.core.limits.pop(name, None)

    def cancel(self, job_id: str, reason: str = "cancelled") -> None:
        """Cancel a job: it ends ``cancelled``; a running attempt is stopped for real."""
        if job_id in self._entries:
            self._feed([CancelRequested(job_id, reason, self._now(), f"cancel-{job_id}")])

    def status(self, job_id: str) -> JobStatus | None:
        return self.core.status(job_id)

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet finished."""
        return len(self._entries)

    async def wait_idle(self) -> None:
        """Return once every submitted job has finished."""
        while self._entries:
            self._idle = asyncio.Event()
            await self._idle.wait()

    async def aclose(self, *, cancel: bool) -> None:
        """Stop the engine. With ``cancel`` unfinished jobs are cancelled; otherwise they
        are awaited first. Either way every worker process is gone when this returns."""
        try:
            if not cancel:
                await self.wait_idle()
        finally:
            self._closed = True
            try:
                for job_id in list(self._entries):
                    self.cancel(job_id, "cancelled: its runner closed")
                await self.io.aclose()
                await self.thread.aclose()
                await self.cpu.aclose()
            finally:
                self.cpu.kill_all()
                if self._timer is not None:
                    self._timer.cancel()

    # -- sink: executors report here --------------------------------------------------

    def succeeded(self, key: AttemptKey, result: Any) -> None:
        self._report(AttemptSucceeded(key[0], key[1], result, self._now()))

    def failed(self, key: AttemptKey, error: ErrorInfo) -> None:
        stimulus = f"failed-{key[0]}-{key[1]}"
        self._report(AttemptFailed(key[0], key[1], error, self._now(), stimulus))

    def cancelled(self, key: AttemptKey) -> None:
        stimulus = f"cancelled-{key[0]}-{key[1]}"
        self._report(AttemptCancelled(key[0], key[1], self._now(), stimulus))

    def _report(self, event: Event) -> None:
        # Attempts that end in the same loop iteration cost one pass of the scheduler
        # (one dispatch, one timer check), not one each: the pass runs once at the
        # start of the next iteration.
        self._inbox.append(event)
        if not self._busy and not self._drain_due:
            self._drain_due = True
            assert self._loop is not None
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_due = False
        if self._inbox:
            self._feed(())

    # -- driving the core -------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _feed(self, events: Iterable[Event]) -> None:
        self._inbox.extend(events)
        if self._busy:
            return  # re-entered from a command: the outer loop picks these up
        self._busy = True
        try:
            while self._inbox:
                batch, self._inbox = self._inbox, []
                self._execute(self.core.handle(*batch))
        finally:
            self._busy = False
        self._arm_timer()

    def _execute(self, commands: list[Any]) -> None:
        entries = self._entries
        for cmd in commands:
            kind = type(cmd)
            if kind is StartAttempt:
                entry = entries[cmd.job_id]
                key = (cmd.job_id, cmd.attempt)
                try:
                    call = entry.begin(cmd.attempt)
                except Exception as exc:
                    self.failed(key, error_info(exc, retryable=False))
                    continue
                self._executors[entry.kind].start(key, call)
            elif kind is JobFinished:
                entry = entries.pop(cmd.job_id)
                entry.finished(cmd)
                if not entries and self._idle is not None:
                    self._idle.set()
            elif kind is CancelAttempt:
                entry = entries[cmd.job_id]
                self._executors[entry.kind].cancel((cmd.job_id, cmd.attempt))

    def _arm_timer(self) -> None:
        wake = self.core.next_wake()
        if wake == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = wake
        if wake is not None and self._loop is not None:
            self._timer = self._loop.call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._feed([Tick(self._now(), "tick")])
