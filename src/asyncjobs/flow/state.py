"""Which jobs of a flow may start, as a pure state machine (the one dependency resolver).

How this works: the flow run feeds events (``FlowStarted``, then ``JobEnded`` as each job
of the file ends, all its items done) to ``FlowState.handle`` and carries out the commands
it returns (``StartJob``, ``SkipJob``, ``FlowFinished``). It knows jobs of the file, not
attempts or items: a ``foreach`` job is one job here. A coordinator can drive the same
object, since it touches no IO, clock or task.

Rules the code keeps:

1. A job starts once every job it needs has succeeded; jobs start in plan order.
2. A job whose need did not succeed is skipped, naming that need, and so in turn are the
   jobs needing it; the other branches go on.
3. A job's status changes only through ``_set_status``, along ``TRANSITIONS``.
4. ``handle`` is atomic: an event naming an unknown job, or a job that is not running,
   raises before any event of the batch is applied.
5. Work is linear in jobs plus needs: each job counts its unmet needs down; nothing is
   rescanned when a job ends.
6. ``FlowFinished`` comes once, after the last job's terminal status.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.commands import Matchable
from ..errors import InvalidTransition
from ..model import JobStatus

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

S = JobStatus

TRANSITIONS: frozenset[tuple[JobStatus, JobStatus]] = frozenset({
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.SKIPPED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
})


@dataclass(slots=True)
class FlowStarted:
    stimulus_id: str = ""


@dataclass(slots=True)
class JobEnded:
    """Every item of a job of the file has ended; ``status`` sums them up."""

    job: str
    #: succeeded, failed or cancelled
    status: JobStatus
    stimulus_id: str = ""


FlowEvent = FlowStarted | JobEnded


@dataclass(slots=True)
class StartJob(Matchable):
    job: str
    stimulus_id: str = ""


@dataclass(slots=True)
class SkipJob(Matchable):
    job: str
    #: the need that did not succeed
    cause: str
    stimulus_id: str = ""


@dataclass(slots=True)
class FlowFinished(Matchable):
    stimulus_id: str = ""


FlowCommand = StartJob | SkipJob | FlowFinished


class FlowState:
    """The jobs of one flow and how far each has come.

    :param order: job names, each after every job it needs (the plan's order)
    :param needs: each job's needs, named and implied
    """

    def __init__(self, order: Sequence[str], needs: Mapping[str, Sequence[str]]) -> None:
        self.order = tuple(order)
        self.status: dict[str, JobStatus] = dict.fromkeys(self.order, S.PENDING)
        self._position = {name: i for i, name in enumerate(self.order)}
        self._waiting = {name: len(set(needs[name])) for name in self.order}
        self._dependents: dict[str, list[str]] = {name: [] for name in self.order}
        for name in self.order:
            for need in dict.fromkeys(needs[name]):
                self._dependents[need].append(name)
        self._open = len(self.order)
        self._started = False

    @property
    def finished(self) -> bool:
        return self._open == 0

    def handle(self, *events: FlowEvent) -> list[FlowCommand]:
        """Apply events in order; return the commands they lead to.

        :raises ValueError: for an event that cannot apply (rule 4); nothing is applied
        :raises InvalidTransition: on a status change the table forbids (a bug)
        """
        self._check(events)
        out: list[FlowCommand] = []
        for ev in events:
            if type(ev) is FlowStarted:
                self._started = True
                self._release([n for n in self.order if self._waiting[n] == 0], ev, out)
            else:
                assert type(ev) is JobEnded
                self._on_ended(ev, out)
        return out

    def _check(self, events: Sequence[FlowEvent]) -> None:
        status = self.status
        ended: set[str] = set()
        started = self._started
        for ev in events:
            if type(ev) is FlowStarted:
                if started:
                    raise ValueError("the flow was started twice")
                started = True
            elif type(ev) is JobEnded:
                # a job started by an earlier event of this batch cannot end in it: the
                # caller has not run it yet
                if status.get(ev.job) is not S.RUNNING or ev.job in ended:
                    raise ValueError(f"job {ev.job!r} ended but it was not running")
                if ev.status not in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
                    raise ValueError(f"job {ev.job!r} cannot end {ev.status.value}")
                ended.add(ev.job)
            else:
                raise TypeError(f"not a flow event: {ev!r}")

    def _set_status(self, name: str, to: JobStatus) -> None:
        if (self.status[name], to) not in TRANSITIONS:
            raise InvalidTransition(
                f"flow job {name}: {self.status[name].value} -> {to.value} is not allowed")
        self.status[name] = to
        if to.terminal:
            self._open -= 1

    def _on_ended(self, ev: JobEnded, out: list[FlowCommand]) -> None:
        self._set_status(ev.job, ev.status)
        if ev.status is S.SUCCEEDED:
            ready = []
            for dep in self._dependents[ev.job]:
                self._waiting[dep] -= 1
                if self._waiting[dep] == 0 and self.status[dep] is S.PENDING:
                    ready.append(dep)
            ready.sort(key=self._position.__getitem__)
            self._release(ready, ev, out)
        else:
            self._skip_from(ev.job, ev, out)
        if self._open == 0:
            out.append(FlowFinished(ev.stimulus_id))

    def _release(self, ready: list[str], ev: FlowEvent, out: list[FlowCommand]) -> None:
        for name in ready:
            self._set_status(name, S.RUNNING)
            out.append(StartJob(name, ev.stimulus_id))
        if self._open == 0 and type(ev) is FlowStarted:
            out.append(FlowFinished(ev.stimulus_id))

    def _skip_from(self, failed: str, ev: FlowEvent, out: list[FlowCommand]) -> None:
        queue = deque((failed, dep) for dep in self._dependents[failed])
        while queue:
            cause, dep = queue.popleft()
            if self.status[dep] is not S.PENDING:
                continue
            self._set_status(dep, S.SKIPPED)
            out.append(SkipJob(dep, cause, ev.stimulus_id))
            queue.extend((dep, d) for d in self._dependents[dep])
