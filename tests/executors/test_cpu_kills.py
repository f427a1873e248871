"""A kill only fails the job it was aimed at (issue 19 item 1), through real processes.

The loop stalls (``time.sleep`` on the loop) so that a worker's answer waits unread while
the worker goes on to its next job: the pool's view is then stale when a cancel or a
timeout comes, which is what used to kill the next job.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest

from asyncjobs import JobCancelled, Runner
from asyncjobs.executors.cpu import CpuPool
from asyncjobs.model import JobKind

from ..conftest import cpu_pids
from ..procs import wait_until_gone
from . import cpujobs
from .test_cpu import wait_for_file

if TYPE_CHECKING:
    from pathlib import Path

    from asyncjobs.executors.base import AttemptKey, Sink
    from asyncjobs.model import ErrorInfo

pytestmark = pytest.mark.usefixtures("no_leftover_children")


class Recorder:
    """A sink between the pool and the engine that notes every report, per job."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.seen: dict[str, list[tuple[str, int]]] = defaultdict(list)

    def succeeded(self, key: AttemptKey, result: Any) -> None:
        self.seen[key[0]].append(("succeeded", key[1]))
        self.sink.succeeded(key, result)

    def failed(self, key: AttemptKey, error: ErrorInfo) -> None:
        self.seen[key[0]].append(("failed", key[1]))
        self.sink.failed(key, error)

    def cancelled(self, key: AttemptKey) -> None:
        self.seen[key[0]].append(("cancelled", key[1]))
        self.sink.cancelled(key)


def record(runner: Runner) -> Recorder:
    pool = runner.engine.executors[JobKind.CPU]
    assert isinstance(pool, CpuPool)
    recorder = Recorder(pool.sink)
    pool.sink = recorder
    return recorder


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_stopping_a_job_whose_answer_waits_unread_leaves_the_next_job_alone(
    how: str,
) -> None:
    async with Runner(cpu_workers=1) as runner:
        worker = await runner.submit(cpujobs.busy, 0)
        a = runner.submit(cpujobs.busy_with_timeout if how == "timeout" else cpujobs.busy,
                          0.05)
        b = runner.submit(cpujobs.busy, 0.3)
        await asyncio.sleep(0.01)
        # the loop stalls: a finishes, its answer waits unread, b starts
        time.sleep(0.2)  # noqa: ASYNC251 - the stall is the point
        if how == "cancel":
            a.cancel()
            with pytest.raises(JobCancelled):
                await a
        else:  # it answered within its timeout; the loop read it late
            assert await a == worker
        assert await b == worker  # b ran to its end, in the same worker: no kill
        assert cpu_pids(runner) == [worker]


async def test_cancelling_a_job_that_started_while_the_loop_stalled_stops_it(
    tmp_path: Path,
) -> None:
    # the pool still thinks b is queued behind a: it must find out b runs, and kill it
    async with Runner(cpu_workers=1) as runner:
        await runner.submit(cpujobs.busy, 0)
        a = runner.submit(cpujobs.busy, 0.05)
        b = runner.submit(cpujobs.busy, 30, str(tmp_path / "b"))
        c = runner.submit(cpujobs.busy, 0)
        await asyncio.sleep(0.01)
        time.sleep(0.2)  # noqa: ASYNC251 - a finishes, b starts, unseen
        b.cancel()
        victim = await a
        with pytest.raises(JobCancelled):
            await b
        assert int((tmp_path / "b").read_text()) == victim
        assert await c != victim
        await wait_until_gone([victim])


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_kill_that_lands_on_the_next_job_sends_it_back_uncounted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    # the kill is held back until its target has answered and the next job has started:
    # the race that reading the worker's answers first narrows, but cannot close
    real_kill = CpuPool._kill

    def late_kill(self: CpuPool, worker: Any) -> None:
        asyncio.get_running_loop().call_later(0.3, real_kill, self, worker)

    monkeypatch.setattr(CpuPool, "_kill", late_kill)
    async with Runner(cpu_workers=1) as runner:
        reports = record(runner)
        fn = cpujobs.busy_with_timeout if how == "timeout" else cpujobs.busy
        a = runner.submit(fn, 0.15, str(tmp_path / "a"))
        b = runner.submit(cpujobs.busy, 0.5, str(tmp_path / "b"))
        killed = int(await wait_for_file(tmp_path / "a"))
        if how == "cancel":
            a.cancel()
        assert int(await wait_for_file(tmp_path / "b")) == killed  # b started there
        second = await b  # and, once the kill landed on it, ran again elsewhere
        assert second != killed and int((tmp_path / "b").read_text()) == second
        await wait_until_gone([killed])
        assert reports.seen[b.id] == [("succeeded", 1)]
        if how == "cancel":
            assert reports.seen[a.id] == [("cancelled", 1)]
        else:  # it answered before the kill landed: its result stands
            assert await a == killed
