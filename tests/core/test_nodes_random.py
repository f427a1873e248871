"""ClusterState under random event sequences: what a node holds (chunks counted by their
weight) never passes its slots plus prefetch, a result is never recorded twice, and a
refused batch changes nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjobs.core.nodes import (
    AttemptEnded,
    AttemptReady,
    ClusterEvent,
    ClusterState,
    FailJob,
    HeartbeatReceived,
    JobDone,
    LoopDied,
    NodeDisconnected,
    NodeDraining,
    NodeRegistered,
    RecordResult,
    RequeueLost,
    SendAssign,
    Tick,
)
from asyncjobs.model import JobKind

NODES = ("a", "b", "c")
JOBS = tuple(f"j{i}" for i in range(6))
KINDS = (JobKind.IO, JobKind.CPU)
PREFETCH = 1


class Model:
    """What the nodes hold, seen only through the commands and the events we sent."""

    def __init__(self) -> None:
        self.attempt: dict[str, int] = dict.fromkeys(JOBS, 0)
        self.kind: dict[tuple[str, int], JobKind] = {}
        self.weight: dict[tuple[str, int], int] = {}
        self.capacity: dict[tuple[str, int], dict[JobKind, int]] = {}
        #: (node, loop) -> attempts sent there and not ended, lost or handed back
        self.held: dict[tuple[str, int], set[tuple[str, int]]] = {}
        self.recorded: set[tuple[str, int]] = set()
        self.now = 0.0

    def forget(self, key: tuple[str, int], node: str | None = None) -> None:
        for (name, _), keys in self.held.items():
            if node is None or name == node:
                keys.discard(key)


def draw_event(data: st.DataObject, model: Model) -> ClusterEvent:
    model.now += data.draw(st.sampled_from([0.0, 0.5, 2.0, 6.0]))
    now = model.now
    node = data.draw(st.sampled_from(NODES))
    what = data.draw(st.sampled_from(
        ["register", "ready", "ready", "ready", "ended", "ended", "heartbeat", "drain",
         "loop-died", "disconnect", "tick", "done"]))
    if what == "register":
        loops = data.draw(st.integers(1, 2))
        cap = {k: data.draw(st.integers(0, 4)) for k in KINDS}
        return NodeRegistered(node, data.draw(st.integers(0, loops - 1)), loops, cap, now=now)
    if what == "ready":
        job = data.draw(st.sampled_from(JOBS))
        return AttemptReady(job, model.attempt[job] + 1, data.draw(st.sampled_from(KINDS)),
                            now=now, weight=data.draw(st.sampled_from([1, 1, 1, 2, 3])))
    if what == "ended":
        sent = sorted((n, k) for (n, _), keys in model.held.items() for k in keys)
        from_sent: bool = data.draw(st.booleans())
        if sent and from_sent:
            node, (job, attempt) = data.draw(st.sampled_from(sent))
            return AttemptEnded(node, job, attempt, now=now)
        job = data.draw(st.sampled_from(JOBS))
        attempt = data.draw(st.integers(max(1, model.attempt[job] - 1),
                                        max(1, model.attempt[job])))
        return AttemptEnded(node, job, attempt, now=now)
    if what == "heartbeat":
        return HeartbeatReceived(node, now=now)
    if what == "drain":
        mine = sorted(k for (n, _), keys in model.held.items() if n == node for k in keys)
        returned = data.draw(st.lists(st.sampled_from(mine), unique=True)) if mine else []
        return NodeDraining(node, tuple(returned), now=now)
    if what == "loop-died":
        return LoopDied(node, data.draw(st.integers(0, 1)), now=now)
    if what == "disconnect":
        return NodeDisconnected(node, now=now)
    if what == "done":
        return JobDone(data.draw(st.sampled_from(JOBS)), now=now)
    return Tick(now=now)


def apply(model: Model, events: list[ClusterEvent], cmds: list[Any]) -> None:
    for ev in events:
        if isinstance(ev, AttemptReady):
            model.attempt[ev.job_id] = ev.attempt
            model.kind[(ev.job_id, ev.attempt)] = ev.kind
            model.weight[(ev.job_id, ev.attempt)] = ev.weight
        elif isinstance(ev, NodeRegistered):
            model.capacity[(ev.node, ev.loop)] = ev.capacity
            model.held.setdefault((ev.node, ev.loop), set())
        elif isinstance(ev, AttemptEnded):
            model.forget((ev.job_id, ev.attempt), ev.node)  # the node holds it no more
        elif isinstance(ev, NodeDraining):
            for key in ev.returned:
                model.forget(key, ev.node)
    for cmd in cmds:
        if isinstance(cmd, SendAssign):
            model.held[(cmd.node, cmd.loop)].update(cmd.attempts)
        elif isinstance(cmd, RecordResult):
            key = (cmd.job_id, cmd.attempt)
            assert key not in model.recorded, f"{key} recorded twice"
            model.recorded.add(key)
        elif isinstance(cmd, RequeueLost | FailJob):
            model.forget((cmd.job_id, cmd.attempt))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_events_never_over_assign_nor_record_twice(data: st.DataObject) -> None:
    cluster = ClusterState(dead_after_s=5.0, prefetch_per_loop=PREFETCH, max_node_deaths=2)
    model = Model()
    for _ in range(data.draw(st.integers(1, 40))):
        events = [draw_event(data, model) for _ in range(data.draw(st.integers(1, 3)))]
        before = cluster.to_dict()
        try:
            cmds = cluster.handle(*events)
        except ValueError:
            assert cluster.to_dict() == before  # refused whole (rule 6)
            continue
        apply(model, events, cmds)
        for (node, loop), keys in model.held.items():
            for kind in KINDS:
                cap = model.capacity[(node, loop)].get(kind, 0)
                # a chunk of weight w takes w slots, all of a loop's if it has fewer
                n = sum(min(model.weight[k], cap) for k in keys if model.kind[k] is kind)
                assert n <= (cap + PREFETCH if cap else 0), (node, loop, kind, keys)
        for name in NODES:
            # the state's own books agree with what it told the nodes
            state = cluster._nodes.get(name)
            if state is None:
                continue
            for i, lp in state.loop_slots.items():
                assert sum(lp.used.values()) == sum(a.slots for a in lp.attempts.values())
                if lp.live:
                    assert set(lp.attempts) == model.held.get((name, i), set())
