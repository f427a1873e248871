"""The engine: one per event loop, and the ``Backend`` of an embedded ``Runner``. Feeds
events to the pure scheduler and carries out the commands it returns, through the
executors it is given. All IO for jobs happens here or below.

Submissions, cancellations and executor reports all go through one inbox, in order, and
the inbox is handed to the scheduler once per loop iteration: 10,000 ``submit`` calls
made in one iteration cost one ``handle`` call, not 10,000 scheduler passes.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
from typing import TYPE_CHECKING, Any

from .backend import check_new_ids
from .core.commands import CancelAttempt, JobFinished, StartAttempt
from .core.events import (
    AttemptCancelled,
    AttemptFailed,
    AttemptSucceeded,
    CancelRequested,
    Event,
    JobSubmitted,
    LimitsDeclared,
    LimitsReleased,
    Tick,
)
from .core.policy import Limit
from .core.scheduler import SchedulerState
from .errors import RunnerClosed
from .model import ErrorInfo, JobKind, JobStatus

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Mapping

    from .backend import JobEntry
    from .core.policy import LimitSpec
    from .executors.base import AttemptKey, Executor, Sink

#: events in one scheduler pass from which the cyclic GC waits for the pass to end
GC_PAUSE_BATCH = 256
#: jobs each cpu worker holds: enough that it stays busy while a batch of answers
#: travels back and the refill comes
CPU_PREFETCH = 4
#: the limit each kind's attempts hold; '@' keeps them apart from user-named limits
KIND_LIMIT = {JobKind.IO: "@io", JobKind.CPU: "@cpu", JobKind.THREAD: "@thread"}


class Engine:
    """Runs jobs on the current event loop through the executors it is given.

    :param executors: builds one executor per kind, each reporting to the sink it is
        handed (the engine)
    :param concurrency: most attempts of each kind handed to its executor at once
        (None: no bound)
    :param capacity: most attempts of each kind that run at once, as ``capacity()``
        says (default: ``concurrency``); less when an executor queues some itself (the
        cpu pool holds a few per worker, so no worker waits for its next job)
    :param rng: random source for retry jitter
    """

    def __init__(
        self,
        executors: Callable[[Sink], Mapping[JobKind, Executor]],
        concurrency: Mapping[JobKind, int | None],
        *,
        capacity: Mapping[JobKind, int | None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.executors: dict[JobKind, Executor] = dict(executors(self))
        self._capacity = dict(concurrency if capacity is None else capacity)
        self.core = SchedulerState(
            {KIND_LIMIT[k]: Limit(concurrency=n) for k, n in concurrency.items()}, rng=rng
        )
        self._entries: dict[str, JobEntry] = {}
        #: each kind's limit alone: the limits of most jobs, made once
        self._kind_only = {kind: (name,) for kind, name in KIND_LIMIT.items()}
        self._inbox: list[Event] = []
        self._busy = False
        self._drain_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._closed = False
        self._submits = itertools.count(1)
        self._passes = itertools.count(1)
        #: the stimulus of what executors report until the next pass
        self._reports_id = "reports-0"

    # -- Backend ----------------------------------------------------------------------

    def submit(self, *entries: JobEntry) -> None:
        """Hand jobs to the scheduler at the end of this loop iteration; each entry's
        ``finished`` is called once at its end.

        :raises RunnerClosed: once the engine is closing
        :raises ValueError: for an id already in use (nothing of the call is taken)
        """
        if self._closed:
            raise RunnerClosed("the runner is closed; open it with 'async with Runner()'")
        known = self._entries
        check_new_ids(known, entries)
        now = self._now()
        stimulus = f"submit-{next(self._submits)}"  # one per call: a map refill is one
        inbox = self._inbox
        kind_only = self._kind_only
        for entry in entries:
            known[entry.job_id] = entry
            limits = ((KIND_LIMIT[entry.kind], *entry.limits) if entry.limits
                      else kind_only[entry.kind])
            inbox.append(JobSubmitted(entry.job_id, limits, entry.retries, entry.backoff_s,
                                      now, stimulus, entry.weight))
        self._drain_soon()

    def cancel(self, job_id: str, reason: str = "cancelled") -> None:
        """Cancel a job: it ends ``cancelled``; a running attempt is stopped for real."""
        if job_id in self._entries:
            self._feed([CancelRequested(job_id, reason, self._now(), f"cancel-{job_id}")])

    def status(self, job_id: str) -> JobStatus | None:
        return self.core.status(job_id)

    def capacity(self, kind: JobKind) -> int | None:
        return self._capacity[kind]

    def io_chunk(self, most: int | None, total: int | None) -> int:
        return 1  # an io job runs in place here: a chunk would only hold its limit longer

    def declare_limits(self, scope: str, limits: Mapping[str, LimitSpec]) -> None:
        """Declare a scope's limits (at once, so a bad one raises here).

        :raises ValueError: if the scope is declared already or a limit is invalid
        """
        self._feed([LimitsDeclared(scope, dict(limits), self._now(), f"declare-{scope}")])

    def release_limits(self, scope: str) -> None:
        self._feed([LimitsReleased(scope, self._now(), f"release-{scope}")])

    # -- the runner's own -------------------------------------------------------------

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
        are awaited first. Either way every executor is closed when this returns."""
        try:
            if not cancel:
                await self.wait_idle()
        finally:
            self._closed = True
            try:
                for job_id in list(self._entries):
                    self.cancel(job_id, "cancelled: its runner closed")
                for executor in self.executors.values():
                    await executor.aclose()
            finally:
                for executor in self.executors.values():
                    executor.kill_all()
                if self._timer is not None:
                    self._timer.cancel()

    # -- sink: executors report here --------------------------------------------------

    def succeeded(self, key: AttemptKey, result: Any) -> None:
        # successes are the bulk: they share their loop iteration's stimulus id
        self._report(AttemptSucceeded(key[0], key[1], result, self._now(), self._reports_id))

    def failed(self, key: AttemptKey, error: ErrorInfo) -> None:
        stimulus = f"failed-{key[0]}-{key[1]}"
        self._report(AttemptFailed(key[0], key[1], error, self._now(), stimulus))

    def cancelled(self, key: AttemptKey) -> None:
        stimulus = f"cancelled-{key[0]}-{key[1]}"
        self._report(AttemptCancelled(key[0], key[1], self._now(), stimulus))

    def _report(self, event: Event) -> None:
        self._inbox.append(event)
        self._drain_soon()

    def _drain_soon(self) -> None:
        # What arrives in one loop iteration costs one pass of the scheduler (one
        # dispatch, one timer check), not one each: the pass runs once at the start of
        # the next iteration.
        if not self._busy and not self._drain_due:
            self._drain_due = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_due = False
        self._reports_id = f"reports-{next(self._passes)}"
        if self._inbox:
            self._feed([])

    # -- driving the core -------------------------------------------------------------

    def _now(self) -> float:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def _feed(self, events: list[Event]) -> None:
        self._inbox.extend(events)
        if self._busy:
            return  # re-entered from a command: the outer loop picks these up
        self._busy = True
        # A large batch (10,000 submissions gathered at once) allocates a few objects per
        # job, all alive until the job ends; with the collector on, that many young
        # survivors set off full collections that walk every live job again and again
        # (measured: 40 % of the time of 100,000 no-op jobs). Nothing in this pass makes
        # reference cycles worth collecting mid-pass, and the loop runs nothing else
        # meanwhile, so the collector waits for the pass to end. It is left alone when
        # the app turned it off.
        paused = len(self._inbox) >= GC_PAUSE_BATCH and gc.isenabled()
        if paused:
            gc.disable()
        try:
            while self._inbox:
                batch, self._inbox = self._inbox, []
                try:
                    commands = self.core.handle(*batch)
                except (ValueError, TypeError):
                    commands = self._one_by_one(batch)
                self._execute(commands)
        finally:
            self._busy = False
            if paused:
                gc.enable()
        self._arm_timer()

    def _one_by_one(self, batch: list[Event]) -> list[Any]:
        """A batch the scheduler refused (it applied none of it): apply its events one
        at a time, so one bad event fails alone. A refused submission ends its job
        failed, so nothing waits on it forever; a refused declaration raises to its
        caller once the rest is applied."""
        commands: list[Any] = []
        refused: Exception | None = None
        for event in batch:
            try:
                commands += self.core.handle(event)
            except (ValueError, TypeError) as exc:
                if type(event) is JobSubmitted:
                    error = ErrorInfo.from_exception(exc, retryable=False)
                    commands.append(JobFinished(event.job_id, JobStatus.FAILED, 0, None, error))
                elif refused is None:
                    refused = exc
        if refused is not None:
            self._execute(commands)
            raise refused
        return commands

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
                    self.failed(key, ErrorInfo.from_exception(exc, retryable=False))
                    continue
                self.executors[entry.kind].start(key, call)
            elif kind is JobFinished:
                entry = entries.pop(cmd.job_id)
                entry.finished(cmd)
                if not entries and self._idle is not None:
                    self._idle.set()
            elif kind is CancelAttempt:
                entry = entries[cmd.job_id]
                self.executors[entry.kind].cancel((cmd.job_id, cmd.attempt))

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


def local_engine(
    *, cpu_workers: int, io_concurrency: int | None, thread_workers: int,
    rng: random.Random | None = None,
) -> Engine:
    """The engine of an embedded ``Runner``: coroutines on this loop, a pool of worker
    processes for ``cpu`` jobs (started on first use), a pool of threads."""
    from .executors.cpu import CpuPool
    from .executors.io import IoExecutor
    from .executors.thread import ThreadExecutor

    def executors(sink: Sink) -> dict[JobKind, Executor]:
        return {JobKind.IO: IoExecutor(sink),
                JobKind.CPU: CpuPool(sink, cpu_workers, prefetch=CPU_PREFETCH),
                JobKind.THREAD: ThreadExecutor(sink, thread_workers)}

    capacity = {JobKind.IO: io_concurrency, JobKind.CPU: cpu_workers,
                JobKind.THREAD: thread_workers}
    held = {**capacity, JobKind.CPU: cpu_workers * CPU_PREFETCH}
    return Engine(executors, held, capacity=capacity, rng=rng)
