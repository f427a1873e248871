"""Weighted limits: an attempt that stands for n calls (a chunk) holds n units of each
limit it names (rule 2 of ``core.scheduler``)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjobs.core.commands import CancelAttempt, StartAttempt
from asyncjobs.core.events import (
    AttemptCancelled,
    AttemptSucceeded,
    CancelRequested,
    JobSubmitted,
    Tick,
)
from asyncjobs.core.policy import Limit
from asyncjobs.core.scheduler import SchedulerState


def job(job_id: str, weight: int, *limits: str, now: float = 0.0) -> JobSubmitted:
    return JobSubmitted(job_id, limits or ("api",), now=now, weight=weight)


def started(cmds: list[object]) -> list[str]:
    return [c.job_id for c in cmds if isinstance(c, StartAttempt)]


def test_a_heavy_job_holds_its_weight_and_the_queue_waits_behind_it() -> None:
    sched = SchedulerState({"api": Limit(10)})
    assert started(sched.handle(job("a", 4), job("b", 4), job("c", 4), job("d", 1))) == [
        "a", "b"]
    assert sched.limits["api"].in_use == 8
    # c (4) does not fit in the 2 left, and d behind it waits too: first come, first served
    assert started(sched.handle(AttemptSucceeded("a", 1))) == ["c", "d"]
    assert sched.limits["api"].in_use == 9


def test_a_cancelled_heavy_job_frees_its_weight_when_its_attempt_ends() -> None:
    sched = SchedulerState({"api": Limit(5)})
    sched.handle(job("a", 5), job("b", 1))
    cmds = sched.handle(CancelRequested("a"))
    assert CancelAttempt("a", 1) in cmds and sched.limits["api"].in_use == 5
    assert started(sched.handle(AttemptCancelled("a", 1))) == ["b"]
    assert sched.limits["api"].in_use == 1


def test_a_rate_limit_counts_a_heavy_job_as_its_weight_in_tokens() -> None:
    sched = SchedulerState({"r": Limit(rate_per_s=10, burst=4)})
    assert started(sched.handle(job("a", 4, "r"), job("b", 2, "r"))) == ["a"]
    assert sched.next_wake() == pytest.approx(0.2)  # two tokens, at 10 a second
    assert started(sched.handle(Tick(now=0.1))) == []
    assert started(sched.handle(Tick(now=0.2))) == ["b"]


@pytest.mark.parametrize(("limit", "weight"), [(Limit(3), 4), (Limit(rate_per_s=10, burst=2), 3),
                                                (Limit(3), 0)])
def test_a_job_that_could_never_start_is_refused(limit: Limit, weight: int) -> None:
    sched = SchedulerState({"api": limit})
    with pytest.raises(ValueError, match="job 'a'"):
        sched.handle(job("b", 1), job("a", weight))
    assert sched.status("b") is None  # the batch was refused whole (rule 6)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32), capacity=st.integers(1, 12),
       weights=st.lists(st.integers(1, 12), min_size=1, max_size=40))
def test_a_limit_never_holds_more_than_its_concurrency_and_every_job_runs(
        seed: int, capacity: int, weights: list[int]) -> None:
    rng = random.Random(seed)
    sched = SchedulerState({"api": Limit(capacity)}, rng=random.Random(seed))
    jobs = [job(f"j{i}", min(w, capacity)) for i, w in enumerate(weights)]
    running = started(sched.handle(*jobs))
    order = list(running)
    done: list[str] = []
    for _ in range(10 * len(jobs)):
        assert 0 <= sched.limits["api"].in_use <= capacity
        if not running:
            break
        ended = running.pop(rng.randrange(len(running)))
        done.append(ended)
        new = started(sched.handle(AttemptSucceeded(ended, 1)))
        running += new
        order += new
    assert order == [j.job_id for j in jobs]  # in submission order (rule 4)
    assert sched.limits["api"].in_use == 0
