"""ClusterState: placement, slots, node deaths and fencing, one rule at a time (the rules
are numbered in ``asyncjobs.core.nodes``)."""

from __future__ import annotations

import pytest

from asyncjobs.core.nodes import (
    KEEP_ENDED_NODES_S,
    MAX_PREFETCH_PER_LOOP,
    STIMULUS_LOG_SIZE,
    AttemptEnded,
    AttemptReady,
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
    Tick,
)
from asyncjobs.errors import InvalidTransition
from asyncjobs.model import JobKind

IO, CPU = JobKind.IO, JobKind.CPU


def register(node: str, io: int = 2, cpu: int = 0, *, loop: int = 0, loops: int = 1,
             now: float = 0.0) -> NodeRegistered:
    return NodeRegistered(node, loop, loops, {IO: io, CPU: cpu, JobKind.THREAD: 0}, now=now)


def ready(job_id: str, attempt: int = 1, kind: JobKind = IO, now: float = 0.0) -> AttemptReady:
    return AttemptReady(job_id, attempt, kind, now=now)


@pytest.fixture
def cluster() -> ClusterState:
    return ClusterState(dead_after_s=5.0, prefetch_per_loop=1)


@pytest.fixture
def cluster_with_two_nodes(cluster: ClusterState) -> ClusterState:
    """Nodes a and b, one loop each, 2 io slots each, no cpu slot."""
    cluster.handle(register("a"), register("b"))
    return cluster


@pytest.fixture
def cluster_with_job_running_on_a(cluster_with_two_nodes: ClusterState) -> ClusterState:
    """Job j, attempt 1, sent to node a."""
    cmds = cluster_with_two_nodes.handle(ready("j"))
    assert cmds == [SendAssign("a", 0, (("j", 1),))]
    return cluster_with_two_nodes


# -- rule 1: slots plus prefetch -----------------------------------------------------------


def test_a_node_gets_no_more_than_its_slots_plus_prefetch(cluster: ClusterState) -> None:
    cluster.handle(register("a", io=2))
    cmds = cluster.handle(*(ready(f"j{i}") for i in range(5)))
    assert cmds == [SendAssign("a", 0, (("j0", 1), ("j1", 1), ("j2", 1)))]
    assert cluster.to_dict()["waiting"]["io"] == 2


def test_a_freed_slot_takes_the_next_waiting_attempt(cluster: ClusterState) -> None:
    cluster.handle(register("a", io=1, loops=1), *(ready(f"j{i}") for i in range(4)))
    cmds = cluster.handle(AttemptEnded("a", "j0", 1))
    assert cmds == [RecordResult.match(job_id="j0"), SendAssign("a", 0, (("j2", 1),))]


def test_a_node_without_slots_of_a_kind_gets_none_of_it(
        cluster_with_two_nodes: ClusterState) -> None:
    assert cluster_with_two_nodes.handle(ready("c", kind=CPU)) == []
    cmds = cluster_with_two_nodes.handle(register("z", io=0, cpu=1))
    assert cmds == [SendAssign("z", 0, (("c", 1),))]


def test_prefetch_is_at_most_16_per_loop() -> None:
    with pytest.raises(ValueError, match="prefetch_per_loop"):
        ClusterState(prefetch_per_loop=MAX_PREFETCH_PER_LOOP + 1)
    cluster = ClusterState(prefetch_per_loop=MAX_PREFETCH_PER_LOOP)
    cluster.handle(register("a", io=1, loops=2), register("a", io=1, loop=1, loops=2))
    cmds = cluster.handle(*(ready(f"j{i}") for i in range(40)))
    assert [len(c.attempts) for c in cmds if isinstance(c, SendAssign)] == [17, 17]


def test_a_chunk_takes_as_many_slots_as_its_weight(cluster: ClusterState) -> None:
    cluster.handle(register("a", io=10))
    cmds = cluster.handle(AttemptReady("c1", 1, IO, weight=6), AttemptReady("c2", 1, IO, weight=6),
                          ready("j"))
    # 6 + 6 > 10 slots + 1 prefetch: c2 waits, and so does j behind it (first come)
    assert cmds == [SendAssign("a", 0, (("c1", 1),))]
    assert cluster.to_dict()["nodes"][0]["slots_used"] == 6
    cmds = cluster.handle(AttemptEnded("a", "c1", 1))
    assert cmds == [RecordResult.match(job_id="c1"), SendAssign("a", 0, (("c2", 1), ("j", 1)))]
    assert cluster.to_dict()["nodes"][0]["slots_used"] == 7


def test_a_chunk_heavier_than_a_loop_takes_all_its_slots_once_it_is_idle(
        cluster: ClusterState) -> None:
    cluster.handle(register("a", io=4), ready("j"))
    assert cluster.handle(AttemptReady("c", 1, IO, weight=9)) == []  # j holds a slot
    cmds = cluster.handle(AttemptEnded("a", "j", 1), ready("k"))
    assert cmds == [RecordResult.match(job_id="j"), SendAssign("a", 0, (("c", 1), ("k", 1)))]
    assert cluster.to_dict()["nodes"][0]["slots_used"] == 4  # c holds 4; k is prefetched
    cluster.handle(AttemptEnded("a", "c", 1), AttemptEnded("a", "k", 1))
    assert cluster.to_dict()["nodes"][0]["slots_used"] == 0


# -- rule 2: placement ---------------------------------------------------------------------


def test_attempts_go_to_the_least_loaded_node_ties_by_name(
        cluster_with_two_nodes: ClusterState) -> None:
    cmds = cluster_with_two_nodes.handle(*(ready(f"j{i}") for i in range(4)))
    assert cmds == [SendAssign("a", 0, (("j0", 1), ("j2", 1))),
                    SendAssign("b", 0, (("j1", 1), ("j3", 1)))]


def test_load_is_the_share_of_slots_in_use(cluster: ClusterState) -> None:
    cluster.handle(register("big", io=4), register("small", io=1))
    cmds = cluster.handle(*(ready(f"j{i}") for i in range(5)))
    assert cmds == [SendAssign.match(node="big", attempts=(("j0", 1), ("j2", 1), ("j3", 1),
                                                           ("j4", 1))),
                    SendAssign.match(node="small", attempts=(("j1", 1),))]


def test_loops_of_one_node_share_its_work(cluster: ClusterState) -> None:
    cluster.handle(register("a", io=1, loops=2), register("a", io=1, loop=1, loops=2))
    cmds = cluster.handle(ready("x"), ready("y"))
    assert cmds == [SendAssign("a", 0, (("x", 1),)), SendAssign("a", 1, (("y", 1),))]


# -- rule 3: silent nodes die --------------------------------------------------------------


def test_a_silent_node_is_declared_dead_and_its_attempts_lost(
        cluster_with_job_running_on_a: ClusterState) -> None:
    cluster = cluster_with_job_running_on_a
    cluster.handle(HeartbeatReceived("b", now=4.0))
    assert cluster.handle(Tick(now=5.0)) == []
    cmds = cluster.handle(Tick(now=5.5))
    assert cmds == [DeclareNodeDead("a"),
                    RequeueLost.match(job_id="j", attempt=1, reason="node-dead",
                                      nodes_killed=("a",))]
    lost = cmds[1]
    assert isinstance(lost, RequeueLost) and lost.error.retryable
    assert cluster.status("a") is NodeStatus.DEAD
    assert cluster.status("b") is NodeStatus.ALIVE


def test_heartbeats_keep_a_node_alive(cluster_with_two_nodes: ClusterState) -> None:
    for t in range(1, 20):
        cluster_with_two_nodes.handle(HeartbeatReceived("a", now=t), HeartbeatReceived(
            "b", now=t), Tick(now=t + 0.5))
    assert cluster_with_two_nodes.status("a") is NodeStatus.ALIVE
    assert cluster_with_two_nodes.next_wake() == 24.0


def test_a_lost_attempt_runs_again_elsewhere_as_a_new_attempt(
        cluster_with_job_running_on_a: ClusterState) -> None:
    cluster = cluster_with_job_running_on_a
    cluster.handle(NodeDisconnected("a", now=1.0))
    assert cluster.handle(ready("j", attempt=2, now=1.0)) == [SendAssign("b", 0, (("j", 2),))]


# -- rule 4: fencing -----------------------------------------------------------------------


def test_a_result_is_recorded_once(cluster_with_job_running_on_a: ClusterState) -> None:
    cluster = cluster_with_job_running_on_a
    assert cluster.handle(AttemptEnded("a", "j", 1)) == [RecordResult("a", "j", 1)]
    assert cluster.handle(AttemptEnded("a", "j", 1)) == []
    assert cluster.to_dict()["stale_results"] == 1


def test_a_late_result_from_a_dead_node_is_stale(
        cluster_with_job_running_on_a: ClusterState) -> None:
    cluster = cluster_with_job_running_on_a
    cluster.handle(HeartbeatReceived("b", now=5.0), Tick(now=6.0))
    cluster.handle(ready("j", attempt=2, now=6.0))
    assert cluster.handle(AttemptEnded("a", "j", 1, now=7.0)) == []
    assert cluster.handle(AttemptEnded("b", "j", 2, now=7.0)) == [RecordResult("b", "j", 2)]
    assert cluster.to_dict()["stale_results"] == 1


def test_a_result_from_another_node_is_stale(
        cluster_with_job_running_on_a: ClusterState) -> None:
    assert cluster_with_job_running_on_a.handle(AttemptEnded("b", "j", 1)) == []
    assert cluster_with_job_running_on_a.to_dict()["stale_results"] == 1


def test_a_result_of_an_outdated_attempt_is_stale_and_frees_its_slot(
        cluster: ClusterState) -> None:
    cluster = ClusterState(prefetch_per_loop=0)
    cluster.handle(register("a", io=1), ready("j"))
    cluster.handle(ready("j", attempt=2))  # the node's result for 1 never came
    assert cluster.handle(AttemptEnded("a", "j", 1)) == [SendAssign("a", 0, (("j", 2),))]
    assert cluster.to_dict()["stale_results"] == 1


# -- rule 5: a job that kills nodes ---------------------------------------------------------


def test_a_job_running_through_three_node_deaths_is_failed(cluster: ClusterState) -> None:
    cluster.handle(register("a"), register("b"), register("c", loops=2),
                   register("c", loop=1, loops=2), ready("j"))
    cmds = cluster.handle(NodeDisconnected("a"), ready("j", 2))
    assert cmds == [RequeueLost.match(nodes_killed=("a",)), SendAssign.match(node="b")]
    cmds = cluster.handle(NodeDisconnected("b"), ready("j", 3))
    assert cmds == [RequeueLost.match(nodes_killed=("a", "b")), SendAssign("c", 0, (("j", 3),))]
    cmds = cluster.handle(LoopDied("c", 0))
    assert cmds == [FailJob.match(job_id="j", attempt=3, reason="killed-nodes",
                                  nodes_killed=("a", "b", "c (loop 0)"))]
    fail = cmds[0]
    assert isinstance(fail, FailJob) and not fail.error.retryable
    assert fail.error.type_name == "KilledNodes"
    assert fail.error.message.startswith(
        "job 'j' was running on a node that died 3 times, on a, b and c (loop 0), so it is "
        "failed rather than run again, whatever its retries")
    assert "The log of c (loop 0), where it ran last" in fail.error.message


def test_a_draining_node_that_stops_is_not_a_death(cluster: ClusterState) -> None:
    cluster = ClusterState(max_node_deaths=1)
    cluster.handle(register("a"), ready("j"))
    cmds = cluster.handle(NodeDraining("a"), NodeDisconnected("a"))
    assert cmds == [RequeueLost.match(job_id="j", reason="node-stopped", nodes_killed=())]
    assert cluster.status("a") is NodeStatus.GONE


def test_job_done_forgets_its_deaths(cluster: ClusterState) -> None:
    cluster = ClusterState(max_node_deaths=2)
    cluster.handle(register("a"), register("b"), ready("j"))
    cluster.handle(NodeDisconnected("a"), JobDone("j"))
    cluster.handle(ready("j"))
    cmds = cluster.handle(NodeDisconnected("b"))
    assert cmds == [RequeueLost.match(job_id="j", nodes_killed=("b",))]


# -- rule 6: atomic handle, one door for statuses, the status dump -------------------------


def test_a_bad_event_raises_before_any_of_the_batch_applies(cluster: ClusterState) -> None:
    with pytest.raises(ValueError, match="never registered"):
        cluster.handle(register("a"), ready("j"), HeartbeatReceived("ghost"))
    assert cluster.status("a") is None and cluster.to_dict()["attempts"] == 0
    with pytest.raises(TypeError):
        cluster.handle(register("a"), "not an event")  # type: ignore[arg-type]
    assert cluster.status("a") is None


@pytest.mark.parametrize("events", [
    (register("a"), register("a")),
    (register("a", loops=2), register("a", loop=1, loops=3)),
    (register("a", loop=2, loops=2),),
    (ready("j"), ready("j")),
    (register("a"), LoopDied("a", 1)),
], ids=["loop-twice", "loops-differ", "loop-out-of-range", "ready-twice", "no-such-loop"])
def test_inconsistent_events_are_refused(cluster: ClusterState, events: tuple[object]) -> None:
    with pytest.raises(ValueError):
        cluster.handle(*events)  # type: ignore[arg-type]
    assert cluster.to_dict()["nodes"] == []


def test_a_node_joins_until_all_its_loops_registered(cluster: ClusterState) -> None:
    cluster.handle(register("a", loops=2))
    assert cluster.status("a") is NodeStatus.JOINING
    assert cluster.handle(ready("j")) == [SendAssign("a", 0, (("j", 1),))]
    cluster.handle(register("a", loop=1, loops=2))
    assert cluster.status("a") is NodeStatus.ALIVE


def test_statuses_change_only_along_the_table(cluster_with_two_nodes: ClusterState) -> None:
    node = cluster_with_two_nodes._nodes["a"]
    with pytest.raises(InvalidTransition, match="alive -> gone"):
        cluster_with_two_nodes._set_status(node, NodeStatus.GONE)


def test_a_dead_node_registering_again_starts_fresh(
        cluster_with_job_running_on_a: ClusterState) -> None:
    cluster = cluster_with_job_running_on_a
    cluster.handle(NodeDisconnected("a", now=1.0))
    cluster.handle(register("a", io=3, now=2.0))
    assert cluster.status("a") is NodeStatus.ALIVE
    assert cluster.to_dict()["nodes"][0]["slots_total"] == 3


def test_to_dict_lists_nodes_as_status_json_does(
        cluster_with_job_running_on_a: ClusterState) -> None:
    cluster = cluster_with_job_running_on_a
    cluster.handle(HeartbeatReceived("b", now=2.0), Tick(now=3.0))
    nodes = cluster.to_dict()["nodes"]
    assert [{k: n[k] for k in ("name", "alive", "loops", "slots_used", "slots_total",
                                "last_heartbeat_s")} for n in nodes] == [
        {"name": "a", "alive": True, "loops": 1, "slots_used": 1, "slots_total": 2,
         "last_heartbeat_s": 3.0},
        {"name": "b", "alive": True, "loops": 1, "slots_used": 0, "slots_total": 2,
         "last_heartbeat_s": 1.0},
    ]


def test_dead_nodes_stay_listed_ten_minutes(cluster_with_two_nodes: ClusterState) -> None:
    cluster = cluster_with_two_nodes
    cluster.handle(NodeDisconnected("a", now=1.0), Tick(now=1.0 + KEEP_ENDED_NODES_S - 0.1))
    assert [n["name"] for n in cluster.to_dict()["nodes"]] == ["a", "b"]
    assert cluster.to_dict()["nodes"][0]["alive"] is False
    cluster.handle(Tick(now=1.0 + KEEP_ENDED_NODES_S))
    assert [n["name"] for n in cluster.to_dict()["nodes"]] == ["b"]


def test_the_stimulus_log_is_bounded(cluster_with_two_nodes: ClusterState) -> None:
    for i in range(STIMULUS_LOG_SIZE + 10):
        cluster_with_two_nodes.handle(HeartbeatReceived("a", now=i, stimulus_id=f"hb-{i}"))
    log = cluster_with_two_nodes.to_dict()["log"]
    assert len(log) == STIMULUS_LOG_SIZE
    assert log[-1] == [STIMULUS_LOG_SIZE + 9, "HeartbeatReceived", f"hb-{STIMULUS_LOG_SIZE + 9}"]


# -- rule 7: draining ----------------------------------------------------------------------


def test_a_draining_node_gets_nothing_new_and_its_returns_go_uncounted(
        cluster_with_two_nodes: ClusterState) -> None:
    cluster = cluster_with_two_nodes
    cluster.handle(*(ready(f"j{i}") for i in range(6)))  # a: j0 j2 j4, b: j1 j3 j5
    cmds = cluster.handle(NodeDraining("a", returned=(("j4", 1),)))
    assert cmds == []  # b is full; j4 waits, still attempt 1
    assert cluster.status("a") is NodeStatus.DRAINING
    cmds = cluster.handle(ready("k"), AttemptEnded("b", "j1", 1), AttemptEnded("a", "j0", 1))
    assert cmds == [RecordResult.match(job_id="j1"), RecordResult.match(job_id="j0"),
                    SendAssign("b", 0, (("j4", 1),))]


# -- the coordinator's queries --------------------------------------------------------------


def test_where_names_the_loop_an_attempt_was_sent_to(
        cluster_with_job_running_on_a: ClusterState) -> None:
    assert cluster_with_job_running_on_a.where("j", 1) == ("a", 0)
    assert cluster_with_job_running_on_a.where("j", 2) is None


def test_job_done_drops_an_attempt_never_sent(cluster: ClusterState) -> None:
    cluster.handle(ready("j"), JobDone("j"))
    assert cluster.handle(register("a")) == []


def test_a_cancelled_jobs_running_attempt_is_still_recorded_once(
        cluster_with_job_running_on_a: ClusterState) -> None:
    cluster = cluster_with_job_running_on_a
    assert cluster.handle(JobDone("j")) == []
    assert cluster.handle(AttemptEnded("a", "j", 1)) == [RecordResult("a", "j", 1)]
    assert cluster.handle(AttemptEnded("a", "j", 1)) == []
    assert cluster.to_dict()["attempts"] == 0 and not cluster._latest


def test_one_tick_serves_the_scheduler_and_the_cluster() -> None:
    from asyncjobs.core.events import Tick as SchedulerTick

    assert Tick is SchedulerTick


def test_next_wake_is_when_the_quietest_node_would_be_dead(
        cluster_with_two_nodes: ClusterState) -> None:
    cluster = cluster_with_two_nodes
    cluster.handle(HeartbeatReceived("a", now=3.0))
    assert cluster.next_wake() == 5.0  # b, silent since 0
    cluster.handle(NodeDisconnected("b", now=4.0))
    assert cluster.next_wake() == 8.0
    assert ClusterState().next_wake() is None


def test_a_dead_loop_loses_its_attempts_and_takes_work_again_once_back(
        cluster: ClusterState) -> None:
    cluster.handle(register("a", io=1, loops=2), register("a", io=1, loop=1, loops=2),
                   ready("x"), ready("y"))
    cmds = cluster.handle(LoopDied("a", 1))
    assert cmds == [RequeueLost.match(job_id="y", reason="loop-died",
                                      nodes_killed=("a (loop 1)",))]
    assert cluster.status("a") is NodeStatus.ALIVE
    assert cluster.handle(ready("y", 2)) == [SendAssign("a", 0, (("y", 2),))]
    cluster.handle(register("a", io=1, loop=1, loops=2))
    assert cluster.handle(ready("z")) == [SendAssign("a", 1, (("z", 1),))]


def test_a_cancelled_jobs_attempt_lost_with_its_node_is_no_death(
        cluster_with_job_running_on_a: ClusterState) -> None:
    cluster = cluster_with_job_running_on_a
    cluster.handle(JobDone("j"))
    cmds = cluster.handle(NodeDisconnected("a"))
    assert cmds == [RequeueLost.match(job_id="j", attempt=1, nodes_killed=())]
    assert not cluster._latest and not cluster._deaths


@pytest.mark.parametrize("kw", [{"dead_after_s": 0}, {"max_node_deaths": 0},
                                {"prefetch_per_loop": -1}])
def test_settings_out_of_range_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ClusterState(**kw)  # type: ignore[arg-type]


def test_cancelled_waiting_attempts_do_not_pile_up(cluster: ClusterState) -> None:
    for i in range(1000):
        cluster.handle(ready(f"j{i}", kind=CPU), JobDone(f"j{i}"))
    assert len(cluster._pending[CPU]) <= 65
    cluster.handle(ready("last", kind=CPU))
    assert cluster.handle(register("z", io=0, cpu=1)) == [SendAssign("z", 0, (("last", 1),))]
