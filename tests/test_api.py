"""The await API through real parts: event loop tasks, worker processes, threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import asyncjobs
from asyncjobs import JobCancelled, JobFailed, JobStatus, JobTimeout, Runner
from asyncjobs.errors import RunnerClosed

from . import jobs

pytestmark = pytest.mark.usefixtures("no_leftover_children")


async def test_each_kind_returns_its_result() -> None:
    async with Runner(cpu_workers=1) as runner:
        io_job = runner.submit(jobs.aio_add, 1, 2)
        cpu_job = runner.submit(jobs.add, 3, 4)
        thread_job = runner.submit(jobs.marked_thread_job, 5)
        assert await io_job == 3
        assert await cpu_job == 7
        assert (await thread_job).startswith("5:asyncjobs")
        assert io_job.status is cpu_job.status is JobStatus.SUCCEEDED


async def test_submit_by_module_attribute_reference() -> None:
    async with Runner(cpu_workers=1) as runner:
        assert await runner.submit("tests.jobs:square", 9) == 81


async def test_job_status_moves_from_running_to_succeeded() -> None:
    async with Runner() as runner:
        job = runner.submit(jobs.aio_sleep, 0.05, "x")
        await asyncio.sleep(0)
        assert job.status is JobStatus.RUNNING and not job.done()
        assert await job == "x"
        assert job.status is JobStatus.SUCCEEDED and job.done()
        assert job.id.startswith("aio_sleep-")


async def test_map_keeps_input_order_for_io_and_cpu() -> None:
    async with Runner(cpu_workers=2) as runner:
        assert await runner.map(jobs.square, range(50)) == [x * x for x in range(50)]
        delays = [0.03 * ((7 * i) % 5) for i in range(20)]
        assert await runner.map(jobs.aio_sleep, delays, range(20)) == list(range(20))


async def test_map_holds_a_bounded_number_of_jobs() -> None:
    produced = 0
    most_pending = 0

    async with Runner() as runner:
        def items():  # a lazy input: counts how far map has read ahead
            nonlocal produced, most_pending
            for i in range(5000):
                produced += 1
                most_pending = max(most_pending, runner.engine.pending)
                yield i

        results = await runner.map(jobs.aio_add, items(), range(5000), window=40)
    assert results == [2 * i for i in range(5000)]
    assert produced == 5000 and most_pending <= 40


async def test_map_raises_first_failure_and_cancels_the_rest() -> None:
    async with Runner() as runner:
        with pytest.raises(JobFailed) as info:
            await runner.map(jobs.aio_fail, ["a"] + ["b"] * 30, window=8)
        assert info.value.type_name == "KeyError"
        assert runner.engine.pending == 0


async def test_map_return_exceptions_keeps_going() -> None:
    async with Runner() as runner:
        out = await runner.map(jobs.aio_fail, ["x", "y"], return_exceptions=True)
    assert [type(e) for e in out] == [JobFailed, JobFailed]
    assert [e.message for e in out] == ["'x'", "'y'"]


@pytest.mark.parametrize("fn", [jobs.aio_fail, jobs.fail], ids=["io", "cpu"])
async def test_failure_carries_type_message_and_traceback(fn: object) -> None:
    async with Runner(cpu_workers=1) as runner:
        with pytest.raises(JobFailed) as info:
            await runner.submit(fn, "bad input 7")  # type: ignore[arg-type]
    err = info.value
    assert err.type_name in ("KeyError", "ValueError")
    assert "bad input 7" in err.message
    assert "Traceback" in err.traceback and "jobs.py" in err.traceback
    assert err.job_id in str(err) and err.attempts == 1


async def test_io_retries_count_attempts_and_backoff_grows() -> None:
    stamps: list[float] = []

    @asyncjobs.job(retries=3, backoff=0.05)
    async def flaky_io() -> int:
        stamps.append(time.monotonic())
        if len(stamps) < 4:
            raise ConnectionError("try again")
        return len(stamps)

    async with Runner() as runner:
        assert await runner.submit(flaky_io) == 4
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert gaps[0] >= 0.0375 and gaps[0] < gaps[1] < gaps[2]
    assert gaps[2] >= 0.15


async def test_retries_exhausted_report_attempts(tmp_path: object) -> None:
    @asyncjobs.job(retries=2, backoff=0)
    async def always_fails() -> None:
        raise RuntimeError("down")

    async with Runner() as runner:
        with pytest.raises(JobFailed) as info:
            await runner.submit(always_fails)
    assert info.value.attempts == 3 and info.value.type_name == "RuntimeError"


async def test_io_timeout_cancels_the_coroutine() -> None:
    cancelled = asyncio.Event()

    @asyncjobs.job(timeout=0.1)
    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with Runner() as runner:
        started = time.monotonic()
        with pytest.raises(JobTimeout) as info:
            await runner.submit(slow)
        assert time.monotonic() - started < 5
    assert cancelled.is_set()
    assert isinstance(info.value, TimeoutError) and "timeout of 0.1s" in str(info.value)


async def test_own_timeout_error_is_a_failure_not_a_timeout() -> None:
    @asyncjobs.job(timeout=10)
    async def raises_timeout() -> None:
        raise TimeoutError("upstream timed out")

    async with Runner() as runner:
        with pytest.raises(JobFailed) as info:
            await runner.submit(raises_timeout)
    assert not isinstance(info.value, JobTimeout)
    assert info.value.message == "upstream timed out"


async def test_thread_timeout_reports_at_once() -> None:
    release = threading.Event()

    @asyncjobs.job(kind="thread", timeout=0.1)
    def blocks() -> None:
        release.wait(10)

    async with Runner() as runner:
        started = time.monotonic()
        with pytest.raises(JobTimeout):
            await runner.submit(blocks)
        assert time.monotonic() - started < 5
        release.set()


class Waiter:
    """An io job that waits until cancelled, and says when it started and was cancelled."""

    def __init__(self) -> None:
        self.started, self.cancelled = asyncio.Event(), asyncio.Event()

    async def wait(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_cancel_running_io_job() -> None:
    waiter = Waiter()
    started, cancelled, waits = waiter.started, waiter.cancelled, waiter.wait

    async with Runner() as runner:
        job = runner.submit(waits)
        await started.wait()
        assert job.cancel()
        with pytest.raises(JobCancelled):
            await job
        assert job.status is JobStatus.CANCELLED and not job.cancel()
        await asyncio.wait_for(cancelled.wait(), 5)


async def test_cancelling_the_awaiting_task_cancels_the_job() -> None:
    job_waiter = Waiter()
    started, cancelled, waits = job_waiter.started, job_waiter.cancelled, job_waiter.wait

    async def awaits(job: asyncjobs.Job[None]) -> None:
        await job

    async with Runner() as runner:
        job = runner.submit(waits)
        waiter = asyncio.create_task(awaits(job))
        await started.wait()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.wait_for(cancelled.wait(), 5)
        assert job.status is JobStatus.CANCELLED
        with pytest.raises(JobCancelled):
            await job


async def test_a_job_is_a_future_gather_and_wait_for_take_as_it_is() -> None:
    job_waiter = Waiter()
    async with Runner() as runner:
        jobs_ = [runner.submit(jobs.aio_add, i, 1) for i in range(3)]
        assert all(asyncio.ensure_future(j) is j for j in jobs_)  # no task per job
        assert await asyncio.gather(*jobs_) == [1, 2, 3]
        slow = runner.submit(job_waiter.wait)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow, 0.05)
        await asyncio.wait_for(job_waiter.cancelled.wait(), 5)
        assert slow.status is JobStatus.CANCELLED


async def test_a_timeout_around_gather_cancels_every_job_and_raises_timeout() -> None:
    job_waiter = Waiter()
    async with Runner() as runner:
        held = [runner.submit(job_waiter.wait) for _ in range(2)]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await asyncio.gather(*held)
        assert [j.status for j in held] == [JobStatus.CANCELLED] * 2


async def test_leaving_with_an_exception_cancels_running_jobs() -> None:
    waiter = Waiter()
    cancelled, waits = waiter.cancelled, waiter.wait

    with pytest.raises(ZeroDivisionError):
        async with Runner() as runner:
            job = runner.submit(waits)
            await asyncio.sleep(0.01)
            1 / 0  # noqa: B018
    assert cancelled.is_set()  # the runner waited for the attempt to unwind
    with pytest.raises(JobCancelled):
        await job


async def test_leaving_normally_waits_for_submitted_jobs() -> None:
    async with Runner() as runner:
        job = runner.submit(jobs.aio_sleep, 0.05, "done")
    assert job.done() and await job == "done"


async def test_closed_runner_refuses_work() -> None:
    runner = Runner()
    with pytest.raises(RunnerClosed, match="async with"):
        runner.submit(jobs.aio_add, 1, 2)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="cpu_workers"):
        Runner(cpu_workers=0)
    with pytest.raises(ValueError, match="loops"):
        Runner(loops=0)
    with pytest.raises(ValueError, match="kind"):
        asyncjobs.job(kind="gpu")
    with pytest.raises(ValueError, match="retries"):
        asyncjobs.job(retries=-1)


async def test_scheduler_log_records_failures_and_cancels() -> None:
    async with Runner() as runner:
        job = runner.submit(jobs.aio_sleep, 30)
        with pytest.raises(JobFailed):
            await runner.submit(jobs.aio_fail, "x")
        job.cancel()
        log = runner.engine.core.to_dict()["log"]
    kinds = [entry[1] for entry in log]
    assert "AttemptFailed" in kinds and "CancelRequested" in kinds
