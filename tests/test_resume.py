"""--resume: jobs that succeeded last time with the same inputs are not run again."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import msgpack
import pytest

from asyncjobs import Runner
from asyncjobs.model import JobStatus

from .conftest import write_flow

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("no_leftover_children")


def runs_of(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


async def run(path: Path, *, resume: bool, **params: object) -> object:
    async with Runner(cpu_workers=1) as runner:
        return await runner.run_flow(path, params=params or None, resume=resume)


FLOW = """
    params: {n: 3, greeting: hi}
    jobs:
      step:
        foreach: {range: "{{ params.n }}"}
        shell: "echo {{ params.greeting }}-{{ item }} >> log.txt; echo {{ item }}"
      flaky:
        shell: "test -e ok.flag && echo fixed >> log.txt"
      total:
        call: tests.flow.calls:total
        args: [[1, 2]]
"""


async def test_resume_skips_what_succeeded_and_reruns_what_failed(tmp_path: Path) -> None:
    path = write_flow(tmp_path, FLOW)
    log = tmp_path / "log.txt"
    first = await run(path, resume=False)
    assert not first.ok and sorted(runs_of(log)) == ["hi-0", "hi-1", "hi-2"]
    assert (tmp_path / ".asyncjobs" / "state.db").exists()

    (tmp_path / "ok.flag").write_text("")
    second = await run(path, resume=True)
    assert second.ok and second.resumed == 4  # 3 steps + total; flaky runs again
    assert runs_of(log)[3:] == ["fixed"]
    by_id = {r.id: r for r in second.records}
    assert by_id["step[0]"].attempts == 0 and by_id["flaky"].attempts == 1
    assert second.results["total"] == 3  # carried over from the run that computed it


async def test_changed_inputs_run_again(tmp_path: Path) -> None:
    path = write_flow(tmp_path, FLOW)
    (tmp_path / "ok.flag").write_text("")
    log = tmp_path / "log.txt"
    await run(path, resume=False)
    assert len(runs_of(log)) == 4
    more = await run(path, resume=True, n=5)  # a bigger fan-out: only the new items run
    assert more.ok and sorted(runs_of(log)[4:]) == ["hi-3", "hi-4"]
    changed = await run(path, resume=True, n=5, greeting="yo")  # inputs changed: all again
    assert sorted(runs_of(log)[6:]) == ["yo-0", "yo-1", "yo-2", "yo-3", "yo-4"]
    assert changed.resumed == 2  # flaky and total did not change


async def test_without_resume_everything_runs_and_is_recorded(tmp_path: Path) -> None:
    path = write_flow(tmp_path, FLOW)
    (tmp_path / "ok.flag").write_text("")
    await run(path, resume=False)
    again = await run(path, resume=False)
    assert again.resumed == 0 and len(runs_of(tmp_path / "log.txt")) == 8
    with sqlite3.connect(tmp_path / ".asyncjobs" / "state.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT run_id, jobs FROM succeeded").fetchall()
    jobs_by_run: dict[int, int] = {}
    for run_id, blob in rows:
        for _digest, jobs in msgpack.unpackb(blob):
            jobs_by_run[run_id] = jobs_by_run.get(run_id, 0) + len(jobs)
    assert sorted(jobs_by_run.values()) == [5, 5]


async def test_a_needed_result_that_is_not_plain_data_runs_again(tmp_path: Path) -> None:
    path = write_flow(tmp_path, """
        jobs:
          obj: {call: tests.flow.calls:opaque}
          use: {call: tests.flow.calls:fetch, args: ["{{ results.obj }}"]}
    """)
    await run(path, resume=False)
    again = await run(path, resume=True)
    status = {r.id: (r.status, r.attempts) for r in again.records}
    assert status["obj"] == (JobStatus.SUCCEEDED, 1)  # its result could not be stored


async def test_chunked_cpu_items_resume_one_by_one(tmp_path: Path) -> None:
    path = write_flow(tmp_path, """
        params: {n: 800}
        jobs:
          square:
            foreach: {range: "{{ params.n }}"}
            call: tests.jobs:square
            args: ["{{ item }}"]
          total: {call: tests.flow.calls:total, args: ["{{ results.square }}"]}
    """)
    first = await run(path, resume=False)
    assert first.ok and first.results["total"] == sum(i * i for i in range(800))
    grown = await run(path, resume=True, n=1000)
    assert grown.ok and grown.resumed == 800  # total's input changed: it runs again
    assert grown.results["total"] == sum(i * i for i in range(1000))


async def test_a_state_file_of_an_older_layout_is_started_afresh(tmp_path: Path) -> None:
    path = write_flow(tmp_path, FLOW)
    state = tmp_path / ".asyncjobs"
    state.mkdir()
    with sqlite3.connect(state / "state.db") as db:  # the first layout: a row per job
        db.executescript("""
            CREATE TABLE runs (id INTEGER PRIMARY KEY, flow_path TEXT NOT NULL,
                flow_name TEXT NOT NULL, started REAL NOT NULL, ended REAL, status TEXT);
            CREATE TABLE succeeded (run_id INTEGER NOT NULL, job_id TEXT NOT NULL,
                fingerprint TEXT NOT NULL, result BLOB, has_result INTEGER NOT NULL,
                PRIMARY KEY (run_id, job_id)) WITHOUT ROWID;
            INSERT INTO runs VALUES (1, 'x', 'x', 0, 1, 'ok');
            INSERT INTO succeeded VALUES (1, 'step[0]', 'f', NULL, 0);
        """)
    (tmp_path / "ok.flag").write_text("")
    first = await run(path, resume=True)
    assert first.ok and first.resumed == 0 and len(runs_of(tmp_path / "log.txt")) == 4
    second = await run(path, resume=True)  # and the new layout works from then on
    assert second.ok and second.resumed == 5
