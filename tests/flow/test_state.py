"""FlowState: a flow's jobs wait for their needs, and a failure skips what depends on it."""

from __future__ import annotations

import time

import pytest

from asyncjobs.errors import InvalidTransition
from asyncjobs.flow.state import (
    FlowFinished,
    FlowStarted,
    FlowState,
    JobEnded,
    SkipJob,
    StartJob,
)
from asyncjobs.model import JobStatus

S = JobStatus


@pytest.fixture
def diamond() -> FlowState:
    """a -> (b, c) -> d, and e alone."""
    return FlowState("abcde", {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()})


def test_jobs_without_needs_start_first_in_plan_order(diamond: FlowState) -> None:
    assert diamond.handle(FlowStarted()) == [StartJob("a"), StartJob("e")]


def test_a_job_starts_once_every_need_succeeded(diamond: FlowState) -> None:
    diamond.handle(FlowStarted())
    assert diamond.handle(JobEnded("a", S.SUCCEEDED)) == [StartJob("b"), StartJob("c")]
    assert diamond.handle(JobEnded("b", S.SUCCEEDED)) == []
    assert diamond.handle(JobEnded("c", S.SUCCEEDED)) == [StartJob("d")]
    diamond.handle(JobEnded("e", S.SUCCEEDED))
    assert diamond.handle(JobEnded("d", S.SUCCEEDED)) == [FlowFinished()]
    assert diamond.finished


def test_a_failure_skips_the_jobs_needing_it_and_other_branches_go_on(
    diamond: FlowState,
) -> None:
    diamond.handle(FlowStarted())
    diamond.handle(JobEnded("a", S.SUCCEEDED))
    assert diamond.handle(JobEnded("b", S.FAILED)) == [SkipJob("d", cause="b")]
    assert diamond.status["d"] is S.SKIPPED
    assert diamond.handle(JobEnded("c", S.SUCCEEDED)) == []  # d stays skipped
    assert diamond.handle(JobEnded("e", S.SUCCEEDED)) == [FlowFinished()]


def test_a_cancelled_job_skips_its_chain(diamond: FlowState) -> None:
    diamond.handle(FlowStarted())
    cmds = diamond.handle(JobEnded("a", S.CANCELLED))
    assert cmds == [SkipJob("b", "a"), SkipJob("c", "a"), SkipJob("d", "b")]


def test_a_bad_event_mid_batch_changes_nothing(diamond: FlowState) -> None:
    diamond.handle(FlowStarted())
    with pytest.raises(ValueError, match="'b' ended but it was not running"):
        diamond.handle(JobEnded("a", S.SUCCEEDED), JobEnded("b", S.SUCCEEDED),
                       JobEnded("d", S.SUCCEEDED))
    assert diamond.status == dict.fromkeys("ae", S.RUNNING) | dict.fromkeys("bcd", S.PENDING)
    with pytest.raises(ValueError, match="started twice"):
        diamond.handle(FlowStarted())
    with pytest.raises(ValueError, match="cannot end skipped"):
        diamond.handle(JobEnded("a", S.SKIPPED))
    with pytest.raises(TypeError):
        diamond.handle("nope")  # type: ignore[arg-type]


def test_transitions_outside_the_table_raise(diamond: FlowState) -> None:
    with pytest.raises(InvalidTransition):
        diamond._set_status("a", S.SUCCEEDED)


@pytest.mark.parametrize("n", [1_000, 4_000])
def test_long_chains_resolve_in_linear_time(n: int) -> None:
    names = [f"j{i}" for i in range(n)]
    state = FlowState(names, {name: (names[i - 1],) if i else () for i, name in
                              enumerate(names)})
    started = time.perf_counter()
    cmds = state.handle(FlowStarted())
    for name in names:
        assert cmds[0] == StartJob(name)
        cmds = state.handle(JobEnded(name, S.SUCCEEDED))
    assert cmds == [FlowFinished()]
    assert time.perf_counter() - started < 5  # a bound, not a benchmark: quadratic took far longer


def test_a_failure_at_the_head_of_a_long_chain_skips_it_without_recursion() -> None:
    names = [f"j{i}" for i in range(5_000)]
    state = FlowState(names, {name: (names[i - 1],) if i else () for i, name in
                              enumerate(names)})
    state.handle(FlowStarted())
    cmds = state.handle(JobEnded("j0", S.FAILED))
    assert len(cmds) == 5_000 and cmds[-1] == FlowFinished()
    assert cmds[1] == SkipJob("j2", cause="j1")
