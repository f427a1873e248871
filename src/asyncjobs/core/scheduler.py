"""The scheduler: which job runs when, as a pure state machine.

How this works: the engine feeds events (``JobSubmitted``, ``AttemptSucceeded``, ``Tick``...)
to ``SchedulerState.handle`` and executes the commands it returns (``StartAttempt``,
``CancelAttempt``, ``JobFinished``). The same object can serve one embedded event loop or a
cluster coordinator, because it never touches IO, a clock or a task.

Rules the code keeps:

1. A job's status changes only through ``_set_status``, and only along ``TRANSITIONS``;
   any other change raises ``InvalidTransition``.
2. A running attempt holds ``weight`` units (one for a job, n for a chunk of n calls) of
   every limit it names, from ``StartAttempt`` until the engine reports that attempt's
   end (succeeded, failed or cancelled), even when the job itself was cancelled
   earlier. So limits count what really runs. A job heavier than a limit's
   concurrency, or its rate's burst, could never start: it is refused (rule 6).
3. Reports about an attempt that is no longer current are stale: they free the attempt's
   limits and change nothing else.
4. Jobs that need the same limits start in submission order (one FIFO queue per set of
   limit names), so a full limit never starves the jobs behind it in other queues.
5. Every terminal status is announced once, by one ``JobFinished``.
6. ``handle`` is atomic: the events are checked first (a job submitted twice, a limit
   nobody declared, a scope declared twice, something that is not an event), and a bad
   one raises before any of the batch is applied.
7. Named limits belong to a scope (a flow run) and go when it is released, once no
   running attempt holds them; the kinds' limits (``@io``...) are given at construction.
8. An attempt lost with its node (``AttemptLost``) runs again at once, first in its
   queue, with its attempt number counted but not against ``retries``: execution is
   at-least-once, and the cluster's killed-nodes rule, not ``retries``, bounds it.

Dependencies between jobs are not here: a flow's jobs wait for each other in
``flow.state.FlowState``, which hands this scheduler only jobs that may run.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from typing import TYPE_CHECKING, Any

from ..errors import InvalidTransition
from ..model import ErrorInfo, JobStatus
from .commands import CancelAttempt, Command, JobFinished, StartAttempt
from .events import (
    AttemptCancelled,
    AttemptFailed,
    AttemptLost,
    AttemptSucceeded,
    CancelRequested,
    Event,
    JobSubmitted,
    LimitsDeclared,
    LimitsReleased,
    Tick,
)
from .policy import Limit, backoff_delay, scoped

if TYPE_CHECKING:
    from collections.abc import Mapping

S = JobStatus

#: allowed (from, to) status changes; None is "not yet known to the scheduler"
TRANSITIONS: frozenset[tuple[JobStatus | None, JobStatus]] = frozenset(
    {
        (None, S.QUEUED),
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.CANCELLED),
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.RETRYING),
        (S.RUNNING, S.QUEUED),
        (S.RUNNING, S.CANCELLED),
        (S.RETRYING, S.QUEUED),
        (S.RETRYING, S.CANCELLED),
    }
)

STIMULUS_LOG_SIZE = 1000


_EVENT_TYPES = frozenset({JobSubmitted, AttemptSucceeded, AttemptFailed, AttemptLost,
                          AttemptCancelled, CancelRequested, LimitsDeclared, LimitsReleased,
                          Tick})


class _Job:
    __slots__ = ("id", "limits", "retries", "backoff_s", "status", "attempt", "retry_at",
                 "held", "lost", "weight")

    def __init__(self, ev: JobSubmitted) -> None:
        self.id = ev.job_id
        self.limits = ev.limits
        self.weight = ev.weight
        self.retries = ev.retries
        self.backoff_s = ev.backoff_s
        self.status: JobStatus | None = None
        self.attempt = 0
        self.retry_at = 0.0
        #: the limits the current attempt holds, from its start to its report (rule 2)
        self.held: tuple[str, ...] | None = None
        #: attempts lost with their node: they do not count against ``retries`` (rule 8)
        self.lost = 0


class SchedulerState:
    """Jobs, their statuses, and the limits they share.

    :param limits: named limits; every name a job lists must be here
    :param rng: random source for retry jitter (inject a seeded one in tests)
    """

    def __init__(
        self, limits: Mapping[str, Limit], *, rng: random.Random | None = None
    ) -> None:
        self.limits: dict[str, Limit] = dict(limits)
        self.rng = rng or random.Random()
        self._jobs: dict[str, _Job] = {}
        #: scope -> the scheduler's names of its limits
        self._scopes: dict[str, list[str]] = {}
        #: limits of released scopes still held by running attempts (rule 7)
        self._retired: set[str] = set()
        self._ready: dict[tuple[str, ...], deque[_Job]] = {}
        self._retry_heap: list[tuple[float, int, _Job]] = []
        self._retry_seq = 0
        #: attempts of jobs that ended (cancelled) while they ran -> the limits they
        #: still hold, and how many units (rule 2); a running job's own attempt keeps
        #: them in ``_Job.held``
        self._held: dict[tuple[str, int], tuple[tuple[str, ...], int]] = {}
        self._now = 0.0
        #: (now, event type, stimulus id) of the latest stimuli, for post-mortems
        self.log: deque[tuple[float, str, str]] = deque(maxlen=STIMULUS_LOG_SIZE)
        self.counts: dict[JobStatus, int] = dict.fromkeys(JobStatus, 0)

    # -- public -----------------------------------------------------------------------

    def handle(self, *events: Event) -> list[Command]:
        """Apply events in order; return the commands they lead to.

        :raises InvalidTransition: on a status change the table forbids (a bug)
        :raises ValueError: for a job submitted twice, a limit that is unknown, or a
            scope declared twice; nothing of the batch is applied then (rule 6)
        :raises TypeError: for something that is not an event, likewise
        """
        self._check(events)
        out: list[Command] = []
        last = self.log[-1][2] if self.log else ""
        for ev in events:
            if ev.now > self._now:
                self._now = ev.now
            if ev.stimulus_id and ev.stimulus_id != last:
                # one entry per stimulus, not per event: a map's refill or a loop
                # iteration's reports are one stimulus of thousands of events
                last = ev.stimulus_id
                self.log.append((ev.now, type(ev).__name__, last))
            if type(ev) is AttemptSucceeded:
                self._on_succeeded(ev, out)
            elif type(ev) is JobSubmitted:
                self._on_submitted(ev, out)
            elif type(ev) is AttemptFailed:
                self._on_failed(ev, out)
            elif type(ev) is AttemptLost:
                self._on_lost(ev)
            elif type(ev) is AttemptCancelled:
                self._release(ev.job_id, ev.attempt)
            elif type(ev) is CancelRequested:
                self._on_cancel(ev, out)
            elif type(ev) is Tick:
                self._on_tick()
            elif type(ev) is LimitsDeclared:
                self._on_limits_declared(ev)
            else:
                assert type(ev) is LimitsReleased
                self._on_limits_released(ev)
        self._dispatch(out)
        return out

    def _check(self, events: tuple[Event, ...]) -> None:
        """Raise for the first event that cannot be applied, before any is (rule 6)."""
        new_ids: set[str] = set()
        new_limits: set[str] = set()
        new_scopes: set[str] = set()
        limits, retired, jobs = self.limits, self._retired, self._jobs
        for ev in events:
            kind = type(ev)
            if kind is AttemptSucceeded:
                continue  # the bulk of every batch: nothing to check
            if kind is JobSubmitted:
                assert isinstance(ev, JobSubmitted)
                if ev.job_id in jobs or ev.job_id in new_ids:
                    raise ValueError(f"job {ev.job_id!r} was submitted twice")
                new_ids.add(ev.job_id)
                for name in ev.limits:
                    if (name not in limits or name in retired) and name not in new_limits:
                        raise ValueError(f"job {ev.job_id!r} names unknown limit {name!r}")
                if ev.weight != 1:
                    self._check_weight(ev)
            elif kind is LimitsDeclared:
                assert isinstance(ev, LimitsDeclared)
                if not ev.scope or ev.scope in self._scopes or ev.scope in new_scopes:
                    raise ValueError(f"limit scope {ev.scope!r} is already declared")
                new_scopes.add(ev.scope)
                for name, spec in ev.limits.items():
                    Limit(spec.concurrency, spec.rate_per_s)  # raises for bad values
                    new_limits.add(scoped(ev.scope, name))
            elif kind is LimitsReleased:
                assert isinstance(ev, LimitsReleased)
                names = set(self._scopes.get(ev.scope, ()))
                for key, queue in self._ready.items():
                    if names.intersection(key) and any(j.status is S.QUEUED for j in queue):
                        raise ValueError(f"limit scope {ev.scope!r} is released while jobs "
                                         "naming its limits still wait for them")
            elif kind not in _EVENT_TYPES:
                raise TypeError(f"not a scheduler event: {ev!r}")

    def status(self, job_id: str) -> JobStatus | None:
        """The job's status, or None if the scheduler does not know it (or forgot it)."""
        job = self._jobs.get(job_id)
        return None if job is None else job.status

    def next_wake(self) -> float | None:
        """The earliest time a ``Tick`` could change something, or None."""
        wake: float | None = self._retry_heap[0][0] if self._retry_heap else None
        for key, queue in self._ready.items():
            if not queue:
                continue
            units = queue[0].weight
            for name in key:
                at = self.limits[name].next_token_at(self._now, units)
                if at is not None and (wake is None or at < wake):
                    wake = at
        return wake

    @property
    def active(self) -> int:
        """Jobs not yet in a terminal status."""
        return len(self._jobs)

    def to_dict(self) -> dict[str, Any]:
        """A plain-data snapshot for status displays and post-mortems."""
        return {
            "now": self._now,
            "counts": {s.value: n for s, n in self.counts.items()},
            "active": len(self._jobs),
            "queued": {"+".join(k): len(q) for k, q in self._ready.items() if q},
            "retry_waiting": len(self._retry_heap),
            "limits": {
                name: {
                    "concurrency": lim.concurrency,
                    "rate_per_s": lim.rate_per_s,
                    "in_use": lim.in_use,
                }
                for name, lim in self.limits.items()
            },
            "log": [list(entry) for entry in self.log],
        }

    # -- transitions ------------------------------------------------------------------

    def _set_status(self, job: _Job, to: JobStatus) -> None:
        if (job.status, to) not in TRANSITIONS:
            raise InvalidTransition(
                f"job {job.id}: {job.status and job.status.value} -> {to.value} is not allowed"
            )
        if job.status is not None:
            self.counts[job.status] -= 1
        self.counts[to] += 1
        job.status = to

    def _on_submitted(self, ev: JobSubmitted, out: list[Command]) -> None:
        job = _Job(ev)
        self._jobs[job.id] = job
        self._enqueue(job)

    def _check_weight(self, ev: JobSubmitted) -> None:
        """:raises ValueError: for a weight below 1, or one that a limit the job names
        could never hold (rule 2)"""
        if ev.weight < 1:
            raise ValueError(f"job {ev.job_id!r} has weight {ev.weight}: at least 1")
        for name in ev.limits:
            limit = self.limits.get(name)
            most = None if limit is None else limit.most()
            if most is not None and ev.weight > most:
                raise ValueError(f"job {ev.job_id!r} holds {ev.weight} units of limit "
                                 f"{name!r}, which allows {most} at once: it could never "
                                 "start")

    def _on_limits_declared(self, ev: LimitsDeclared) -> None:
        names = self._scopes[ev.scope] = []
        for name, spec in ev.limits.items():
            full = scoped(ev.scope, name)
            self.limits[full] = Limit(spec.concurrency, spec.rate_per_s)
            names.append(full)

    def _on_limits_released(self, ev: LimitsReleased) -> None:
        names = self._scopes.pop(ev.scope, [])
        for name in names:
            if self.limits[name].in_use:
                self._retired.add(name)
            else:
                del self.limits[name]
        gone = set(names)
        for key in [k for k in self._ready if gone.intersection(k) or not self._ready[k]]:
            # what is left in a released scope's queues was cancelled while queued; and
            # empty queues would otherwise pile up, run after run
            del self._ready[key]

    def _enqueue(self, job: _Job) -> None:
        self._set_status(job, S.QUEUED)
        queue = self._ready.get(job.limits)
        if queue is None:
            queue = self._ready[job.limits] = deque()
        queue.append(job)

    def _on_succeeded(self, ev: AttemptSucceeded, out: list[Command]) -> None:
        job = self._current(ev.job_id, ev.attempt)
        if job is None:
            return
        self._set_status(job, S.SUCCEEDED)
        self._finish(job, out, result=ev.result)

    def _on_failed(self, ev: AttemptFailed, out: list[Command]) -> None:
        job = self._current(ev.job_id, ev.attempt)
        if job is None:
            return
        if ev.error.retryable and job.attempt - job.lost <= job.retries:
            delay = backoff_delay(job.attempt, job.backoff_s, self.rng)
            if ev.error.retry_after_s is not None:
                delay = max(delay, ev.error.retry_after_s)
            if delay <= 0:
                self._set_status(job, S.QUEUED)
                self._ready.setdefault(job.limits, deque()).append(job)
                return
            self._set_status(job, S.RETRYING)
            job.retry_at = self._now + delay
            self._retry_seq += 1
            heapq.heappush(self._retry_heap, (job.retry_at, self._retry_seq, job))
            return
        self._set_status(job, S.FAILED)
        self._finish(job, out, error=ev.error)

    def _on_lost(self, ev: AttemptLost) -> None:
        job = self._current(ev.job_id, ev.attempt)
        if job is None:
            return
        job.lost += 1
        self._set_status(job, S.QUEUED)
        self._ready.setdefault(job.limits, deque()).appendleft(job)  # first: it waited

    def _on_cancel(self, ev: CancelRequested, out: list[Command]) -> None:
        job = self._jobs.get(ev.job_id)
        if job is None:
            return
        if job.status is S.RUNNING:
            out.append(CancelAttempt(job.id, job.attempt, ev.stimulus_id))
            if job.held is not None:
                self._held[(job.id, job.attempt)] = (job.held, job.weight)
                job.held = None
        self._set_status(job, S.CANCELLED)
        self._finish(
            job, out, error=ErrorInfo("JobCancelled", ev.reason, retryable=False)
        )

    def _on_tick(self) -> None:
        heap = self._retry_heap
        while heap and heap[0][0] <= self._now:
            _, _, job = heapq.heappop(heap)
            if job.status is S.RETRYING:
                self._enqueue(job)

    def _current(self, job_id: str, attempt: int) -> _Job | None:
        """Free the attempt's limits; return its job if the attempt is still current."""
        job = self._release(job_id, attempt)
        if job is None or job.status is not S.RUNNING or job.attempt != attempt:
            return None
        return job

    def _release(self, job_id: str, attempt: int) -> _Job | None:
        """Free the attempt's limits; return its job, if known (one lookup for both)."""
        job = self._jobs.get(job_id)
        units = 1
        if job is not None and job.attempt == attempt and job.held is not None:
            held: tuple[str, ...] | None = job.held
            job.held = None
            units = job.weight
        else:
            gone = self._held.pop((job_id, attempt), None) if self._held else None
            held = None if gone is None else gone[0]
            units = 1 if gone is None else gone[1]
        if held is not None:
            for name in held:
                limit = self.limits[name]
                limit.release(units)
                if not limit.in_use and name in self._retired:
                    self._retired.discard(name)
                    del self.limits[name]
        return job

    def _finish(
        self, job: _Job, out: list[Command], *, result: Any = None,
        error: ErrorInfo | None = None,
    ) -> None:
        assert job.status is not None
        del self._jobs[job.id]
        out.append(JobFinished(job.id, job.status, job.attempt, result, error))

    # -- dispatch ---------------------------------------------------------------------

    def _dispatch(self, out: list[Command]) -> None:
        now = self._now
        limits = self.limits
        for key, queue in self._ready.items():
            while queue:
                room: int | None = None
                for name in key:
                    r = limits[name].room(now)
                    if r is not None and (room is None or r < room):
                        room = r
                if room is not None and room <= 0:
                    break
                n = len(queue) if room is None else min(room, len(queue))
                waits = False
                for _ in range(n):
                    job = queue[0]
                    if job.status is not S.QUEUED:
                        queue.popleft()
                        continue  # cancelled while queued
                    units = job.weight
                    if room is not None:
                        if units > room:
                            waits = True  # first in its queue, it waits for room (rule 4)
                            break
                        room -= units
                    queue.popleft()
                    for name in key:
                        limits[name].take(now, units)
                    self._set_status(job, S.RUNNING)
                    job.attempt += 1
                    job.held = key
                    out.append(StartAttempt(job.id, job.attempt))
                if waits:
                    break
