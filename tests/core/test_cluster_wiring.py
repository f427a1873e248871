"""SchedulerState and ClusterState wired as the coordinator will wire them (the table at
the top of ``asyncjobs.core.nodes``), with fake nodes: whole runs, no loop, no socket."""

from __future__ import annotations

import random
from collections import deque

from asyncjobs.core.commands import JobFinished, StartAttempt
from asyncjobs.core.events import (
    AttemptFailed,
    AttemptLost,
    AttemptSucceeded,
    Event,
    JobSubmitted,
)
from asyncjobs.core.nodes import (
    AttemptEnded,
    AttemptReady,
    ClusterEvent,
    ClusterState,
    DeclareNodeDead,
    FailJob,
    JobDone,
    NodeDisconnected,
    NodeRegistered,
    RecordResult,
    RequeueLost,
    SendAssign,
    Tick,
)
from asyncjobs.core.policy import Limit
from asyncjobs.core.scheduler import SchedulerState
from asyncjobs.model import JobKind, JobStatus

IO = JobKind.IO


class PureCoordinator:
    """The coordinator's wiring, minus the IO: fake nodes run what they are sent, in order."""

    def __init__(self, nodes: tuple[str, ...], *, io_slots: int = 4) -> None:
        self.sched = SchedulerState({"@io": Limit()}, rng=random.Random(1))
        self.cluster = ClusterState(prefetch_per_loop=2)
        self.io_slots = io_slots
        self.now = 0.0
        #: what each fake node was sent and has not answered, oldest first
        self.on_node: dict[str, deque[tuple[str, int]]] = {}
        self.finished: dict[str, JobFinished] = {}
        self.recorded: list[tuple[str, int]] = []
        self.executions: list[tuple[str, str]] = []
        self.queue: deque[tuple[str, Event | ClusterEvent]] = deque()
        for name in nodes:
            self.start_node(name)

    def start_node(self, name: str) -> None:
        self.on_node[name] = deque()
        self.feed("cluster", NodeRegistered(name, 0, 1, {IO: self.io_slots}, now=self.now))

    def kill_node(self, name: str) -> None:
        del self.on_node[name]
        self.feed("cluster", NodeDisconnected(name, now=self.now))

    def feed(self, to: str, event: Event | ClusterEvent) -> None:
        self.queue.append((to, event))
        while self.queue:
            where, ev = self.queue.popleft()
            if where == "sched":
                for cmd in self.sched.handle(ev):  # type: ignore[arg-type]
                    if isinstance(cmd, StartAttempt):
                        self.queue.append(("cluster", AttemptReady(
                            cmd.job_id, cmd.attempt, IO, now=self.now)))
                    elif isinstance(cmd, JobFinished):
                        self.finished[cmd.job_id] = cmd
                        self.queue.append(("cluster", JobDone(cmd.job_id, now=self.now)))
            else:
                for ccmd in self.cluster.handle(ev):  # type: ignore[arg-type]
                    if isinstance(ccmd, SendAssign):
                        self.on_node[ccmd.node].extend(ccmd.attempts)
                    elif isinstance(ccmd, RecordResult):
                        self.recorded.append((ccmd.job_id, ccmd.attempt))
                        self.queue.append(("sched", AttemptSucceeded(
                            ccmd.job_id, ccmd.attempt, result=ccmd.node, now=self.now)))
                    elif isinstance(ccmd, RequeueLost):
                        self.queue.append(("sched", AttemptLost(
                            ccmd.job_id, ccmd.attempt, ccmd.error, now=self.now)))
                    elif isinstance(ccmd, FailJob):
                        self.queue.append(("sched", AttemptFailed(
                            ccmd.job_id, ccmd.attempt, ccmd.error, now=self.now)))
                    else:
                        assert isinstance(ccmd, DeclareNodeDead)

    def run_one(self, name: str) -> tuple[str, int] | None:
        """Node ``name`` runs the oldest attempt it holds and sends its result."""
        if not self.on_node.get(name):
            return None
        job_id, attempt = self.on_node[name].popleft()
        self.executions.append((job_id, name))
        self.now += 0.001
        self.feed("cluster", AttemptEnded(name, job_id, attempt, now=self.now))
        return job_id, attempt


def submit_all(coord: PureCoordinator, n: int, retries: int = 3) -> None:
    for i in range(n):
        coord.feed("sched", JobSubmitted(f"j{i}", ("@io",), retries=retries, backoff_s=0))


def test_a_node_killed_mid_run_loses_no_job_and_records_each_once() -> None:
    coord = PureCoordinator(("a", "b"))
    submit_all(coord, 2000)
    for step in range(100_000):
        if step == 500:
            late = list(coord.on_node["a"])
            coord.kill_node("a")
        if not any(coord.run_one(name) for name in sorted(coord.on_node)):
            break
    for job_id, attempt in late:  # results the dead node sent too late
        coord.feed("cluster", AttemptEnded("a", job_id, attempt, now=coord.now))
    assert len(coord.finished) == 2000
    assert all(f.status is JobStatus.SUCCEEDED for f in coord.finished.values())
    assert len(coord.recorded) == len(set(coord.recorded)) == 2000
    assert coord.cluster.to_dict()["stale_results"] == len(late) > 0
    assert {f.result for f in coord.finished.values()} == {"a", "b"}


def test_a_job_that_kills_every_node_fails_after_three_and_the_rest_succeed() -> None:
    coord = PureCoordinator(("a", "b", "c", "d"))
    submit_all(coord, 20, retries=10)
    for _ in range(10_000):
        progressed = False
        for name in sorted(coord.on_node):
            if coord.on_node[name] and coord.on_node[name][0][0] == "j3":
                coord.kill_node(name)  # j3 takes its node down with it
                coord.start_node(name)  # and the node's supervisor starts it again
                progressed = True
            elif coord.run_one(name):
                progressed = True
        if not progressed:
            break
    j3 = coord.finished.pop("j3")
    assert j3.status is JobStatus.FAILED and j3.attempts == 3
    assert j3.error is not None and j3.error.type_name == "KilledNodes"
    assert "died 3 times" in j3.error.message
    assert all(f.status is JobStatus.SUCCEEDED for f in coord.finished.values())
    assert len(coord.finished) == 19


def test_one_tick_feeds_both() -> None:
    coord = PureCoordinator(("a",))
    coord.feed("sched", Tick(now=1.0))
    coord.feed("cluster", Tick(now=10.0))
    assert coord.cluster.to_dict()["nodes"][0]["alive"] is False


def test_a_dead_nodes_jobs_run_again_even_without_retries() -> None:
    coord = PureCoordinator(("a", "b"))
    submit_all(coord, 4, retries=0)
    coord.kill_node("a")
    while any(coord.run_one(name) for name in sorted(coord.on_node)):
        pass
    assert all(f.status is JobStatus.SUCCEEDED for f in coord.finished.values())
