"""``Runner(loops=N)`` and ``asyncjobs run --loops N``: the cluster's machinery on one
machine, with the same results, records and exit codes as one loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

import asyncjobs
from tests import cluster_jobs, jobs

from .harness import REPO, daemon_env

if TYPE_CHECKING:
    from pathlib import Path

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
