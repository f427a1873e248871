"""Runner.map over CPU jobs: chunked dispatch that still keeps each item's outcome."""

from __future__ import annotations

import itertools

import pytest

from asyncjobs import JobFailed, Runner

from . import jobs
from .conftest import cpu_pids

pytestmark = pytest.mark.usefixtures("no_leftover_children")
N = 3000


def jobs_used(runner: Runner, before: int) -> int:
    return next(runner._ids) - before - 1


async def test_small_cpu_calls_share_jobs_and_keep_order() -> None:
    async with Runner(cpu_workers=2) as runner:
        before = next(runner._ids)
        out = await runner.map(jobs.square, range(N))
        assert out == [x * x for x in range(N)]
        assert jobs_used(runner, before) < N / 4


async def test_lazy_input_of_unknown_length_is_chunked_too() -> None:
    async with Runner(cpu_workers=2) as runner:
        before = next(runner._ids)
        out = await runner.map(jobs.add, (x for x in range(N)), itertools.repeat(1))
        assert out == [x + 1 for x in range(N)]
        assert jobs_used(runner, before) < N / 4


async def test_a_failing_item_fails_alone() -> None:
    async with Runner(cpu_workers=2) as runner:
        out = await runner.map(jobs.square_unless, range(N), itertools.repeat(1234),
                               return_exceptions=True)
    failed = [i for i, r in enumerate(out) if isinstance(r, JobFailed)]
    assert failed == [1234]
    assert out[1234].type_name == "ValueError" and "bad item 1234" in out[1234].message
    assert out[:1234] == [x * x for x in range(1234)]


async def test_an_item_that_kills_its_worker_is_named_alone() -> None:
    async with Runner(cpu_workers=2) as runner:
        out = await runner.map(jobs.square_unless, range(N), itertools.repeat(2000),
                               itertools.repeat("crash"), return_exceptions=True)
        failed = [i for i, r in enumerate(out) if isinstance(r, JobFailed)]
        assert failed == [2000]
        err = out[2000]
        assert err.type_name == "WorkerCrashed" and err.job_id in err.message
        assert "exit code 7" in err.message
        assert sum(1 for r in out if isinstance(r, int)) == N - 1
        assert len(cpu_pids(runner)) == 2


async def test_map_raises_the_first_failure_of_a_chunk() -> None:
    async with Runner(cpu_workers=2) as runner:
        with pytest.raises(JobFailed, match="bad item 77"):
            await runner.map(jobs.square_unless, range(N), itertools.repeat(77))
        assert runner.engine.pending == 0


async def test_calls_with_a_timeout_or_retries_are_not_chunked() -> None:
    async with Runner(cpu_workers=2) as runner:
        before = next(runner._ids)
        out = await runner.map(jobs.add_with_retries, range(200), range(200))
        assert out == [2 * x for x in range(200)]
        assert jobs_used(runner, before) == 200
