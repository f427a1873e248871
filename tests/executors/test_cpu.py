"""The CPU pool with real worker processes: crashes, kills, cancels and rebuilds."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import psutil
import pytest

import asyncjobs
from asyncjobs import JobCancelled, JobFailed, JobTimeout, Runner

from .. import jobs
from ..conftest import cpu_pids
from ..procs import gone, wait_until_gone

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("no_leftover_children")


async def wait_for_file(path: Path, deadline_s: float = 10.0) -> str:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if path.exists() and path.read_text():
            return path.read_text()
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


async def wait_for_workers(runner: Runner, n: int, deadline_s: float = 10.0) -> list[int]:
    """The pool's worker PIDs, once there are ``n`` (a replacement's PID comes from the
    template a moment after the crash that called for it)."""
    end = time.monotonic() + deadline_s
    while len(pids := cpu_pids(runner)) != n:
        assert time.monotonic() < end, f"{len(pids)} workers, not {n}, after {deadline_s}s"
        await asyncio.sleep(0.01)
    return pids


async def test_os_exit_fails_only_its_job_and_pool_recovers() -> None:
    async with Runner(cpu_workers=2) as runner:
        before = set(cpu_pids(runner))
        others = [runner.submit(jobs.square, i) for i in range(10)]
        crasher = runner.submit(jobs.crash, 13)
        others += [runner.submit(jobs.square, i) for i in range(10, 20)]
        assert await asyncio.gather(*others) == [i * i for i in range(20)]
        with pytest.raises(JobFailed) as info:
            await crasher
        err = info.value
        assert err.type_name == "WorkerCrashed"
        assert crasher.id in err.message and "exit code 13" in err.message
        assert await runner.submit(jobs.square, 3) == 9
        assert set(await wait_for_workers(runner, 2)) != before


async def test_segfault_names_the_signal() -> None:
    async with Runner(cpu_workers=1) as runner:
        results = await runner.map(
            jobs.sleep_then, [0.0, 0.0], ["a", "b"], return_exceptions=True
        )
        with pytest.raises(JobFailed, match="SIGSEGV"):
            await runner.submit(jobs.segfault)
        assert results == ["a", "b"]
        assert await runner.submit(jobs.add, 1, 1) == 2


async def test_hung_job_past_timeout_has_its_worker_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with Runner(cpu_workers=1) as runner:
        job = runner.submit(jobs.hang_with_timeout, str(pid_file))
        pid = int(await wait_for_file(pid_file))
        with pytest.raises(JobTimeout, match="killed"):
            await job
        assert job.status == "failed"
        await wait_until_gone([pid], deadline_s=2.0)
        assert await runner.submit(jobs.add, 2, 2) == 4


async def test_timed_out_job_is_retried_on_a_new_worker(tmp_path: Path) -> None:
    marker = tmp_path / "first"
    async with Runner(cpu_workers=1) as runner:
        assert await runner.submit(jobs.hangs_first_time, str(marker)) == "second attempt"
        assert int(marker.read_text()) not in cpu_pids(runner)


async def test_cancel_queued_cpu_jobs(tmp_path: Path) -> None:
    async with Runner(cpu_workers=1) as runner:
        first = runner.submit(jobs.sleep_then, 0.5, "first", str(tmp_path / "first"))
        await wait_for_file(tmp_path / "first")
        # prefetch=2: 'held' waits inside the worker, 'queued' in the scheduler
        held = runner.submit(jobs.sleep_then, 0, "held", str(tmp_path / "held"))
        queued = runner.submit(jobs.sleep_then, 0, "queued", str(tmp_path / "queued"))
        await asyncio.sleep(0.05)
        assert held.cancel() and queued.cancel()
        for job in (held, queued):
            with pytest.raises(JobCancelled):
                await job
        assert await first == "first"
        assert await runner.submit(jobs.add, 1, 2) == 3
    assert not (tmp_path / "held").exists() and not (tmp_path / "queued").exists()


async def test_cancel_running_cpu_job_kills_its_worker(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    async with Runner(cpu_workers=1) as runner:
        job = runner.submit(jobs.hang, str(pid_file))
        pid = int(await wait_for_file(pid_file))
        job.cancel()
        with pytest.raises(JobCancelled):
            await job
        await wait_until_gone([pid])
        assert await runner.submit(jobs.add, 5, 5) == 10


async def test_retries_count_attempts_across_processes(tmp_path: Path) -> None:
    async with Runner(cpu_workers=2) as runner:
        assert await runner.submit(jobs.flaky_with_retries, str(tmp_path / "n"), 2) == 3


async def test_unpicklable_call_fails_at_once_without_retries() -> None:
    async with Runner(cpu_workers=1) as runner:
        with pytest.raises(JobFailed, match="cannot be sent to a worker") as info:
            await runner.submit(asyncjobs.job(kind="cpu", retries=3)(lambda: 1))
        assert info.value.attempts == 1
        with pytest.raises(JobFailed, match="could not be pickled"):
            await runner.submit(jobs.unpicklable_result)


async def test_workers_start_lazily_and_are_gone_after_exit() -> None:
    async with Runner(cpu_workers=2) as runner:
        await runner.submit(jobs.aio_add, 1, 1)
        assert cpu_pids(runner) == []
        worker_pid = await runner.submit(jobs.pid)
        pids = cpu_pids(runner)
        assert worker_pid in pids
    for pid in pids:
        assert gone(pid)


async def test_exit_with_exception_kills_a_running_cpu_job(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(RuntimeError):
        async with Runner(cpu_workers=1) as runner:
            job = runner.submit(jobs.hang, str(pid_file))
            await wait_for_file(pid_file)
            raise RuntimeError("app failed")
    with pytest.raises(JobCancelled):
        await job


async def test_idle_worker_takes_a_job_queued_behind_a_long_one(tmp_path: Path) -> None:
    # whichever worker starts first is handed both jobs (prefetch); the other must steal one
    marks = [tmp_path / "a", tmp_path / "b"]
    async with Runner(cpu_workers=2) as runner:
        hangs = [runner.submit(jobs.hang, str(m)) for m in marks]
        pids = {int(await wait_for_file(m)) for m in marks}
        assert len(pids) == 2
        for job in hangs:
            job.cancel()


async def test_worker_killed_from_outside_fails_its_job_naming_sigkill(tmp_path: Path) -> None:
    # what the kernel's OOM killer does to a worker
    pid_file = tmp_path / "pid"
    async with Runner(cpu_workers=1) as runner:
        job = runner.submit(jobs.hang, str(pid_file))
        queued = runner.submit(jobs.square, 12)
        pid = int(await wait_for_file(pid_file))
        psutil.Process(pid).kill()
        with pytest.raises(JobFailed, match="SIGKILL") as info:
            await job
        assert info.value.type_name == "WorkerCrashed" and str(pid) in info.value.message
        assert await queued == 144
