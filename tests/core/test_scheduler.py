from __future__ import annotations

import random

import pytest

from asyncjobs.core.commands import CancelAttempt, JobFinished, StartAttempt
from asyncjobs.core.events import (
    AttemptCancelled,
    AttemptFailed,
    AttemptSucceeded,
    CancelRequested,
    JobSubmitted,
    Tick,
)
from asyncjobs.core.policy import Limit, backoff_delay
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


def test_needs_run_in_order_and_failure_skips_the_chain(sched: SchedulerState) -> None:
    cmds = sched.handle(
        submit("a", remember=True),
        submit("b", needs=("a",), remember=True),
        submit("c", needs=("b",), remember=True),
        submit("d", remember=True),
    )
    assert cmds == [StartAttempt("a", 1), StartAttempt("d", 1)]
    cmds = sched.handle(AttemptFailed("a", 1, BOOM))
    assert [(c.job_id, c.status) for c in cmds if isinstance(c, JobFinished)] == [
        ("a", "failed"), ("b", "skipped"), ("c", "skipped")
    ]
    assert sched.status("c") is JobStatus.SKIPPED
    assert sched.handle(AttemptSucceeded("d", 1)) == [JobFinished.match(job_id="d")]


def test_need_succeeded_releases_dependent(sched: SchedulerState) -> None:
    sched.handle(submit("a", remember=True), submit("b", needs=("a",)))
    assert sched.status("b") is JobStatus.PENDING
    assert StartAttempt("b", 1) in sched.handle(AttemptSucceeded("a", 1))


def test_submit_after_need_failed_is_skipped(sched: SchedulerState) -> None:
    sched.handle(submit("a", remember=True))
    sched.handle(AttemptFailed("a", 1, BOOM))
    cmds = sched.handle(submit("b", needs=("a",)))
    assert cmds == [JobFinished.match(job_id="b", status=JobStatus.SKIPPED)]


def test_bad_submissions_are_refused(sched: SchedulerState) -> None:
    sched.handle(submit("a"))
    with pytest.raises(ValueError, match="twice"):
        sched.handle(submit("a"))
    with pytest.raises(ValueError, match="unknown limit"):
        sched.handle(submit("b", "nope"))
    with pytest.raises(ValueError, match="unknown job"):
        sched.handle(submit("c", needs=("ghost",)))


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
    d = sched.to_dict()
    assert d["counts"]["running"] == 2 and d["counts"]["queued"] == 1
    assert d["limits"]["@cpu"]["in_use"] == 2
    assert d["queued"] == {"@cpu": 1} and len(d["log"]) == 3


def test_retry_waits_at_least_what_the_failure_asked(sched: SchedulerState) -> None:
    sched.handle(submit("a", retries=1, backoff_s=0.1, now=0.0))
    err = ErrorInfo("HttpStatusError", "429", retry_after_s=3.0)
    assert sched.handle(AttemptFailed("a", 1, err, now=1.0)) == []
    assert sched.next_wake() == pytest.approx(4.0)
