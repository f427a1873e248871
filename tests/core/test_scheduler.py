from __future__ import annotations

import random

import pytest

from asyncjobs.core.commands import CancelAttempt, JobFinished, StartAttempt
from asyncjobs.core.events import (
    AttemptCancelled,
    AttemptFailed,
    AttemptLost,
    AttemptSucceeded,
    CancelRequested,
    JobSubmitted,
    LimitsDeclared,
    LimitsReleased,
    Tick,
)
from asyncjobs.core.policy import Limit, LimitSpec, backoff_delay, scoped
from asyncjobs.core.scheduler import SchedulerState
from asyncjobs.errors import InvalidTransition
from asyncjobs.model import ErrorInfo, JobStatus

BOOM = ErrorInfo("ValueError", "boom")


def submit(job_id: str, *limits: str, **kw: object) -> JobSubmitted:
    return JobSubmitted(job_id, limits or ("@io",), **kw)  # type: ignore[arg-type]


def test_submitted_job_starts_at_once(sched: SchedulerState) -> None:
    assert sched.handle(submit("a")) == [StartAttempt("a", 1)]
    assert sched.status("a") is JobStatus.RUNNING


def test_success_finishes_once_and_forgets(sched: SchedulerState) -> None:
    sched.handle(submit("a"))
    cmds = sched.handle(AttemptSucceeded("a", 1, result=42))
    assert cmds == [JobFinished("a", JobStatus.SUCCEEDED, 1, 42, None)]
    assert sched.status("a") is None and sched.active == 0
    assert sched.handle(AttemptSucceeded("a", 1, result=42)) == []


def test_concurrency_limit_queues_in_order(sched: SchedulerState) -> None:
    cmds = sched.handle(*(submit(f"j{i}", "@cpu") for i in range(4)))
    assert cmds == [StartAttempt("j0", 1), StartAttempt("j1", 1)]
    assert sched.status("j2") is JobStatus.QUEUED
    assert sched.handle(AttemptSucceeded("j1", 1)) == [
        JobFinished.match(job_id="j1"), StartAttempt("j2", 1)
    ]


def test_job_holds_every_limit_it_names(sched: SchedulerState) -> None:
    cmds = sched.handle(submit("a", "@cpu", "api"), submit("b", "@cpu", "api"), submit("c", "@cpu"))
    assert cmds == [StartAttempt("a", 1), StartAttempt("c", 1)]
    cmds = sched.handle(AttemptSucceeded("a", 1))
    assert StartAttempt("b", 1) in cmds


def test_retry_waits_for_backoff_then_reruns(sched: SchedulerState) -> None:
    sched.handle(submit("a", retries=2, backoff_s=1.0, now=0.0))
    assert sched.handle(AttemptFailed("a", 1, BOOM, now=10.0)) == []
    assert sched.status("a") is JobStatus.RETRYING
    wake = sched.next_wake()
    assert wake is not None and 10.75 <= wake <= 11.25
    assert sched.handle(Tick(now=wake - 0.01)) == []
    assert sched.handle(Tick(now=wake)) == [StartAttempt("a", 2)]


def test_retries_exhausted_fail_with_last_error(sched: SchedulerState) -> None:
    sched.handle(submit("a", retries=1, backoff_s=0))
    assert sched.handle(AttemptFailed("a", 1, BOOM)) == [StartAttempt("a", 2)]
    last = ErrorInfo("KeyError", "second")
    assert sched.handle(AttemptFailed("a", 2, last)) == [
        JobFinished("a", JobStatus.FAILED, 2, None, last)
    ]


def test_unretryable_error_fails_at_once(sched: SchedulerState) -> None:
    sched.handle(submit("a", retries=5))
    err = ErrorInfo("PicklingError", "cannot pickle", retryable=False)
    assert sched.handle(AttemptFailed("a", 1, err)) == [JobFinished.match(status=JobStatus.FAILED)]


def test_backoff_grows_with_every_retry() -> None:
    rng = random.Random(1)
    for _ in range(200):
        delays = [backoff_delay(n, 0.5, rng) for n in range(1, 6)]
        assert delays == sorted(delays) and len(set(delays)) == 5
        assert 0.375 <= delays[0] <= 0.625


def test_cancel_queued_job_never_starts(sched: SchedulerState) -> None:
    sched.handle(*(submit(f"j{i}", "@cpu") for i in range(3)))
    cmds = sched.handle(CancelRequested("j2"))
    assert cmds == [JobFinished.match(job_id="j2", status=JobStatus.CANCELLED)]
    assert sched.handle(AttemptSucceeded("j0", 1)) == [JobFinished.match(job_id="j0")]


def test_cancel_running_job_keeps_its_slot_until_it_stops(sched: SchedulerState) -> None:
    sched.handle(*(submit(f"j{i}", "@cpu") for i in range(3)))
    cmds = sched.handle(CancelRequested("j0"))
    assert cmds == [CancelAttempt("j0", 1), JobFinished.match(job_id="j0", status="cancelled")]
    assert sched.limits["@cpu"].in_use == 2
    assert sched.handle(AttemptCancelled("j0", 1)) == [StartAttempt("j2", 1)]


def test_stale_result_after_cancel_only_frees_the_slot(sched: SchedulerState) -> None:
    sched.handle(*(submit(f"j{i}", "@cpu") for i in range(3)))
    sched.handle(CancelRequested("j0"))
    assert sched.handle(AttemptSucceeded("j0", 1, result=1)) == [StartAttempt("j2", 1)]


def test_bad_submissions_are_refused(sched: SchedulerState) -> None:
    sched.handle(submit("a"))
    with pytest.raises(ValueError, match="twice"):
        sched.handle(submit("a"))
    with pytest.raises(ValueError, match="unknown limit"):
        sched.handle(submit("b", "nope"))
    with pytest.raises(TypeError, match="not a scheduler event"):
        sched.handle("not an event")  # type: ignore[arg-type]


def test_a_bad_event_mid_batch_leaves_the_state_as_it_was(sched: SchedulerState) -> None:
    before = sched.to_dict()
    with pytest.raises(ValueError, match="unknown limit"):
        sched.handle(submit("x"), submit("y", "@cpu"), submit("z", "nope"))
    with pytest.raises(ValueError, match="twice"):
        sched.handle(submit("x"), submit("x"))
    with pytest.raises(ValueError, match="already declared"):
        sched.handle(LimitsDeclared("f", {"api": LimitSpec(1)}),
                     LimitsDeclared("f", {"api": LimitSpec(1)}))
    assert sched.to_dict() == before
    assert sched.status("x") is sched.status("y") is None
    # the same jobs go through once the batch is good
    assert sched.handle(submit("x"), submit("y", "@cpu")) == [
        StartAttempt("x", 1), StartAttempt("y", 1)
    ]


def test_two_scopes_limits_of_one_name_are_two_pools(sched: SchedulerState) -> None:
    cmds = sched.handle(
        LimitsDeclared("f1", {"api": LimitSpec(concurrency=1)}),
        LimitsDeclared("f2", {"api": LimitSpec(concurrency=1)}),
        submit("a1", "@io", scoped("f1", "api")), submit("a2", "@io", scoped("f1", "api")),
        submit("b1", "@io", scoped("f2", "api")), submit("b2", "@io", scoped("f2", "api")),
    )
    assert cmds == [StartAttempt("a1", 1), StartAttempt("b1", 1)]
    assert sched.handle(AttemptSucceeded("b1", 1)) == [
        JobFinished.match(job_id="b1"), StartAttempt("b2", 1)
    ]


def test_a_scope_declared_in_the_same_batch_as_its_jobs(sched: SchedulerState) -> None:
    cmds = sched.handle(LimitsDeclared("f", {"api": LimitSpec(concurrency=1)}),
                        submit("a", "@io", "f:api"), submit("b", "@io", "f:api"))
    assert cmds == [StartAttempt("a", 1)]


def test_released_limits_go_once_no_attempt_holds_them(sched: SchedulerState) -> None:
    sched.handle(LimitsDeclared("f", {"api": LimitSpec(concurrency=2)}),
                 submit("a", "@io", "f:api"))
    sched.handle(CancelRequested("a"), LimitsReleased("f"))
    assert "f:api" in sched.limits  # the cancelled attempt still runs (rule 2)
    with pytest.raises(ValueError, match="unknown limit"):
        sched.handle(submit("late", "@io", "f:api"))
    sched.handle(AttemptCancelled("a", 1))
    assert "f:api" not in sched.limits
    # the scope's name may be declared again
    sched.handle(LimitsDeclared("f", {"api": LimitSpec(concurrency=1)}))
    assert sched.limits["f:api"].concurrency == 1


def test_rate_limit_spaces_starts() -> None:
    sched = SchedulerState({"r": Limit(rate_per_s=10, burst=1)})
    cmds = sched.handle(*(submit(f"j{i}", "r", now=0.0) for i in range(3)))
    assert cmds == [StartAttempt("j0", 1)]
    assert sched.next_wake() == pytest.approx(0.1)
    assert sched.handle(Tick(now=0.05)) == []
    assert sched.handle(Tick(now=0.1)) == [StartAttempt("j1", 1)]
    assert sched.handle(Tick(now=0.2)) == [StartAttempt("j2", 1)]
    assert sched.next_wake() is None


def test_rate_limit_long_run_stays_on_rate() -> None:
    sched = SchedulerState({"r": Limit(rate_per_s=200)})
    sched.handle(*(submit(f"j{i}", "r") for i in range(1000)))
    started = 0
    now = 0.0
    while now < 2.0:
        now += 0.003
        started += sum(isinstance(c, StartAttempt) for c in sched.handle(Tick(now=now)))
    assert 380 <= started <= 425  # 2 s at 200/s, plus a burst of 20


def test_invalid_transition_raises(sched: SchedulerState) -> None:
    sched.handle(submit("a"))
    job = sched._jobs["a"]
    with pytest.raises(InvalidTransition):
        sched._set_status(job, JobStatus.PENDING)


def test_to_dict_reports_counts_and_limits(sched: SchedulerState) -> None:
    sched.handle(*(submit(f"j{i}", "@cpu", stimulus_id="s") for i in range(3)))
    sched.handle(AttemptFailed("j0", 1, BOOM, stimulus_id="f"))
    d = sched.to_dict()
    assert d["counts"]["running"] == 2 and d["counts"]["queued"] == 0
    assert d["limits"]["@cpu"]["in_use"] == 2
    # one log entry per stimulus, however many events it brought
    assert [entry[1:] for entry in d["log"]] == [["JobSubmitted", "s"], ["AttemptFailed", "f"]]


def test_retry_waits_at_least_what_the_failure_asked(sched: SchedulerState) -> None:
    sched.handle(submit("a", retries=1, backoff_s=0.1, now=0.0))
    err = ErrorInfo("HttpStatusError", "429", retry_after_s=3.0)
    assert sched.handle(AttemptFailed("a", 1, err, now=1.0)) == []
    assert sched.next_wake() == pytest.approx(4.0)


def test_a_lost_attempt_runs_again_first_and_does_not_use_up_retries(
    sched: SchedulerState,
) -> None:
    sched.handle(*(submit(f"j{i}", "@cpu") for i in range(3)))  # j0, j1 run; j2 waits
    lost = ErrorInfo("NodeLost", "node a died")
    assert sched.handle(AttemptLost("j0", 1, lost)) == [StartAttempt("j0", 2)]
    assert sched.status("j2") is JobStatus.QUEUED  # the lost one went first
    # with retries=0 the next real failure is still final
    assert sched.handle(AttemptFailed("j0", 2, BOOM)) == [
        JobFinished.match(job_id="j0", status=JobStatus.FAILED, attempts=2),
        StartAttempt("j2", 1),
    ]
    # a report of the lost attempt arriving late changes nothing (fencing, rule 3)
    assert sched.handle(AttemptSucceeded("j0", 1, result="late")) == []
