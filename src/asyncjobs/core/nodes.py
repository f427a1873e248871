"""The cluster's nodes: where each attempt runs, as a pure state machine.

How this works: a coordinator drives two pure objects side by side. ``SchedulerState``
decides *when* an attempt of a job may start (retries, backoff, named limits, all
cluster-wide) and says so with ``StartAttempt``. ``ClusterState`` decides *where*: the
coordinator turns each ``StartAttempt`` into ``AttemptReady``, and ``ClusterState`` places
it on a loop of a node with a free slot of its kind (``SendAssign``), or holds it until a
slot frees. It tracks the nodes' loops and their slots, fences results, and turns a node's
death into ``RequeueLost`` (the scheduler retries it) or, for a job that was running on 3
nodes that died, ``FailJob``. It never touches a socket, a clock or a task: events carry
``now``.

The coordinator's wiring::

    scheduler StartAttempt      -> cluster AttemptReady(job, attempt, kind)
    node links: Register, Heartbeat, Result, Drain, close
                                -> NodeRegistered, HeartbeatReceived, AttemptEnded,
                                   NodeDraining, LoopDied / NodeDisconnected
    a timer                     -> one ``events.Tick`` to both (the earlier ``next_wake``)
    cluster SendAssign          -> an ``Assign`` on that loop's link
    cluster RecordResult        -> the held ``Result`` item, as the scheduler's
                                   AttemptSucceeded / AttemptFailed
    cluster RequeueLost         -> scheduler AttemptFailed(cmd.error)   (retryable)
    cluster FailJob             -> scheduler AttemptFailed(cmd.error)   (not retryable)
    cluster DeclareNodeDead     -> close the node's links
    scheduler JobFinished       -> cluster JobDone; CancelAttempt -> ``where()`` names the
                                   node to send ``Cancel`` to (None: never sent; report
                                   AttemptCancelled to the scheduler at once)

Rules the code keeps:

1. A loop is never assigned more attempts of a kind than its slots of that kind plus
   ``prefetch_per_loop`` (default ``PREFETCH_PER_LOOP``, at most ``MAX_PREFETCH_PER_LOOP``
   = 16, SPEC section 6). A loop with no slot of a kind gets none of it, prefetch included.
   An attempt of weight n (a chunk of n io calls) takes n slots, or all of a loop's
   slots if it has fewer, and then goes only to a loop with none in use: the node runs
   no more of its calls at once than it has slots.
2. Placement: the loop with the smallest share of its slots of that kind in use
   (assigned / slots), ties broken by node name, then loop index, so tests are exact.
   Attempts of one kind are placed in the order they became ready; attempts handed back
   by a draining node go first.
3. A node silent (no heartbeat, registration, result or drain) for longer than
   ``dead_after_s`` is declared dead on a ``Tick`` (``DeclareNodeDead``); one whose links
   all closed (``NodeDisconnected``) is dead at once. A dead node's, or a dead loop's,
   unfinished attempts are lost: ``RequeueLost``, which the scheduler
   retries as a new attempt (at-least-once execution).
4. Fencing: an attempt is ``(job_id, attempt)`` and lives on one loop at a time. A result
   counts only from the node the attempt is on now, once (``RecordResult``). Any other
   (its node was declared dead, it was handed back and placed elsewhere, a newer attempt
   exists, it was already recorded) is stale: ignored and counted in ``stale_results``.
5. A job that was running on a node, or a loop process, when it died ``max_node_deaths``
   times (default 3; each death counts once per job) is failed with ``FailJob``, whatever
   its retries, with a message naming those nodes (in the manner of dask's
   ``KilledWorker``). A draining node that stops is not a death.
6. ``handle`` is atomic: the events are checked first (an unknown node, a loop registered
   twice, an attempt made ready twice, something that is not an event) and a bad one raises
   before any of the batch is applied. A node's status changes only through
   ``_set_status``, along ``TRANSITIONS``: joining -> alive -> draining -> dead or gone
   (and dead or gone -> joining when it registers again).
7. A draining node gets no new attempts. The attempts it hands back unstarted are placed
   again as they are, same ``(job_id, attempt)``: no attempt is counted for them.
8. Dead and gone nodes stay listed by ``to_dict`` for ``KEEP_ENDED_NODES_S`` (10 minutes
   of ``now``), then are forgotten on a ``Tick``.

Heartbeats are per node, not per loop: a loop whose link closes is ``LoopDied``; a loop that
hangs with its link open is the node supervisor's business (it restarts the process).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import InvalidTransition
from ..model import ErrorInfo, JobKind
from .commands import Matchable
from .events import Tick as Tick  # one Tick feeds the scheduler and the cluster

#: attempts a loop may hold beyond its slots of a kind, so it never idles between a result
#: and the next ``Assign``; small, so a busy loop does not hoard work a free one could run
PREFETCH_PER_LOOP = 4
#: the most SPEC section 6 allows
MAX_PREFETCH_PER_LOOP = 16
#: a node silent this long is dead (SPEC section 6: "detected within a few seconds")
DEAD_AFTER_S = 5.0
#: node deaths while running a job before it is failed (SPEC section 6)
MAX_NODE_DEATHS = 3
#: how long a dead or gone node stays listed by ``to_dict`` (``asyncjobs status``)
KEEP_ENDED_NODES_S = 600.0
STIMULUS_LOG_SIZE = 1000

AttemptKey = tuple[str, int]


class NodeStatus(StrEnum):
    """Where a node is in its life."""

    #: some of its loops have registered; those already take attempts
    JOINING = "joining"
    #: all its loops have registered
    ALIVE = "alive"
    #: stopping: it gets nothing new, and finishes what it runs
    DRAINING = "draining"
    #: declared dead (silent too long, or its link broke while it was not draining)
    DEAD = "dead"
    #: left after draining
    GONE = "gone"


N = NodeStatus

#: allowed (from, to) node status changes; None is "not known"
TRANSITIONS: frozenset[tuple[NodeStatus | None, NodeStatus]] = frozenset(
    {
        (None, N.JOINING),
        (N.JOINING, N.ALIVE),
        (N.JOINING, N.DRAINING),
        (N.JOINING, N.DEAD),
        (N.ALIVE, N.DRAINING),
        (N.ALIVE, N.DEAD),
        (N.DRAINING, N.DEAD),
        (N.DRAINING, N.GONE),
        (N.DEAD, N.JOINING),
        (N.GONE, N.JOINING),
    }
)

_PLACING = frozenset({N.JOINING, N.ALIVE})
_LIVE = frozenset({N.JOINING, N.ALIVE, N.DRAINING})


# -- events -------------------------------------------------------------------------------


@dataclass(slots=True)
class NodeRegistered:
    """One loop of a node introduced itself (the ``Register`` message)."""

    node: str
    #: this loop's index among the node's loops, from 0
    loop: int
    loops: int
    #: attempts of each kind this loop runs at once
    capacity: dict[JobKind, int]
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class HeartbeatReceived:
    node: str
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class AttemptReady:
    """The scheduler said ``StartAttempt``: place this attempt on a node."""

    job_id: str
    attempt: int
    kind: JobKind
    now: float = 0.0
    stimulus_id: str = ""
    #: slots it takes (rule 1)
    weight: int = 1


@dataclass(slots=True)
class AttemptEnded:
    """A node sent the result of an attempt (the result itself stays with the coordinator)."""

    node: str
    job_id: str
    attempt: int
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class NodeDraining:
    """The node is stopping (``Drain``); it hands back attempts it never started."""

    node: str
    returned: tuple[AttemptKey, ...] = ()
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class LoopDied:
    """One loop process of a node died (its link closed while the node lives on); what it
    ran is lost, and counts as a death for each of those jobs (rule 5)."""

    node: str
    loop: int
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class NodeDisconnected:
    """All of a node's links closed: a death, unless the node was draining."""

    node: str
    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True)
class JobDone:
    """The scheduler finished the job (``JobFinished``): drop its attempt if it was never
    placed, and forget the node deaths it saw."""

    job_id: str
    now: float = 0.0
    stimulus_id: str = ""


ClusterEvent = (
    NodeRegistered | HeartbeatReceived | AttemptReady | AttemptEnded | NodeDraining
    | LoopDied | NodeDisconnected | JobDone | Tick
)

_EVENT_TYPES = frozenset({NodeRegistered, HeartbeatReceived, AttemptReady, AttemptEnded,
                          NodeDraining, LoopDied, NodeDisconnected, JobDone, Tick})


# -- commands -----------------------------------------------------------------------------


@dataclass(slots=True)
class SendAssign(Matchable):
    """Send these attempts to that loop of that node, in one ``Assign``. One per loop per
    ``handle`` call."""

    node: str
    loop: int
    attempts: tuple[AttemptKey, ...]
    stimulus_id: str = ""


@dataclass(slots=True)
class RecordResult(Matchable):
    """This result counts (rule 4): hand it to the scheduler. Said once per attempt."""

    node: str
    job_id: str
    attempt: int
    stimulus_id: str = ""


@dataclass(slots=True)
class RequeueLost(Matchable):
    """The attempt's node (or loop) died under it: report the scheduler's
    ``AttemptLost(job_id, attempt, error)``, which runs the job again, first in its
    queue, whatever its ``retries`` (SPEC section 6; rule 5 bounds it)."""

    job_id: str
    attempt: int
    #: "node-dead", "loop-died" or "node-stopped" (a draining node left with it unfinished)
    reason: str
    #: the deaths this job has seen so far, oldest first (rule 5)
    nodes_killed: tuple[str, ...]
    error: ErrorInfo
    stimulus_id: str = ""


@dataclass(slots=True)
class FailJob(Matchable):
    """The job was running on ``max_node_deaths`` nodes that died: report
    ``AttemptFailed(job_id, attempt, error)`` (not retryable) to the scheduler."""

    job_id: str
    attempt: int
    reason: str
    nodes_killed: tuple[str, ...]
    error: ErrorInfo
    stimulus_id: str = ""


@dataclass(slots=True)
class DeclareNodeDead(Matchable):
    """The node was silent too long: close its links; anything it sends later is stale."""

    node: str
    stimulus_id: str = ""


ClusterCommand = SendAssign | RecordResult | RequeueLost | FailJob | DeclareNodeDead


def killed_nodes_message(job_id: str, deaths: tuple[str, ...]) -> str:
    """What a job failed by rule 5 says (modelled on dask's ``KilledWorker``)."""
    names = ", ".join(deaths[:-1]) + f" and {deaths[-1]}" if len(deaths) > 1 else deaths[0]
    return (
        f"job {job_id!r} was running on a node that died {len(deaths)} times, on "
        f"{names}, so it is failed rather than run again, whatever its retries: the job "
        f"itself may be what kills them (a crash, running out of memory, os._exit). "
        f"The log of {deaths[-1]}, where it ran last, is the place to look first; if the "
        f"nodes died for another reason, run it again"
    )


# -- state --------------------------------------------------------------------------------


class _Attempt:
    __slots__ = ("job_id", "attempt", "kind", "node", "loop", "weight", "slots")

    def __init__(self, job_id: str, attempt: int, kind: JobKind, weight: int = 1) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.kind = kind
        #: where it is assigned; None while it waits for a slot
        self.node: str | None = None
        self.loop = -1
        self.weight = weight
        #: the slots it holds on its loop: ``weight``, at most the loop's (rule 1)
        self.slots = 0


class _Loop:
    __slots__ = ("capacity", "used", "attempts", "live")

    def __init__(self, capacity: dict[JobKind, int]) -> None:
        self.capacity = dict(capacity)
        #: attempts assigned and not ended, per kind (running or prefetched)
        self.used: dict[JobKind, int] = dict.fromkeys(JobKind, 0)
        self.attempts: dict[AttemptKey, _Attempt] = {}
        #: False after ``LoopDied`` until it registers again
        self.live = True


class _Node:
    __slots__ = ("name", "status", "loops", "loop_slots", "last_heartbeat", "ended_at")

    def __init__(self, name: str, loops: int) -> None:
        self.name = name
        self.status: NodeStatus | None = None
        self.loops = loops
        self.loop_slots: dict[int, _Loop] = {}
        self.last_heartbeat = 0.0
        self.ended_at = 0.0


class ClusterState:
    """Nodes, their loops' slots, and where each attempt runs.

    :param dead_after_s: a node silent longer than this is declared dead on a ``Tick``
    :param prefetch_per_loop: attempts a loop may hold beyond its slots, per kind
    :param max_node_deaths: node deaths while running a job before it is failed
    :raises ValueError: for a prefetch outside 0..16, or a non-positive timeout or count
    """

    def __init__(
        self, *, dead_after_s: float = DEAD_AFTER_S,
        prefetch_per_loop: int = PREFETCH_PER_LOOP, max_node_deaths: int = MAX_NODE_DEATHS,
    ) -> None:
        if not 0 <= prefetch_per_loop <= MAX_PREFETCH_PER_LOOP:
            raise ValueError(f"prefetch_per_loop must be 0 to {MAX_PREFETCH_PER_LOOP}, "
                             f"not {prefetch_per_loop}")
        if dead_after_s <= 0:
            raise ValueError(f"dead_after_s must be above 0, not {dead_after_s}")
        if max_node_deaths < 1:
            raise ValueError(f"max_node_deaths must be at least 1, not {max_node_deaths}")
        self.dead_after_s = dead_after_s
        self.prefetch_per_loop = prefetch_per_loop
        self.max_node_deaths = max_node_deaths
        self._nodes: dict[str, _Node] = {}
        self._attempts: dict[AttemptKey, _Attempt] = {}
        #: the newest attempt number seen per job, for fencing (rule 4)
        self._latest: dict[str, int] = {}
        #: per kind, attempts waiting for a slot (rule 2); dropped ones are skipped
        self._pending: dict[JobKind, deque[_Attempt]] = {k: deque() for k in JobKind}
        #: per kind, entries of ``_pending`` whose attempt was dropped
        self._dropped: dict[JobKind, int] = dict.fromkeys(JobKind, 0)
        #: job -> the deaths it was running through (rule 5)
        self._deaths: dict[str, list[str]] = {}
        #: jobs the scheduler finished while their attempt still ran on a node
        self._done: set[str] = set()
        self.stale_results = 0
        self._now = 0.0
        #: (now, event type, stimulus id) of the latest stimuli, for post-mortems
        self.log: deque[tuple[float, str, str]] = deque(maxlen=STIMULUS_LOG_SIZE)

    # -- public -----------------------------------------------------------------------

    def handle(self, *events: ClusterEvent) -> list[ClusterCommand]:
        """Apply events in order; return the commands they lead to.

        :returns: commands; all ``SendAssign`` come last, one per loop
        :raises InvalidTransition: on a node status change the table forbids (a bug)
        :raises ValueError: for an event naming a node that never registered, a loop
            registered twice or out of range, or an attempt made ready twice; nothing of
            the batch is applied then (rule 6)
        :raises TypeError: for something that is not a cluster event, likewise
        """
        self._check(events)
        out: list[ClusterCommand] = []
        last = self.log[-1][2] if self.log else ""
        for ev in events:
            if ev.now > self._now:
                self._now = ev.now
            if ev.stimulus_id and ev.stimulus_id != last:
                last = ev.stimulus_id
                self.log.append((ev.now, type(ev).__name__, last))
            if type(ev) is AttemptReady:
                self._on_ready(ev)
            elif type(ev) is AttemptEnded:
                self._on_ended(ev, out)
            elif type(ev) is HeartbeatReceived:
                self._heard(ev.node)
            elif type(ev) is NodeRegistered:
                self._on_registered(ev)
            elif type(ev) is NodeDraining:
                self._on_draining(ev)
            elif type(ev) is LoopDied:
                self._on_loop_died(ev, out)
            elif type(ev) is NodeDisconnected:
                self._on_disconnected(ev, out)
            elif type(ev) is JobDone:
                self._on_job_done(ev)
            else:
                assert type(ev) is Tick
                self._on_tick(out)
        self._dispatch(out)
        return out

    def _check(self, events: tuple[ClusterEvent, ...]) -> None:
        """Raise for the first event that cannot be applied, before any is (rule 6)."""
        new_nodes: dict[str, int] = {}
        new_loops: set[tuple[str, int]] = set()
        new_attempts: set[AttemptKey] = set()
        for ev in events:
            kind = type(ev)
            if kind not in _EVENT_TYPES:
                raise TypeError(f"not a cluster event: {ev!r}")
            if kind is NodeRegistered:
                assert isinstance(ev, NodeRegistered)
                self._check_registered(ev, new_nodes, new_loops)
            elif kind is AttemptReady:
                assert isinstance(ev, AttemptReady)
                key = (ev.job_id, ev.attempt)
                if not isinstance(ev.kind, JobKind):
                    raise ValueError(f"attempt {key} has no job kind: {ev.kind!r}")
                if key in new_attempts or ev.attempt <= self._latest.get(ev.job_id, 0):
                    raise ValueError(f"attempt {ev.attempt} of job {ev.job_id!r} was made "
                                     "ready twice, or after a newer one")
                new_attempts.add(key)
            elif kind in (HeartbeatReceived, AttemptEnded, NodeDraining, LoopDied,
                          NodeDisconnected):
                name: str = ev.node  # type: ignore[union-attr]
                if name not in self._nodes and name not in new_nodes:
                    raise ValueError(f"{kind.__name__} names node {name!r}, which never "
                                     "registered")
                if kind is LoopDied:
                    assert isinstance(ev, LoopDied)
                    loops = new_nodes.get(name) or self._nodes[name].loops
                    if not 0 <= ev.loop < loops:
                        raise ValueError(f"node {name!r} has no loop {ev.loop}")

    def _check_registered(self, ev: NodeRegistered, new_nodes: dict[str, int],
                          new_loops: set[tuple[str, int]]) -> None:
        if not ev.node:
            raise ValueError("a node needs a name")
        if ev.loops < 1 or not 0 <= ev.loop < ev.loops:
            raise ValueError(f"node {ev.node!r}: loop {ev.loop} of {ev.loops} is out of range")
        for kind, n in ev.capacity.items():
            if not isinstance(kind, JobKind) or n < 0:
                raise ValueError(f"node {ev.node!r}: bad capacity {kind!r}: {n!r}")
        node = self._nodes.get(ev.node)
        known = new_nodes.get(ev.node)
        if known is None and node is not None and node.status in _LIVE:
            known = node.loops
        if known is not None and known != ev.loops:
            raise ValueError(f"node {ev.node!r} registered with {known} loops, now "
                             f"{ev.loops}")
        key = (ev.node, ev.loop)
        live = (node is not None and node.status in _LIVE
                and ev.loop in node.loop_slots and node.loop_slots[ev.loop].live)
        if key in new_loops or live:
            raise ValueError(f"loop {ev.loop} of node {ev.node!r} registered twice "
                             "(two nodes with one name?)")
        new_nodes[ev.node] = ev.loops
        new_loops.add(key)

    def where(self, job_id: str, attempt: int) -> tuple[str, int] | None:
        """The node and loop the attempt was sent to, or None (waiting, ended, unknown)."""
        att = self._attempts.get((job_id, attempt))
        if att is None or att.node is None:
            return None
        return att.node, att.loop

    def status(self, node: str) -> NodeStatus | None:
        """The node's status, or None if it is not known (or was forgotten)."""
        n = self._nodes.get(node)
        return None if n is None else n.status

    def next_wake(self) -> float | None:
        """The earliest time a ``Tick`` could change something, or None."""
        wake: float | None = None
        for node in self._nodes.values():
            at = (node.last_heartbeat + self.dead_after_s if node.status in _LIVE
                  else node.ended_at + KEEP_ENDED_NODES_S)
            if wake is None or at < wake:
                wake = at
        return wake

    @property
    def waiting(self) -> int:
        """Attempts held until a slot frees."""
        return sum(1 for a in self._attempts.values() if a.node is None)

    def to_dict(self) -> dict[str, Any]:
        """A plain-data snapshot: ``nodes`` as ``asyncjobs status --json`` lists them (SPEC
        section 4), plus counters and the stimulus log for post-mortems."""
        nodes = []
        for name in sorted(self._nodes):
            node = self._nodes[name]
            used = total = assigned = 0
            for lp in node.loop_slots.values():
                if not lp.live:
                    continue
                for kind, cap in lp.capacity.items():
                    total += cap
                    used += min(cap, lp.used[kind])
                    assigned += lp.used[kind]
            nodes.append({
                "name": name,
                "alive": node.status in _LIVE,
                "loops": node.loops,
                "slots_used": used,
                "slots_total": total,
                "last_heartbeat_s": max(0.0, self._now - node.last_heartbeat),
                "status": node.status.value if node.status else None,
                "assigned": assigned,
            })
        return {
            "now": self._now,
            "nodes": nodes,
            "waiting": {k.value: sum(1 for a in q if a.node is None
                                     and self._attempts.get((a.job_id, a.attempt)) is a)
                        for k, q in self._pending.items()},
            "attempts": len(self._attempts),
            "stale_results": self.stale_results,
            "log": [list(entry) for entry in self.log],
        }

    # -- transitions ------------------------------------------------------------------

    def _set_status(self, node: _Node, to: NodeStatus) -> None:
        if (node.status, to) not in TRANSITIONS:
            raise InvalidTransition(
                f"node {node.name}: {node.status and node.status.value} -> {to.value} is "
                "not allowed"
            )
        node.status = to

    def _heard(self, name: str) -> None:
        node = self._nodes[name]
        if node.status in _LIVE and self._now > node.last_heartbeat:
            node.last_heartbeat = self._now

    def _on_registered(self, ev: NodeRegistered) -> None:
        node = self._nodes.get(ev.node)
        if node is None or node.status not in _LIVE:
            node = self._nodes[ev.node] = _Node(ev.node, ev.loops) if node is None else node
            if node.status is not None:  # registering again after death: a fresh start
                node.loop_slots = {}
                node.loops = ev.loops
            self._set_status(node, N.JOINING)
        node.loop_slots[ev.loop] = _Loop(ev.capacity)
        node.last_heartbeat = max(node.last_heartbeat, self._now)
        if node.status is N.JOINING and sum(
                lp.live for lp in node.loop_slots.values()) == node.loops:
            self._set_status(node, N.ALIVE)

    def _on_ready(self, ev: AttemptReady) -> None:
        att = _Attempt(ev.job_id, ev.attempt, ev.kind, ev.weight)
        key = (ev.job_id, ev.attempt)
        latest = self._latest.get(ev.job_id)  # None for a job's first attempt: most
        old = None if latest is None else self._attempts.get((ev.job_id, latest))
        if old is not None and old.node is None:
            # never placed, and now outdated; one already on a node keeps its slot until
            # its (stale) result or its node's end
            self._drop_waiting(old)
        self._latest[ev.job_id] = ev.attempt
        self._attempts[key] = att
        self._pending[ev.kind].append(att)

    def _on_ended(self, ev: AttemptEnded, out: list[ClusterCommand]) -> None:
        node = self._nodes[ev.node]  # _heard, inline: once per result
        if node.status in _LIVE and self._now > node.last_heartbeat:
            node.last_heartbeat = self._now
        key = (ev.job_id, ev.attempt)
        att = self._attempts.get(key)
        if att is None or att.node != ev.node:
            self.stale_results += 1
            return
        if self._latest.get(ev.job_id) != ev.attempt:
            self.stale_results += 1  # a newer attempt exists; this one's slot is free now
            self._unassign(att)
            del self._attempts[key]
            return
        self._unassign(att)
        del self._attempts[key]
        if self._done:
            self._forget_if_done(ev.job_id)
        out.append(RecordResult(ev.node, ev.job_id, ev.attempt, ev.stimulus_id))

    def _on_draining(self, ev: NodeDraining) -> None:
        node = self._nodes[ev.node]
        if node.status not in _LIVE:
            return  # declared dead already; what it hands back was lost then
        self._heard(ev.node)
        if node.status is not N.DRAINING:
            self._set_status(node, N.DRAINING)
        back = []
        for key in ev.returned:
            att = self._attempts.get(key)
            if att is not None and att.node == ev.node:
                self._unassign(att)
                back.append(att)
        self._pending_front(back)

    def _on_loop_died(self, ev: LoopDied, out: list[ClusterCommand]) -> None:
        node = self._nodes[ev.node]
        lp = node.loop_slots.get(ev.loop)
        if node.status not in _LIVE or lp is None or not lp.live:
            return
        lp.live = False
        self._lose(list(lp.attempts.values()), f"{ev.node} (loop {ev.loop})", "loop-died",
                   out, ev.stimulus_id)

    def _on_disconnected(self, ev: NodeDisconnected, out: list[ClusterCommand]) -> None:
        node = self._nodes[ev.node]
        if node.status not in _LIVE:
            return
        stopped = node.status is N.DRAINING
        self._end_node(node, N.GONE if stopped else N.DEAD, out, ev.stimulus_id,
                       reason="node-stopped" if stopped else "node-dead")

    def _on_job_done(self, ev: JobDone) -> None:
        self._deaths.pop(ev.job_id, None)
        n = self._latest.get(ev.job_id)
        if n is None:
            return
        att = self._attempts.get((ev.job_id, n))
        if att is not None and att.node is not None:
            # cancelled while it runs: its result (or its loss) still counts once, so the
            # scheduler frees the limits it holds; forget the job after that
            self._done.add(ev.job_id)
            return
        if att is not None:
            self._drop_waiting(att)
        del self._latest[ev.job_id]

    def _forget_if_done(self, job_id: str) -> None:
        if job_id in self._done:
            self._done.discard(job_id)
            self._latest.pop(job_id, None)
            self._deaths.pop(job_id, None)

    def _on_tick(self, out: list[ClusterCommand]) -> None:
        now = self._now
        for node in list(self._nodes.values()):
            if node.status in _LIVE and now - node.last_heartbeat > self.dead_after_s:
                out.append(DeclareNodeDead(node.name))
                self._end_node(node, N.DEAD, out, "", reason="node-dead")
            elif (node.status in (N.DEAD, N.GONE)
                    and now - node.ended_at >= KEEP_ENDED_NODES_S):
                del self._nodes[node.name]

    def _end_node(self, node: _Node, to: NodeStatus, out: list[ClusterCommand],
                  stimulus_id: str, *, reason: str) -> None:
        self._set_status(node, to)
        node.ended_at = self._now
        lost: list[_Attempt] = []
        for lp in node.loop_slots.values():
            if lp.live:
                lost.extend(lp.attempts.values())
            lp.live = False
        self._lose(lost, node.name, reason, out, stimulus_id)

    def _lose(self, lost: list[_Attempt], where: str, reason: str,
              out: list[ClusterCommand], stimulus_id: str) -> None:
        for att in sorted(lost, key=lambda a: (a.job_id, a.attempt)):
            self._unassign(att)
            del self._attempts[(att.job_id, att.attempt)]
            counts = reason != "node-stopped" and att.job_id not in self._done
            self._forget_if_done(att.job_id)
            deaths = self._deaths.setdefault(att.job_id, []) if counts else []
            if counts:
                deaths.append(where)
            killed = tuple(deaths or self._deaths.get(att.job_id, ()))
            if counts and len(killed) >= self.max_node_deaths:
                msg = killed_nodes_message(att.job_id, killed)
                out.append(FailJob(att.job_id, att.attempt, "killed-nodes", killed,
                                   ErrorInfo("KilledNodes", msg, retryable=False,
                                             where=where), stimulus_id))
                continue
            what = "died" if counts else "stopped"
            msg = (f"{where} {what} while running attempt {att.attempt} of job "
                   f"{att.job_id!r}; the job runs again")
            out.append(RequeueLost(att.job_id, att.attempt, reason, killed,
                                   ErrorInfo("NodeLost", msg, where=where), stimulus_id))

    # -- placement --------------------------------------------------------------------

    def _unassign(self, att: _Attempt) -> None:
        if att.node is None:
            return
        lp = self._nodes[att.node].loop_slots[att.loop]
        lp.used[att.kind] -= att.slots
        del lp.attempts[(att.job_id, att.attempt)]
        att.node = None
        att.loop = -1

    def _drop_waiting(self, att: _Attempt) -> None:
        """Forget an attempt never placed. Its queue entry is skipped when the queue reaches
        it; a queue that is mostly such entries (no slot of its kind anywhere, say) is
        rebuilt, so cancelled work does not pile up."""
        del self._attempts[(att.job_id, att.attempt)]
        queue = self._pending[att.kind]
        self._dropped[att.kind] += 1
        if self._dropped[att.kind] > max(64, len(queue) // 2):
            live = [a for a in queue if self._attempts.get((a.job_id, a.attempt)) is a]
            self._pending[att.kind] = deque(live)
            self._dropped[att.kind] = 0

    def _pending_front(self, back: list[_Attempt]) -> None:
        for att in reversed(back):
            self._pending[att.kind].appendleft(att)

    def _dispatch(self, out: list[ClusterCommand]) -> None:
        batches: dict[tuple[str, int], list[AttemptKey]] = {}
        for kind, queue in self._pending.items():
            if not queue:
                continue
            loops = [(node.name, i, lp) for node in self._nodes.values()
                     if node.status in _PLACING
                     for i, lp in node.loop_slots.items()
                     if lp.live and lp.capacity.get(kind, 0) > 0]
            loops.sort(key=lambda t: (t[0], t[1]))
            while queue:
                att = queue[0]
                if self._attempts.get((att.job_id, att.attempt)) is not att:
                    queue.popleft()  # dropped while it waited
                    self._dropped[kind] = max(0, self._dropped[kind] - 1)
                    continue
                best = None
                best_share = 0.0
                weight = att.weight
                for name, i, lp in loops:
                    cap = lp.capacity[kind]
                    used = lp.used[kind]
                    if weight == 1:
                        if used >= cap + self.prefetch_per_loop:
                            continue
                    elif used + min(weight, cap) > cap + self.prefetch_per_loop or (
                            weight >= cap and used):
                        continue
                    share = used / cap
                    if best is None or share < best_share:
                        best, best_share = (name, i, lp), share
                if best is None:
                    break
                queue.popleft()
                name, i, lp = best
                att.node, att.loop = name, i
                att.slots = min(weight, lp.capacity[kind])
                lp.used[kind] += att.slots
                key = (att.job_id, att.attempt)
                lp.attempts[key] = att
                batches.setdefault((name, i), []).append(key)
        for (name, i), keys in sorted(batches.items()):
            out.append(SendAssign(name, i, tuple(keys)))
