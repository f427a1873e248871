"""The seam between what users run (``submit``, ``map``, flows) and what runs it.

``Runner.map``, ``Runner.run_flow`` and ``Runner.submit`` use nothing below this
protocol. The engine (``engine.py``) implements it for one event loop with its executors;
a link to a coordinator implements it for a cluster; a test may implement it too.

A ``JobEntry`` is one job as handed across the seam: its id, kind, retries and limits,
how each attempt's call is built (``begin``) and where its end goes (``finished``).
``Entry`` is the plain one; a ``Job`` of the await API is its own entry, and a flow's
item is too, so one object per job is all a caller allocates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .core.commands import JobFinished
    from .core.policy import LimitSpec
    from .executors.base import Call
    from .model import JobKind, JobStatus


class JobEntry:
    """What a backend needs of a job, kept by it until the job finishes. An interface:
    subclasses hold the fields (in slots of their own) and say what the methods do."""

    __slots__ = ()

    job_id: str
    kind: JobKind
    #: named limits (``scoped(scope, name)``) an attempt holds besides its kind's
    limits: tuple[str, ...]
    retries: int
    backoff_s: float
    #: units of each limit (and slots of its kind) an attempt holds: n for a chunk of n
    #: io calls run at once, else 1
    weight: int = 1

    def begin(self, attempt: int) -> Call:
        """An attempt starts: return the call it runs (raising fails the attempt, for
        good: a call that cannot be built will not build on a retry)."""
        raise NotImplementedError

    def finished(self, done: JobFinished) -> None:
        """The job ended (any terminal status)."""
        raise NotImplementedError


class Entry(JobEntry):
    """A job whose call and callbacks are given: ``begin`` returns ``call`` (or what
    ``prepare`` builds), ``finished`` calls ``on_done``."""

    __slots__ = ("job_id", "kind", "call", "prepare", "on_done", "on_start", "limits",
                 "retries", "backoff_s", "weight")

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
        on_start: Callable[[int], None] | None = None,
        weight: int = 1,
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
        self.limits = limits
        self.retries = retries
        self.backoff_s = backoff_s
        self.weight = weight

    def begin(self, attempt: int) -> Call:
        if self.on_start is not None:
            self.on_start(attempt)
        if self.call is not None:
            return self.call
        assert self.prepare is not None
        return self.prepare(attempt)

    def finished(self, done: JobFinished) -> None:
        self.on_done(done)


def check_new_ids(known: Mapping[str, object], entries: tuple[JobEntry, ...]) -> None:
    """What every backend's ``submit`` checks first, so nothing of a bad call is taken.

    :raises ValueError: for an id already in ``known``, or one the call names twice
    """
    for entry in entries:
        if entry.job_id in known:
            raise ValueError(f"job {entry.job_id!r} was submitted twice")
    if len(entries) > 1 and len({e.job_id for e in entries}) < len(entries):
        raise ValueError("one submit() names a job id twice")


class Backend(Protocol):
    """What ``submit``, ``map`` and flows need from whatever runs their jobs."""

    def submit(self, *entries: JobEntry) -> None:
        """Take jobs. They reach the scheduler together with everything else submitted
        in this loop iteration; each entry's ``finished`` is called once, at its end.

        :raises RunnerClosed: once the backend is closing
        :raises ValueError: for an id already in use or a limit never declared
        """

    def cancel(self, job_id: str, reason: str = "cancelled") -> None:
        """End a job ``cancelled``; a running attempt is stopped for real."""

    def status(self, job_id: str) -> JobStatus | None:
        """Where a submitted job is; None once it finished (or before it is known)."""

    def capacity(self, kind: JobKind) -> int | None:
        """How many attempts of ``kind`` run at once (None: no bound)."""

    def io_chunk(self, most: int | None, total: int | None) -> int:
        """How many small io calls one job should carry, for ``total`` calls (None: not
        known) under a limit that allows ``most`` at once (None: no limit): 1 where a
        job costs little more than its call (an engine runs it in place), more where
        each job crosses processes."""

    def declare_limits(self, scope: str, limits: Mapping[str, LimitSpec]) -> None:
        """Named limits for one scope; jobs name them ``scoped(scope, name)``.

        :raises ValueError: if the scope is already declared, or a limit is invalid
        """

    def release_limits(self, scope: str) -> None:
        """Forget a scope's limits (once no running attempt holds them)."""
