"""The coordinator's logic without a socket: messages in, messages out."""

from __future__ import annotations

import random
from typing import Any

import pytest

from asyncjobs.core.coordination import Close, Coordination, Send
from asyncjobs.core.policy import LimitSpec
from asyncjobs.model import ErrorInfo, JobKind, JobStatus
from asyncjobs.protocol.messages import (
    Assign,
    AttemptRef,
    AttemptResult,
    AttemptSpec,
    Cancel,
    ClusterInfo,
    DeclareLimits,
    Drain,
    Error,
    FlowStatus,
    Heartbeat,
    JobOutcome,
    JobSpec,
    Outcome,
    Register,
    ReleaseLimits,
    Result,
    StatusRequest,
    Submit,
)

IO, CPU = JobKind.IO, JobKind.CPU
WALL = 1_700_000_000.0


class Harness:
    """One ``Coordination`` and what it sent to each link."""

    def __init__(self) -> None:
        self.c = Coordination(dead_after_s=5.0, wall_offset=WALL, rng=random.Random(1))
        self.now = 0.0
        self.sent: dict[int, list[Any]] = {}
        self.closed: dict[int, str] = {}

    def _take(self, outputs: list[Send | Close]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                self.sent.setdefault(out.link, []).append(out.msg)
            else:
                self.closed[out.link] = out.reason

    def node(self, link: int, name: str, loop: int = 0, loops: int = 1,
             capacity: dict[JobKind, int] | None = None) -> None:
        reg = Register(name, loop, loops, capacity or {IO: 2, CPU: 1})
        self._take(self.c.node_joined(link, reg, self.now))

    def client(self, link: int) -> None:
        self._take(self.c.client_joined(link, self.now))

    def msg(self, link: int, msg: Any) -> None:
        self._take(self.c.message(link, msg, self.now))

    def close(self, link: int) -> None:
        self._take(self.c.link_closed(link, self.now))

    def tick(self, to: float) -> None:
        self.now = to
        self._take(self.c.tick(to))

    def take(self, link: int, kind: type | None = None) -> list[Any]:
        msgs = self.sent.pop(link, [])
        return [m for m in msgs if kind is None or isinstance(m, kind)]

    def assigned(self, link: int) -> list[tuple[str, int]]:
        return [(a.job_id, a.attempt) for m in self.take(link, Assign) for a in m.attempts]

    def assigned_specs(self, link: int) -> list[AttemptSpec]:
        return [a for m in self.take(link, Assign) for a in m.attempts]

    def outcomes(self, link: int) -> dict[str, JobOutcome]:
        return {o.job_id: o for m in self.take(link, Outcome) for o in m.jobs}


def spec(job_id: str, kind: JobKind = IO, **kw: Any) -> JobSpec:
    return JobSpec(job_id, "tests.jobs:add", (1, 2), None, kind, **kw)


def ok(job_id: str, attempt: int = 1, value: Any = 3) -> AttemptResult:
    return AttemptResult(job_id, attempt, value, None, 0.01)


def test_a_client_learns_the_capacity_then_its_job_runs_on_a_node_and_comes_back() -> None:
    h = Harness()
    h.client(1)
    assert h.take(1) == [ClusterInfo({}, 0)]
    h.node(10, "n1")
    assert h.take(1) == [ClusterInfo({IO: 2, CPU: 1}, 1, 1)]
    h.msg(1, Submit((spec("a"),)))
    (assign,) = h.take(10, Assign)
    (att,) = assign.attempts
    assert (att.job_id, att.attempt, att.target, att.args) == ("c1/a", 1, "tests.jobs:add",
                                                               (1, 2))
    h.now = 0.5
    h.msg(10, Result((ok("c1/a"),)))
    (out,) = h.outcomes(1).values()
    assert (out.job_id, out.status, out.value, out.attempts, out.node) == (
        "a", JobStatus.SUCCEEDED, 3, 1, "n1")
    assert out.started_s == WALL and out.ended_s == WALL + 0.5


def test_two_clients_ids_and_limit_scopes_never_meet() -> None:
    h = Harness()
    h.node(10, "n1", capacity={IO: 10})
    h.client(1)
    h.client(2)
    for link in (1, 2):
        h.msg(link, DeclareLimits("flow1", {"api": LimitSpec(1, None)}))
        h.msg(link, Submit((spec("a", limits=("flow1:api",)),
                            spec("b", limits=("flow1:api",)))))
    # each client's limit of 1 holds one of its jobs back: two pools, one job each
    assert sorted(h.assigned(10)) == [("c1/a", 1), ("c2/a", 1)]
    h.msg(10, Result((ok("c1/a"), ok("c2/a"))))
    assert set(h.outcomes(1)) == {"a"} and set(h.outcomes(2)) == {"a"}
    assert sorted(h.assigned(10)) == [("c1/b", 1), ("c2/b", 1)]


def test_a_named_limit_holds_across_nodes() -> None:
    h = Harness()
    h.node(10, "n1", capacity={IO: 10})
    h.node(11, "n2", capacity={IO: 10})
    h.client(1)
    h.msg(1, DeclareLimits("f", {"api": LimitSpec(2, None)}))
    h.msg(1, Submit(tuple(spec(f"j{i}", limits=("f:api",)) for i in range(6))))
    running = h.assigned(10) + h.assigned(11)
    assert len(running) == 2  # the limit is cluster-wide, not per node


def test_a_chunk_holds_its_weight_of_a_limit_and_one_too_heavy_fails_alone() -> None:
    h = Harness()
    h.node(10, "n1", capacity={IO: 100})
    h.client(1)
    h.msg(1, DeclareLimits("f", {"api": LimitSpec(10, None)}))
    h.msg(1, Submit((spec("c1", limits=("f:api",), weight=6),
                     spec("c2", limits=("f:api",), weight=6),
                     spec("big", limits=("f:api",), weight=11))))
    outs = h.outcomes(1)
    assert set(outs) == {"big"} and "allows 10 at once" in outs["big"].error.message
    (sent,) = h.assigned_specs(10)
    assert (sent.job_id, sent.weight) == ("c1/c1", 6)  # c2 waits: 6 + 6 > 10
    h.msg(10, Result((ok("c1/c1"),)))
    assert [s.job_id for s in h.assigned_specs(10)] == ["c1/c2"]


def test_a_job_that_cannot_be_taken_fails_alone() -> None:
    h = Harness()
    h.node(10, "n1")
    h.client(1)
    h.msg(1, Submit((spec("a"), spec("a"), spec("b", limits=("nope:api",)), spec("c"))))
    outs = h.outcomes(1)
    assert outs["a"].status is JobStatus.FAILED and "in use" in outs["a"].error.message
    assert outs["b"].status is JobStatus.FAILED and "never declared" in outs["b"].error.message
    assert sorted(h.assigned(10)) == [("c1/a", 1), ("c1/c", 1)]


def test_a_node_that_dies_loses_its_attempts_to_another_node() -> None:
    h = Harness()
    h.node(10, "n1", capacity={IO: 1})
    h.client(1)
    h.msg(1, Submit((spec("a"),)))
    assert h.assigned(10) == [("c1/a", 1)]
    h.node(11, "n2", capacity={IO: 1})
    h.close(10)
    assert h.assigned(11) == [("c1/a", 2)]
    h.msg(11, Result((ok("c1/a", 2),)))
    out = h.outcomes(1)["a"]
    assert out.status is JobStatus.SUCCEEDED and out.node == "n2" and out.attempts == 2


def test_a_late_result_of_a_fenced_attempt_is_ignored() -> None:
    h = Harness()
    h.node(10, "n1", loops=2, capacity={IO: 1})
    h.node(11, "n1", loop=1, loops=2, capacity={IO: 1})
    h.client(1)
    h.msg(1, Submit((spec("a"),)))
    first = h.assigned(10) + h.assigned(11)
    assert first == [("c1/a", 1)]
    lost_link = 10 if h.c.cluster.where("c1/a", 1) == ("n1", 0) else 11
    other = 21 - lost_link
    h.close(lost_link)  # a loop died: its node lives on, the attempt runs again
    assert h.assigned(other) == [("c1/a", 2)]
    h.msg(other, Result((ok("c1/a", 1, "stale"), ok("c1/a", 2, "fresh"))))
    assert h.outcomes(1)["a"].value == "fresh"
    assert h.c.cluster.stale_results == 1


def test_a_job_that_killed_three_nodes_fails_naming_them() -> None:
    h = Harness()
    h.client(1)
    h.msg(1, Submit((spec("killer", retries=0),)))
    for i in range(3):
        h.node(10 + i, f"n{i}")
        assert h.assigned(10 + i) == [("c1/killer", i + 1)]
        h.close(10 + i)
    out = h.outcomes(1)["killer"]
    assert out.status is JobStatus.FAILED and out.error.type_name == "KilledNodes"
    assert all(f"n{i}" in out.error.message for i in range(3))


def test_a_silent_node_is_declared_dead_and_its_links_closed() -> None:
    h = Harness()
    h.node(10, "n1")
    h.client(1)
    h.msg(1, Submit((spec("a"),)))
    h.tick(3.0)
    h.msg(10, Heartbeat(1))
    h.tick(7.0)
    assert 10 not in h.closed  # heard at 3.0
    h.tick(8.5)
    assert "silent" in h.closed[10]
    reply = h.c.status()
    assert [(n.name, n.alive) for n in reply.nodes] == [("n1", False)]


def test_cancelling_a_running_job_reaches_its_node_and_answers_cancelled() -> None:
    h = Harness()
    h.node(10, "n1")
    h.client(1)
    h.msg(1, Submit((spec("a"),)))
    h.take(10)
    h.msg(1, Cancel(("a",)))
    assert h.take(10, Cancel) == [Cancel(("c1/a",))]
    assert h.outcomes(1)["a"].status is JobStatus.CANCELLED
    # the node's answer frees the slot and changes nothing else
    h.msg(10, Result((AttemptResult("c1/a", 1, None, ErrorInfo("CancelledError", "x")),)))
    h.msg(1, Submit((spec("b"),)))
    assert h.assigned(10) == [("c1/b", 1)]


def test_a_client_that_goes_away_cancels_its_jobs_on_the_nodes() -> None:
    h = Harness()
    h.node(10, "n1")
    h.client(1)
    h.msg(1, FlowStatus("f1", "jobs.yaml", "running", 0, 2))
    h.msg(1, Submit((spec("a"),)))
    h.take(10)
    h.close(1)
    assert h.take(10, Cancel) == [Cancel(("c1/a",))]
    (flow,) = h.c.status().flows
    assert (flow.flow_id, flow.state) == ("f1", "lost")


def test_a_draining_node_gets_nothing_new_and_its_queue_runs_elsewhere() -> None:
    h = Harness()
    h.node(10, "n1", capacity={IO: 1})
    h.client(1)
    h.msg(1, Submit((spec("a"), spec("b"))))
    assert h.assigned(10) == [("c1/a", 1), ("c1/b", 1)]  # one running, one prefetched
    h.msg(10, Drain((AttemptRef("c1/b", 1),)))
    h.node(11, "n2", capacity={IO: 1})
    assert h.assigned(11) == [("c1/b", 1)]  # the same attempt, not counted again
    h.msg(10, Result((ok("c1/a"),)))
    h.close(10)
    h.msg(11, Result((ok("c1/b"),)))
    outs = h.outcomes(1)
    assert {k: (o.status, o.attempts) for k, o in outs.items()} == {
        "a": (JobStatus.SUCCEEDED, 1), "b": (JobStatus.SUCCEEDED, 1)}


def test_status_lists_nodes_and_flows_for_the_request() -> None:
    h = Harness()
    h.node(10, "n1", capacity={IO: 3, CPU: 1})
    h.client(1)
    h.take(1)
    h.msg(1, FlowStatus("f1", "jobs.yaml", "succeeded", 4, 4))
    h.msg(1, StatusRequest(7))
    (reply,) = h.take(1)
    assert reply.request_id == 7
    assert [(n.name, n.alive, n.loops, n.slots_total) for n in reply.nodes] == [
        ("n1", True, 1, 4)]
    assert [(f.flow_id, f.state, f.done, f.total) for f in reply.flows] == [
        ("f1", "succeeded", 4, 4)]
    h.tick(700.0)
    assert h.c.status().flows == ()  # forgotten after 10 minutes


@pytest.mark.parametrize("first", [Heartbeat(1), Result(())])
def test_a_node_that_does_not_register_first_is_refused(first: Any) -> None:
    h = Harness()
    h._take(h.c.node_joined(10, first, 0.0))
    assert isinstance(h.take(10)[0], Error) and 10 in h.closed


def test_a_second_node_with_the_same_name_is_refused_and_the_first_keeps_serving() -> None:
    h = Harness()
    h.node(10, "n1")
    h.node(11, "n1")
    (err,) = h.take(11)
    assert err.code == "duplicate-node" and "--name" in err.message and 11 in h.closed
    h.client(1)
    h.msg(1, Submit((spec("a"),)))
    assert h.assigned(10) == [("c1/a", 1)]


def test_released_limits_refuse_new_jobs_naming_them() -> None:
    h = Harness()
    h.node(10, "n1")
    h.client(1)
    h.msg(1, DeclareLimits("f", {"api": LimitSpec(1, None)}))
    h.msg(1, ReleaseLimits("f"))
    h.msg(1, Submit((spec("a", limits=("f:api",)),)))
    assert h.outcomes(1)["a"].status is JobStatus.FAILED


def test_a_whole_flow_is_refused_with_a_reason() -> None:
    from asyncjobs.protocol.messages import FlowSubmit

    h = Harness()
    h.client(1)
    h.take(1)
    h.msg(1, FlowSubmit("f", "jobs.yaml", "jobs: {}"))
    (err,) = h.take(1)
    assert err.code == "unsupported" and "run --connect" in err.message
