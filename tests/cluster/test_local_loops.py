"""``Runner(loops=N)`` and ``asyncjobs run --loops N``: the cluster's machinery on one
machine, with the same results, records and exit codes as one loop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import asyncjobs
from asyncjobs.daemons import spawn
from tests import cluster_jobs, jobs

from .harness import REPO, daemon_env

pytestmark = pytest.mark.timeout(120)


@pytest.mark.usefixtures("no_leftover_children")
async def test_loops_2_runs_every_kind_and_spreads_io_jobs_over_two_processes() -> None:
    async with asyncjobs.Runner(loops=2, cpu_workers=2) as runner:
        assert await runner.submit(jobs.aio_add, 1, 2) == 3
        assert await runner.submit(jobs.add, 3, 4) == 7
        assert (await runner.submit(jobs.marked_thread_job, 5)).startswith("5:")
        assert await runner.map(jobs.square, range(50)) == [i * i for i in range(50)]
        pids = set(await runner.map(cluster_jobs.loop_pid, [0.02] * 200))
        with pytest.raises(asyncjobs.JobFailed) as caught:
            await runner.submit(jobs.fail, "boom")
    assert len(pids) == 2 and os.getpid() not in pids
    assert caught.value.type_name == "ValueError" and caught.value.message == "boom"


FLOW = """\
jobs:
  squares:
    foreach: {range: 30}
    call: tests.jobs:square_unless
    args: ['{{ item }}', 7]
  pids:
    foreach: {range: 40}
    call: tests.cluster_jobs:loop_pid
  sum:
    needs: [pids]
    shell: "echo done"
  shells:
    foreach: {range: 12}
    timeout: 5
    shell: "test {{ item }} -ne 5"
"""


def _run(tmp_path: Path, *args: str) -> tuple[int, dict[str, tuple[str, int]]]:
    flow = tmp_path / "jobs.yaml"
    flow.write_text(FLOW)
    report = tmp_path / f"report{len(args)}.json"
    done = subprocess.run(
        [sys.executable, "-m", "asyncjobs", "run", str(flow), "--quiet", "--report",
         str(report), *args], env=daemon_env(), cwd=REPO, capture_output=True, text=True,
        timeout=90)
    assert "Traceback" not in done.stderr, done.stderr
    records = json.loads(report.read_text())["jobs"]
    return done.returncode, {r["id"]: (r["status"], r["attempts"]) for r in records}


@pytest.mark.usefixtures("no_leftover_children")
def test_run_loops_2_gives_the_records_and_exit_code_of_one_loop(tmp_path: Path) -> None:
    one = _run(tmp_path, "--cpu-workers", "2")
    two = _run(tmp_path, "--loops", "2", "--cpu-workers", "2")
    assert one == two
    code, records = two
    assert code == 1 and records["squares[7]"] == ("failed", 1)
    assert records["shells[5]"] == ("failed", 1) and records["shells[4]"] == ("succeeded", 1)
    assert len(records) == 83 and records["sum"] == ("succeeded", 1)


async def test_a_value_msgpack_cannot_carry_fails_its_job_alone_as_on_a_cluster() -> None:
    async with asyncjobs.Runner(loops=2, cpu_workers=1) as runner:
        bad = runner.submit(jobs.add, {1, 2}, 3)  # a set is not msgpack
        good = runner.submit(jobs.add, 1, 2)
        with pytest.raises(asyncjobs.JobFailed) as caught:
            await bad
        assert await good == 3
    assert "msgpack" in str(caught.value)


def _loop_children() -> list[psutil.Process]:
    """Our loop processes: children of this very process (no node process between)."""
    found = []
    for p in psutil.Process().children():
        try:
            if "asyncjobs.daemons._loop_main" in " ".join(p.cmdline()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


@pytest.mark.usefixtures("no_leftover_children")
async def test_the_runner_supervises_its_loops_and_they_never_see_the_secret() -> None:
    async with asyncjobs.Runner(loops=2, cpu_workers=1) as runner:
        pids = set(await runner.map(cluster_jobs.loop_pid, [0.02] * 100))
        assert await runner.submit(cluster_jobs.environment, "ASYNCJOBS_SECRET") is None
        assert runner._local is not None
        secret = runner._local.server.secret
        loops = _loop_children()
        assert {p.pid for p in loops} == pids and len(pids) == 2
        for proc in psutil.Process().children(recursive=True):
            for part in ("cmdline", "environ"):
                try:
                    seen = Path(f"/proc/{proc.pid}/{part}").read_bytes()
                except (FileNotFoundError, ProcessLookupError):
                    continue  # it ended since the listing
                assert secret not in seen
    assert not _loop_children()


@pytest.mark.usefixtures("no_leftover_children")
async def test_a_loop_that_dies_is_started_again_and_its_job_runs_again(
        tmp_path: Path) -> None:
    marker = tmp_path / "died"
    async with asyncjobs.Runner(loops=2, cpu_workers=1) as runner:
        first = {p.pid for p in _loop_children()}
        ran = await runner.submit(cluster_jobs.die_once, str(marker))
        assert marker.read_text() == "died\n" and ran in first
        for _ in range(200):  # the supervisor starts it again after RESTART_FIRST_S
            now = {p.pid for p in _loop_children()}
            if len(now) == 2 and now != first:
                break
            await asyncio.sleep(0.05)
        assert len(now) == 2 and len(now & first) == 1
        for _ in range(200):  # and it registers again: io jobs spread over both
            if set(await runner.map(cluster_jobs.loop_pid, [0.02] * 50)) == now:
                break
        else:
            raise AssertionError("the new loop process never ran a job")


@pytest.mark.usefixtures("no_leftover_children")
async def test_loops_started_early_are_the_ones_the_runner_uses() -> None:
    spawn.start_early(2)  # what asyncjobs run --loops 2 does first thing
    assert spawn._early is not None
    early = {child.pid for child in spawn._early[0]}
    async with asyncjobs.Runner(loops=2, cpu_workers=1) as runner:
        assert spawn._early is None
        assert set(await runner.map(cluster_jobs.loop_pid, [0.02] * 100)) == early


@pytest.mark.usefixtures("no_leftover_children")
def test_early_loops_a_run_never_uses_are_ended(tmp_path: Path) -> None:
    flow = tmp_path / "jobs.yaml"
    flow.write_text("jobs:\n  a: {shell: 'true', needs: [missing]}\n")
    mark = f"{os.getpid()}-{id(flow)}"  # the loops inherit the environment
    done = subprocess.run([sys.executable, "-m", "asyncjobs", "run", str(flow), "--loops",
                           "2"], env=daemon_env(extra={"LOOPS_TEST_MARK": mark}), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "missing" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not _marked(mark)
    spawn.start_early(2)
    children = list(spawn._early[0]) if spawn._early is not None else []
    spawn.discard_early()
    assert len(children) == 2 and all(c.returncode is not None for c in children)


def _marked(mark: str) -> list[int]:
    """Live processes whose environment carries ``LOOPS_TEST_MARK=mark``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("LOOPS_TEST_MARK") == mark and proc.status() != "zombie":
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_a_runner_killed_with_sigkill_leaves_no_loop_or_job_behind(tmp_path: Path) -> None:
    started = tmp_path / "started"
    flow = tmp_path / "jobs.yaml"
    flow.write_text("jobs:\n  sleepers:\n    foreach: {range: 4}\n"
                    f"    shell: 'echo x >> {started}; sleep 60'\n")
    mark = f"{os.getpid()}-{id(flow)}"
    runner = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "run", str(flow), "--loops", "2", "--quiet"],
        env=daemon_env(extra={"LOOPS_TEST_MARK": mark}), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if started.exists() and len(started.read_text().split()) == 4:
                break
            time.sleep(0.05)
        assert len(_marked(mark)) > 3  # the runner, its loops, their shell jobs
    finally:
        runner.kill()  # no cleanup of its own: its loops see their stdin end
        runner.wait()
    for _ in range(100):
        left = _marked(mark)
        if not left:
            break
        time.sleep(0.05)
    assert not left
