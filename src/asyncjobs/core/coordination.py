"""The coordinator's logic, sans IO: protocol messages in, messages to send out.

How this works: the coordinator daemon owns the sockets, and hands each message a link
delivered to ``Coordination`` (``node_joined``, ``message``, ``link_closed``, ``tick``).
What comes back is a list of ``Send(link, message)`` and ``Close(link, reason)``. In
between, it drives the two pure states the way ``core.nodes`` describes: the one
``SchedulerState`` decides when an attempt may start (retries, named limits, cluster-wide),
``ClusterState`` decides where. There is no second scheduler.

Rules the code keeps:

1. Links are numbered by the daemon. A node's link must begin with ``Register``; a
   client's link gets ``ClusterInfo`` at once, and again whenever the live nodes' total
   capacity changes.
2. A client's job ids, and its limit scopes, are its own: both are kept apart from other
   clients' by a prefix (``c3/``), so two clients' ``hits-1`` or ``flow1:api`` never meet.
3. A job that cannot be taken (an id in use, a limit never declared) is answered at once
   with a failed outcome; the rest of the batch is taken. A peer that breaks the rules
   of its role gets ``Error`` and is closed.
4. Each job is answered once, with an ``Outcome`` item: where and when its last attempt
   ran, from this side's clock (Unix time).
5. A client that goes away cancels its unfinished jobs and releases its limits; its
   flows stay listed (as "lost" if they were running) for ``KEEP_FLOWS_S``. One that
   named a session (``Attach``, first on its link) and goes away without ``Goodbye`` is
   only away: its session is kept for the ``keep_s`` it asked, at most
   ``SESSION_KEEP_S`` (jobs running, limits held, succeeded outcomes held), and a link
   that attaches to it again takes it back: a job
   id sent again that still runs is adopted, one that succeeded is answered from what
   was held without running again (the daemon passes what its store holds as
   ``found``). Only a session's succeeded outcomes are held: a job that failed or was
   cancelled runs again when sent again.
6. A node's loop whose link closes is a ``LoopDied``; the last link of a node closing is
   ``NodeDisconnected``. Messages from a link after it was closed are ignored.
7. A session's succeeded outcomes leave as ``Record`` (unless made with
   ``records=False``: a daemon without a store keeps none) before the ``Send`` that
   carries them, so a daemon with a store commits them before the client can learn of
   them; a session that ends leaves as ``Forget``; its flows' changes as ``SaveFlow``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..model import ErrorInfo, JobKind, JobStatus
from ..protocol.messages import (
    Assign,
    Attach,
    AttemptSpec,
    Cancel,
    ClusterInfo,
    DeclareLimits,
    Drain,
    Error,
    FlowStatus,
    FlowSubmit,
    Goodbye,
    Heartbeat,
    JobOutcome,
    JobSpec,
    NodeInfo,
    Outcome,
    Register,
    ReleaseLimits,
    Result,
    StatusReply,
    StatusRequest,
    Submit,
)
from .commands import CancelAttempt, JobFinished, StartAttempt
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
from .nodes import (
    AttemptEnded,
    AttemptReady,
    ClusterEvent,
    ClusterState,
    DeclareNodeDead,
    FailJob,
    HeartbeatReceived,
    JobDone,
    LoopDied,
    NodeDisconnected,
    NodeDraining,
    NodeRegistered,
    NodeStatus,
    RecordResult,
    RequeueLost,
    SendAssign,
)
from .scheduler import SchedulerState

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Mapping

    from ..protocol.messages import AttemptResult, Message
    from .policy import LimitSpec

#: finished (or lost) flows stay listed this long (SPEC section 4: at least 10 minutes)
KEEP_FLOWS_S = 600.0
#: outcomes in one ``Outcome`` frame; more go in several
OUTCOMES_PER_FRAME = 1000
#: a named session whose client went away without ``Goodbye`` is kept this long
SESSION_KEEP_S = 3600.0
#: a client silent this many times ``dead_after_s`` is closed
CLIENT_SILENCE_FACTOR = 3.0
#: ``counts``' key for each terminal status (made once, not per job)
_FINISHED_KEYS = {s: f"finished_{s.value}" for s in JobStatus if s.terminal}


@dataclass(slots=True)
class Send:
    link: int
    msg: Message


@dataclass(slots=True)
class Close:
    link: int
    reason: str


@dataclass(slots=True)
class Record:
    """Succeeded outcomes of a named session, to make durable before they are sent."""

    session: str
    outcomes: list[JobOutcome]


@dataclass(slots=True)
class SaveFlow:
    """A flow of a named session changed (``ended_at``: Unix time, None while running)."""

    session: str
    status: FlowStatus
    ended_at: float | None


@dataclass(slots=True)
class Forget:
    """A named session ended: what was held for it may go."""

    session: str


Output = Send | Close | Record | SaveFlow | Forget


class _Job:
    __slots__ = ("client", "spec", "kind", "node", "started_s", "submitted")

    def __init__(self, client: _Client, spec: JobSpec, kind: JobKind,
                 submitted: float = 0.0) -> None:
        self.client = client
        self.spec = spec
        self.kind = kind
        #: when it was submitted (``now``), for the dispatch-latency metric
        self.submitted = submitted
        #: where and when (Unix time) its latest attempt was sent
        self.node = ""
        self.started_s: float | None = None


class _Client:
    __slots__ = ("link", "prefix", "jobs", "scopes", "limits", "outcomes", "last_heard",
                 "session", "fresh", "resumed", "held", "records", "away_since", "leaving",
                 "keep_s")

    def __init__(self, link: int | None, prefix: str, now: float) -> None:
        #: None while a named session's client is away
        self.link = link
        self.prefix = prefix
        #: its unfinished jobs, by the coordinator's id
        self.jobs: set[str] = set()
        #: its declared scopes (with their limits), and the scheduler's names of those
        self.scopes: dict[str, dict[str, LimitSpec]] = {}
        self.limits: set[str] = set()
        self.outcomes: list[JobOutcome] = []
        self.last_heard = now
        #: the session it named (``Attach``), or None
        self.session: str | None = None
        #: nothing but ``Attach`` may have come yet
        self.fresh = True
        #: taken back after its client was away (or restored after a restart): jobs sent
        #: again may be known, running or succeeded
        self.resumed = False
        #: succeeded while its client was away, by the client's id
        self.held: dict[str, JobOutcome] = {}
        #: succeeded outcomes not yet in a ``Record``
        self.records: list[JobOutcome] = []
        self.away_since: float | None = None
        #: how long it is kept while away
        self.keep_s = SESSION_KEEP_S
        #: said ``Goodbye``: its link closing ends the session
        self.leaving = False


class _Loop:
    __slots__ = ("link", "node", "loop", "capacity")

    def __init__(self, link: int, node: str, loop: int, capacity: dict[JobKind, int]) -> None:
        self.link = link
        self.node = node
        self.loop = loop
        self.capacity = capacity


class _Flow:
    __slots__ = ("status", "client", "ended_at")

    def __init__(self, status: FlowStatus, client: _Client) -> None:
        self.status = status
        self.client = client
        self.ended_at: float | None = None


class Coordination:
    """What the coordinator knows and decides. ``now`` is the daemon's monotonic clock;
    ``wall_offset`` turns it into Unix time for outcomes.

    :param dead_after_s: a node (or, times ``CLIENT_SILENCE_FACTOR``, a client) silent
        this long is dead
    """

    def __init__(self, *, dead_after_s: float = 5.0, wall_offset: float = 0.0,
                 rng: random.Random | None = None, records: bool = True) -> None:
        self.scheduler = SchedulerState({}, rng=rng)
        self.cluster = ClusterState(dead_after_s=dead_after_s)
        self.dead_after_s = dead_after_s
        self.wall_offset = wall_offset
        self._jobs: dict[str, _Job] = {}
        #: clients whose link is up, by link; named sessions, linked or away
        self._clients: dict[int, _Client] = {}
        self._sessions: dict[str, _Client] = {}
        #: emit ``Record`` (rule 7): off for a daemon without a store, which keeps none
        self._recording = records
        #: sessions with outcomes not yet in a ``Record``
        self._unrecorded: list[_Client] = []
        self._loops: dict[int, _Loop] = {}
        #: (node, loop) -> its link
        self._loop_links: dict[tuple[str, int], int] = {}
        #: by (its client's prefix, flow id)
        self._flows: dict[tuple[str, str], _Flow] = {}
        self._client_numbers = itertools.count(1)
        self._heartbeats = itertools.count(1)
        self._capacity: dict[JobKind, int] = {}
        self._nodes_live = 0
        self._loops_live = 0
        self._now = 0.0
        #: totals since start, for metrics: jobs by how they ended, attempts sent to
        #: nodes, attempts lost with a node, jobs refused at submission
        self.counts: dict[str, int] = dict.fromkeys(
            ("submitted", "refused", "answered_held", "attempts_sent", "attempts_lost",
             *_FINISHED_KEYS.values()), 0)
        #: metrics hooks (``--http`` sets them; None costs nothing per job): seconds from
        #: a job's submission to its first attempt being sent, and a finished job's
        #: seconds from its last attempt being sent to its end
        self.on_dispatched: Callable[[float], None] | None = None
        self.on_finished: Callable[[float], None] | None = None

    # -- links ------------------------------------------------------------------------

    def client_joined(self, link: int, now: float) -> list[Output]:
        self._now = now
        self._clients[link] = _Client(link, f"c{next(self._client_numbers)}/", now)
        return [Send(link, ClusterInfo(dict(self._capacity), self._nodes_live,
                                       self._loops_live))]

    def node_joined(self, link: int, first: Message, now: float) -> list[Output]:
        """A node's link is up and ``first`` is what it sent first (``Register``)."""
        self._now = now
        if type(first) is not Register:
            return self._refuse(link, "protocol",
                                f"a node's first message must be Register, not "
                                f"{type(first).__name__}")
        key = (first.node, first.loop)
        if key in self._loop_links:
            return self._refuse(link, "duplicate-node",
                                f"loop {first.loop} of a node named {first.node!r} is "
                                f"connected already: give each node a name of its own "
                                f"(--name)")
        # known first, so attempts waiting for a slot can be sent to it at once
        self._loops[link] = _Loop(link, first.node, first.loop, dict(first.capacity))
        self._loop_links[key] = link
        try:
            out = self._run([], [NodeRegistered(first.node, first.loop, first.loops,
                                                dict(first.capacity), now)])
        except ValueError as exc:  # checked before anything changed (handle is atomic)
            del self._loops[link], self._loop_links[key]
            return self._refuse(link, "register", str(exc))
        return out + self._capacity_changed()

    def link_closed(self, link: int, now: float) -> list[Output]:
        self._now = now
        client = self._clients.pop(link, None)
        if client is not None:
            if client.session is not None and not client.leaving:
                client.link, client.away_since = None, now  # away: rule 5
                return []
            return self._client_gone(client, now)
        lp = self._loops.pop(link, None)
        if lp is None:
            return []
        del self._loop_links[(lp.node, lp.loop)]
        if self.cluster.status(lp.node) is None:
            return self._capacity_changed()
        still = any(other.node == lp.node for other in self._loops.values())
        ev: ClusterEvent = (LoopDied(lp.node, lp.loop, now) if still
                            else NodeDisconnected(lp.node, now))
        return self._run([], [ev]) + self._capacity_changed()

    def message(self, link: int, msg: Message, now: float,
                found: Mapping[str, JobOutcome] | None = None) -> list[Output]:
        """A message arrived on a link (the transport has checked its direction).

        :param found: for a ``Submit`` on a link ``resumed_session`` names, the
            succeeded outcomes the daemon's store holds for its job ids
        """
        self._now = now
        client = self._clients.get(link)
        if client is not None:
            client.last_heard = now
            return self._from_client(client, msg, now, found)
        lp = self._loops.get(link)
        if lp is not None:
            return self._from_node(lp, msg, now)
        return []  # closed already (rule 6)

    def tick(self, now: float) -> list[Output]:
        """Time passed: retries and rate limits may be due, nodes may be dead."""
        self._now = now
        out = self._run([Tick(now)], [Tick(now)])
        silent = self.dead_after_s * CLIENT_SILENCE_FACTOR
        for link, client in list(self._clients.items()):
            if now - client.last_heard > silent:
                out.append(Close(link, f"the client was silent for {silent:g} s"))
        for key, flow in list(self._flows.items()):
            if flow.ended_at is not None and now - flow.ended_at >= KEEP_FLOWS_S:
                del self._flows[key]
        for client in list(self._sessions.values()):
            if client.away_since is not None and now - client.away_since >= client.keep_s:
                out += self._client_gone(client, now)
        return out + self._capacity_changed()

    def restore(self, sessions: Iterable[str],
                flows: Iterable[tuple[str, FlowStatus, float | None]], now: float) -> None:
        """After a restart: the sessions a store holds outcomes or flows of, kept as if
        their clients were away (rule 5), and their flows (``ended_at`` in Unix time)."""
        self._now = now
        flows = list(flows)
        for session in {*sessions, *(f[0] for f in flows)}:
            client = _Client(None, f"c{next(self._client_numbers)}/", now)
            client.session, client.fresh, client.resumed = session, False, True
            client.away_since = now
            self._sessions[session] = client
        for session, status, ended_at in flows:
            client = self._sessions[session]
            flow = self._flows[(client.prefix, status.flow_id)] = _Flow(status, client)
            if ended_at is not None:
                flow.ended_at = ended_at - self.wall_offset

    def resumed_session(self, link: int) -> str | None:
        """The session of the client on ``link`` if its jobs sent again may have
        succeeded already (the daemon then looks them up: ``message(found=)``)."""
        client = self._clients.get(link)
        return client.session if client is not None and client.resumed else None

    def heartbeat(self) -> list[Output]:
        """One ``Heartbeat`` on every link (the daemon calls this every second)."""
        seq = next(self._heartbeats)
        return [Send(link, Heartbeat(seq)) for link in (*self._clients, *self._loops)]

    def loops_of(self, node: str) -> int:
        """How many of the node's loops have a link registered now."""
        return sum(1 for lp in self._loops.values() if lp.node == node)

    def has_link(self, link: int) -> bool:
        """Whether the link is a client's or a registered loop's."""
        return link in self._clients or link in self._loops

    def next_wake(self) -> float | None:
        wakes = [w for w in (self.scheduler.next_wake(), self.cluster.next_wake())
                 if w is not None]
        return min(wakes) if wakes else None

    def status(self) -> StatusReply:
        """What ``asyncjobs status`` shows (request id 0: the caller sets it)."""
        nodes = tuple(
            NodeInfo(n["name"], n["alive"], n["loops"], n["slots_used"], n["slots_total"],
                     n["last_heartbeat_s"])
            for n in self.cluster.to_dict()["nodes"]
        )
        return StatusReply(0, nodes, tuple(f.status for f in self._flows.values()))

    def to_dict(self) -> dict[str, Any]:
        """The coordinator's state as plain data (``--http``'s ``/state``)."""
        return {
            **self.status().to_json(),
            "jobs_active": len(self._jobs), "clients": len(self._clients),
            "sessions_away": sum(1 for c in self._sessions.values() if c.link is None),
            "loops": len(self._loops), "attempts_waiting": self.cluster.waiting,
            "stale_results": self.cluster.stale_results,
            "capacity": {k.value: n for k, n in self._capacity.items()},
            "counts": dict(self.counts),
        }

    # -- clients ----------------------------------------------------------------------

    def _from_client(self, client: _Client, msg: Message, now: float,
                     found: Mapping[str, JobOutcome] | None) -> list[Output]:
        kind = type(msg)
        if kind is Attach:
            assert isinstance(msg, Attach)
            return self._attach(client, msg.session, min(msg.keep_s, SESSION_KEEP_S), now)
        if kind is not Heartbeat and kind is not StatusRequest:
            client.fresh = False
        if kind is Submit:
            assert isinstance(msg, Submit)
            return self._submit(client, msg.jobs, now, found)
        if kind is Cancel:
            assert isinstance(msg, Cancel)
            ids = [client.prefix + j for j in msg.job_ids]
            events: list[Event] = [CancelRequested(g, msg.reason, now) for g in ids
                                   if g in client.jobs]
            return self._run(events, [])
        if kind is DeclareLimits:
            assert isinstance(msg, DeclareLimits)
            scope = client.prefix + msg.scope
            link = client.link
            assert link is not None
            if scope in client.scopes:
                if client.resumed and client.scopes[scope] == dict(msg.limits):
                    return []  # sent again by a client that came back
                return [Send(link, Error("limits", f"scope {msg.scope!r} is "
                                         "declared already"))]
            try:
                out = self._run([LimitsDeclared(scope, dict(msg.limits), now)], [])
            except ValueError as exc:
                return [Send(link, Error("limits", str(exc)))]
            client.scopes[scope] = dict(msg.limits)
            client.limits.update(f"{scope}:{name}" for name in msg.limits)
            return out
        if kind is ReleaseLimits:
            assert isinstance(msg, ReleaseLimits)
            return self._release(client, client.prefix + msg.scope, now)
        if kind is FlowStatus:
            assert isinstance(msg, FlowStatus)
            key = (client.prefix, msg.flow_id)
            flow = self._flows.get(key)
            if flow is None:
                flow = self._flows[key] = _Flow(msg, client)
            flow.status = msg
            flow.ended_at = None if msg.state == "running" else now
            return self._saved(flow)
        assert client.link is not None
        if kind is StatusRequest:
            assert isinstance(msg, StatusRequest)
            return [Send(client.link, replace(self.status(), request_id=msg.request_id))]
        if kind is Goodbye:
            client.leaving = True
            return []
        if kind is FlowSubmit:
            return [Send(client.link, Error(
                "unsupported", "this coordinator does not take whole flows: a client plans "
                "and follows its flow and submits its jobs (asyncjobs run --connect)"))]
        return []  # Heartbeat; Error: the client says what it disliked

    def _attach(self, client: _Client, session: str, keep_s: float, now: float
                ) -> list[Output]:
        link = client.link
        assert link is not None
        if client.session is not None or not client.fresh:
            return self._refuse(link, "protocol", "Attach comes first on a link, and once")
        kept = self._sessions.get(session)
        if kept is None:
            client.session, client.keep_s = session, keep_s
            self._sessions[session] = client
            return []
        if kept.link is not None:
            return self._refuse(link, "session-busy",
                                f"session {session!r} is in use by another client")
        # the kept session takes this link; the fresh client made for it had nothing yet
        self._clients[link] = kept
        kept.link, kept.away_since, kept.last_heard = link, None, now
        kept.resumed, kept.fresh, kept.keep_s = True, False, keep_s
        return []

    def _submit(self, client: _Client, specs: tuple[JobSpec, ...], now: float,
                found: Mapping[str, JobOutcome] | None = None) -> list[Output]:
        events: list[Event] = []
        refused: list[JobOutcome] = []
        seen: set[str] = set()
        prefix, jobs, mine = client.prefix, self._jobs, client.jobs
        resumed = client.resumed
        answered: list[JobOutcome] = []
        for spec in specs:
            gid = prefix + spec.job_id
            if resumed:
                if gid in mine and gid not in seen:
                    continue  # still running: adopted, answered when it ends
                done = client.held.get(spec.job_id) or (found or {}).get(spec.job_id)
                if done is not None:
                    answered.append(done)
                    continue
            if gid in jobs or gid in seen:
                refused.append(_refused(spec, f"job id {spec.job_id!r} is in use"))
                continue
            limits: tuple[str, ...] = ()
            if spec.limits:  # most jobs name none: no tuple, no list built for them
                limits = tuple(prefix + name for name in spec.limits)
                unknown = [n for n in spec.limits if prefix + n not in client.limits]
                if unknown:
                    refused.append(_refused(spec, f"job {spec.job_id!r} names limits "
                                                  f"never declared: {', '.join(unknown)}"))
                    continue
                if spec.weight != 1:
                    heavy = self._too_heavy(spec, limits)
                    if heavy:
                        refused.append(_refused(spec, heavy))
                        continue
            seen.add(gid)
            jobs[gid] = _Job(client, spec, spec.kind or JobKind.IO, now)
            mine.add(gid)
            events.append(JobSubmitted(
                gid, limits, 0 if spec.retries is None else spec.retries,
                1.0 if spec.backoff_s is None else spec.backoff_s, now, weight=spec.weight))
        client.outcomes.extend(answered)
        client.outcomes.extend(refused)
        self.counts["submitted"] += len(events)
        self.counts["refused"] += len(refused)
        self.counts["answered_held"] += len(answered)
        return self._run(events, [])

    def _too_heavy(self, spec: JobSpec, limits: tuple[str, ...]) -> str | None:
        """Why a job's weight could never be held by a limit it names, if it could not
        (the scheduler would refuse the whole batch for it)."""
        for name, full in zip(spec.limits, limits, strict=True):
            most = self.scheduler.limits[full].most()
            if most is not None and spec.weight > most:
                return (f"job {spec.job_id!r} holds {spec.weight} units of limit "
                        f"{name!r}, which allows {most} at once: it could never start")
        return None

    def _release(self, client: _Client, scope: str, now: float) -> list[Output]:
        if scope not in client.scopes:
            return []
        del client.scopes[scope]
        client.limits = {n for n in client.limits if not n.startswith(scope + ":")}
        return self._run([LimitsReleased(scope, now)], [])

    def _client_gone(self, client: _Client, now: float) -> list[Output]:
        events: list[Event] = [CancelRequested(g, "the client disconnected", now)
                               for g in sorted(client.jobs)]
        out = self._run(events, [])
        for scope in sorted(client.scopes):
            out += self._run([LimitsReleased(scope, now)], [])
        for flow in self._flows.values():
            if flow.client is client and flow.ended_at is None:
                flow.status = replace(flow.status, state="lost")
                flow.ended_at = now
                out += self._saved(flow)
        if client.session is not None:
            del self._sessions[client.session]
            out.append(Forget(client.session))
        return out

    def _saved(self, flow: _Flow) -> list[Output]:
        session = flow.client.session
        if session is None:
            return []
        ended = None if flow.ended_at is None else flow.ended_at + self.wall_offset
        return [SaveFlow(session, flow.status, ended)]

    # -- nodes ------------------------------------------------------------------------

    def _from_node(self, lp: _Loop, msg: Message, now: float) -> list[Output]:
        kind = type(msg)
        if kind is Result:
            assert isinstance(msg, Result)
            held = {(r.job_id, r.attempt): r for r in msg.results}
            evs: list[ClusterEvent] = [AttemptEnded(lp.node, r.job_id, r.attempt, now)
                                       for r in msg.results]
            return self._run([], evs, held)
        if kind is Heartbeat:
            return self._run([], [HeartbeatReceived(lp.node, now)])
        if kind is Drain:
            assert isinstance(msg, Drain)
            returned = tuple((r.job_id, r.attempt) for r in msg.returned)
            return self._run([], [NodeDraining(lp.node, returned, now)]) + \
                self._capacity_changed()
        if kind is Register:
            return self._refuse(lp.link, "protocol", "a loop registers once per link")
        return []  # Goodbye, Error: the link closes next

    # -- the wiring (core.nodes' table) -------------------------------------------------

    def _run(self, sched: list[Event], clus: list[ClusterEvent],
             held: dict[tuple[str, int], AttemptResult] | None = None) -> list[Output]:
        """Feed both states until neither has anything for the other; return what to
        send. ``held`` are results that arrived, recorded only if the cluster says so."""
        out: list[Output] = []
        assigns: dict[int, list[AttemptSpec]] = {}
        cancels: dict[int, list[str]] = {}
        now = self._now
        wall = now + self.wall_offset
        while sched or clus:
            if sched:
                batch, sched = sched, []
                for cmd in self.scheduler.handle(*batch):
                    if type(cmd) is JobFinished:
                        self._finished(cmd, wall)
                        clus.append(JobDone(cmd.job_id, now))
                    elif type(cmd) is StartAttempt:
                        job = self._jobs[cmd.job_id]
                        clus.append(AttemptReady(cmd.job_id, cmd.attempt, job.kind, now,
                                                 weight=job.spec.weight))
                    else:
                        assert type(cmd) is CancelAttempt
                        where = self.cluster.where(cmd.job_id, cmd.attempt)
                        link = None if where is None else self._loop_links.get(where)
                        if link is None:
                            sched.append(AttemptCancelled(cmd.job_id, cmd.attempt, now))
                        else:
                            cancels.setdefault(link, []).append(cmd.job_id)
            if clus:
                batch_c, clus = clus, []
                for ccmd in self.cluster.handle(*batch_c):
                    # most frequent first: a result per job, an assign per loop and batch
                    if isinstance(ccmd, RecordResult):
                        assert held is not None
                        r = held[(ccmd.job_id, ccmd.attempt)]
                        sched.append(
                            AttemptSucceeded(r.job_id, r.attempt, r.value, now)
                            if r.error is None
                            else AttemptFailed(r.job_id, r.attempt, _located(r, ccmd.node),
                                               now))
                    elif isinstance(ccmd, SendAssign):
                        link = self._loop_links.get((ccmd.node, ccmd.loop))
                        specs = assigns.setdefault(-1 if link is None else link, [])
                        self.counts["attempts_sent"] += len(ccmd.attempts)
                        jobs = self._jobs
                        dispatched = self.on_dispatched
                        for job_id, attempt in ccmd.attempts:
                            job = jobs[job_id]
                            job.node, job.started_s = ccmd.node, wall
                            if dispatched is not None and attempt == 1:
                                dispatched(now - job.submitted)
                            s = job.spec
                            specs.append(AttemptSpec(job_id, attempt, s.target, s.args,
                                                     s.kwargs, s.kind, s.timeout_s,
                                                     s.weight))
                    elif isinstance(ccmd, RequeueLost):
                        self.counts["attempts_lost"] += 1
                        sched.append(AttemptLost(ccmd.job_id, ccmd.attempt, ccmd.error, now))
                    elif isinstance(ccmd, FailJob):
                        self.counts["attempts_lost"] += 1
                        error = replace(ccmd.error, retryable=False)
                        sched.append(AttemptFailed(ccmd.job_id, ccmd.attempt, error, now))
                    else:
                        assert isinstance(ccmd, DeclareNodeDead)
                        out.extend(Close(lp.link, f"node {ccmd.node} was silent for more "
                                                  f"than {self.dead_after_s:g} s")
                                   for lp in list(self._loops.values())
                                   if lp.node == ccmd.node)
        assigns.pop(-1, None)  # a loop whose link closed in this very batch: it is lost
        out.extend(Send(link, Assign(tuple(specs))) for link, specs in assigns.items())
        out.extend(Send(link, Cancel(tuple(ids))) for link, ids in cancels.items())
        if self._unrecorded:
            for client in self._unrecorded:
                assert client.session is not None
                out.append(Record(client.session, client.records))
                client.records = []
            self._unrecorded.clear()
        for link, client in self._clients.items():
            while client.outcomes:
                part = client.outcomes[:OUTCOMES_PER_FRAME]
                del client.outcomes[:OUTCOMES_PER_FRAME]
                out.append(Send(link, Outcome(tuple(part))))
        return out

    def _finished(self, cmd: JobFinished, wall: float) -> None:
        job = self._jobs.pop(cmd.job_id)
        self.counts[_FINISHED_KEYS[cmd.status]] += 1
        if self.on_finished is not None and job.started_s is not None:
            self.on_finished(wall - job.started_s)
        client = job.client
        client.jobs.discard(cmd.job_id)
        link, session = client.link, client.session
        if session is None:
            if link is None or self._clients.get(link) is not client:
                return  # the client went away
        elif self._sessions.get(session) is not client:
            return  # the session ended
        outcome = JobOutcome(
            job.spec.job_id, cmd.status, cmd.result, cmd.error, cmd.attempts, job.node,
            job.started_s, wall if job.started_s is not None else None)
        if session is not None and cmd.status is JobStatus.SUCCEEDED:
            if self._recording:
                if not client.records:
                    self._unrecorded.append(client)
                client.records.append(outcome)
            if link is None:
                client.held[outcome.job_id] = outcome
        if link is not None:
            client.outcomes.append(outcome)

    def _capacity_changed(self) -> list[Output]:
        """``ClusterInfo`` to every client when the live nodes' capacity changed."""
        total: dict[JobKind, int] = {}
        nodes: set[str] = set()
        loops = 0
        for lp in self._loops.values():
            if self.cluster.status(lp.node) in (NodeStatus.JOINING, NodeStatus.ALIVE):
                nodes.add(lp.node)
                loops += 1
                for kind, n in lp.capacity.items():
                    total[kind] = total.get(kind, 0) + n
        if (total == self._capacity and len(nodes) == self._nodes_live
                and loops == self._loops_live):
            return []
        self._capacity, self._nodes_live, self._loops_live = total, len(nodes), loops
        return [Send(link, ClusterInfo(dict(total), len(nodes), loops))
                for link in self._clients]

    def _refuse(self, link: int, code: str, message: str) -> list[Output]:
        return [Send(link, Error(code, message)), Close(link, message)]


def _refused(spec: JobSpec, message: str) -> JobOutcome:
    return JobOutcome(spec.job_id, JobStatus.FAILED, None,
                      ErrorInfo("ValueError", message, retryable=False), 0)


def _located(r: AttemptResult, node: str) -> ErrorInfo:
    assert r.error is not None
    return r.error if r.error.where else replace(r.error, where=node)
