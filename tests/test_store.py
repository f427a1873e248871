"""RunStore on real SQLite files: runs side by side, one run of a file at a time, nothing
left open when opening fails, and nothing forgotten when a run is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

import msgpack
import psutil
import pytest

from asyncjobs import store
from asyncjobs.errors import RunInProgress, StateUnavailable
from asyncjobs.store import RunStore

from .conftest import PYTHON, python_env

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
    from pathlib import Path

pytestmark = pytest.mark.usefixtures("no_leftover_children")

DIGEST = "d" * 64

#: a second process that opens a RunStore, records ``argv[3:]`` as succeeded, says
#: "open" once they are written, and holds on until killed or its stdin closes
HOLDER = """
import asyncio, sys
from asyncjobs.store import RunStore

async def main():
    store = RunStore(sys.argv[1], "held")
    await store.open(resume=sys.argv[2] == "resume")
    for job_id in sys.argv[3:]:
        store.succeeded(job_id, "d" * 64, "", keep_result=False)
    await store.flush()
    print("open", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await store.close("ok")

asyncio.run(main())
"""


async def record(path: Path, job_ids: Iterable[str], *, resume: bool = False,
                 status: str = "ok") -> dict[str, tuple[str, str, bytes | None]]:
    """One whole run of ``path`` that records ``job_ids``; what it resumed from."""
    run = RunStore(path, path.stem)
    prior = await run.open(resume=resume)
    for job_id in job_ids:
        run.succeeded(job_id, DIGEST, "", keep_result=False)
    await run.close(status)
    return {} if prior is None else prior.rows


async def resumable(path: Path) -> set[str]:
    """The job ids a ``--resume`` of ``path`` would skip now."""
    return set(await record(path, [], resume=True))


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asyncjobs-store")]


def files_open_under(folder: Path) -> list[str]:
    return [f.path for f in psutil.Process().open_files() if f.path.startswith(str(folder))]


class Holder:
    """A second process holding a RunStore open on ``path``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


@pytest.fixture
async def make_holder() -> AsyncIterator[Callable[..., Awaitable[Holder]]]:
    """Start holder processes; each is killed at teardown, whatever happened."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(path: Path, *job_ids: str, resume: bool = False) -> Holder:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-c", HOLDER, str(path), "resume" if resume else "fresh", *job_ids,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=python_env(),
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert line == b"open\n", f"the holder did not open its store (exit {proc.returncode})"
        return Holder(proc)

    try:
        yield start
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()


# -- runs of different files in one folder, at once ---------------------------------------


async def test_runs_of_different_files_in_one_folder_open_at_once(tmp_path: Path) -> None:
    for round_ in range(20):  # a new database each round: creating it is the racy part
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        paths = [folder / f"flow{i}.yaml" for i in range(8)]
        await asyncio.gather(*(record(p, [f"{p.stem}-job"]) for p in paths))
        for p in paths:
            assert await resumable(p) == {f"{p.stem}-job"}


async def test_a_new_database_another_run_is_reading_is_waited_for(tmp_path: Path) -> None:
    state = tmp_path / ".asyncjobs"
    state.mkdir()
    other = sqlite3.connect(state / "state.db", isolation_level=None)
    try:  # another run has just created the file, not yet in WAL mode, and reads it
        other.execute("BEGIN")
        other.execute("SELECT * FROM sqlite_master").fetchall()
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        await record(tmp_path / "jobs.yaml", ["a"])
    finally:
        other.close()
    assert await resumable(tmp_path / "jobs.yaml") == {"a"}


async def test_a_write_of_another_run_is_waited_for(tmp_path: Path) -> None:
    await record(tmp_path / "other.yaml", ["x"])
    other = sqlite3.connect(tmp_path / ".asyncjobs" / "state.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        await record(tmp_path / "jobs.yaml", ["a"])
    finally:
        other.close()
    assert await resumable(tmp_path / "jobs.yaml") == {"a"}


# -- one run of a file at a time ----------------------------------------------------------


async def test_a_second_run_of_the_same_file_is_refused_until_the_first_is_gone(
    tmp_path: Path, make_holder: Callable[..., Awaitable[Holder]],
) -> None:
    path = tmp_path / "jobs.yaml"
    holder = await make_holder(path, "a")
    second = RunStore(path, "jobs")
    with pytest.raises(RunInProgress) as caught:
        await second.open(resume=True)
    assert caught.value.pid == holder.pid and caught.value.path == str(path)
    assert str(caught.value) == (
        f"another run of {path} is in progress (pid {holder.pid}); wait for it or stop it")
    await second.close("failed")

    await holder.kill()  # kill -9: no stale lock is left behind
    third = RunStore(path, "jobs")
    prior = await third.open(resume=True)
    assert prior is not None and set(prior.rows) == {"a"}
    await third.close("ok")


async def test_a_second_run_of_the_same_file_in_one_process_is_refused(tmp_path: Path) -> None:
    first = RunStore(tmp_path / "jobs.yaml", "jobs")
    await first.open(resume=False)
    try:
        with pytest.raises(RunInProgress, match=rf"\(pid {os.getpid()}\)"):
            await RunStore(tmp_path / "jobs.yaml", "jobs").open(resume=False)
        await record(tmp_path / "other.yaml", ["x"])  # another file of the folder may run
    finally:
        await first.close("ok")
    await record(tmp_path / "jobs.yaml", ["a"])  # and after it, the same file again


# -- nothing left open when open fails ----------------------------------------------------


async def assert_nothing_left_open(run: RunStore, folder: Path) -> None:
    assert store_threads() == []
    assert files_open_under(folder) == []
    await run.close("failed")  # safe after a failed open, and twice
    await run.close("failed")


async def test_open_refused_by_another_run_leaves_nothing_open(
    tmp_path: Path, make_holder: Callable[..., Awaitable[Holder]],
) -> None:
    await make_holder(tmp_path / "jobs.yaml")
    run = RunStore(tmp_path / "jobs.yaml", "jobs")
    with pytest.raises(RunInProgress):
        await run.open(resume=False)
    await assert_nothing_left_open(run, tmp_path)


async def test_open_of_an_unreadable_database_leaves_nothing_open(tmp_path: Path) -> None:
    (tmp_path / ".asyncjobs").mkdir()
    (tmp_path / ".asyncjobs" / "state.db").write_bytes(b"not a database, " * 256)
    run = RunStore(tmp_path / "jobs.yaml", "jobs")
    with pytest.raises(StateUnavailable, match="file is not a database"):
        await run.open(resume=True)
    await assert_nothing_left_open(run, tmp_path)


async def test_open_without_a_state_folder_leaves_nothing_open(tmp_path: Path) -> None:
    (tmp_path / ".asyncjobs").write_text("a file where the folder should be")
    run = RunStore(tmp_path / "jobs.yaml", "jobs")
    with pytest.raises(StateUnavailable, match="FileExistsError"):
        await run.open(resume=False)
    await assert_nothing_left_open(run, tmp_path)


async def test_close_without_open_is_safe(tmp_path: Path) -> None:
    run = RunStore(tmp_path / "jobs.yaml", "jobs")
    await run.close("failed")
    assert store_threads() == [] and not (tmp_path / ".asyncjobs").exists()


# -- nothing forgotten ----------------------------------------------------------------------


async def test_the_first_success_is_written_at_once(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "FLUSH_EVERY_S", 3600.0)  # only the first write is soon
    run = RunStore(tmp_path / "jobs.yaml", "jobs")
    await run.open(resume=False)
    try:
        run.succeeded("a", DIGEST, "", keep_result=False)
        db = sqlite3.connect(tmp_path / ".asyncjobs" / "state.db")
        try:
            deadline = time.monotonic() + 10
            while not db.execute("SELECT count(*) FROM succeeded").fetchone()[0]:
                assert time.monotonic() < deadline, "the first success was not written"
                await asyncio.sleep(0.01)
        finally:
            db.close()
    finally:
        await run.close("ok")


async def test_a_resumed_run_killed_at_once_keeps_what_the_last_one_did(
    tmp_path: Path, make_holder: Callable[..., Awaitable[Holder]],
) -> None:
    path = tmp_path / "jobs.yaml"
    await record(path, ["a", "b"], status="interrupted")
    resumed = await make_holder(path, resume=True)  # resumes a and b, does nothing new
    await resumed.kill()
    again = await make_holder(path, "c", resume=True)  # does c, then is killed
    await again.kill()
    assert await resumable(path) == {"a", "b", "c"}


async def test_what_a_resumed_run_carries_over_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    result = store.pack_result({"rows": 3})
    await record(path, ["a", "b"])
    run = RunStore(path, "jobs")
    prior = await run.open(resume=True)
    assert prior is not None
    assert prior.match("a", DIGEST, "", need_result=False) == (True, None)
    run.succeeded("a", DIGEST, "", keep_result=False)  # as the flow reports a resumed job
    run.succeeded("b", DIGEST, "", {"rows": 3}, keep_result=True)  # ran again for a result
    run.succeeded("c", DIGEST, "", keep_result=False)
    await run.close("ok")
    with sqlite3.connect(path.parent / ".asyncjobs" / "state.db") as db:
        (last,) = db.execute("SELECT max(id) FROM runs").fetchone()
        blobs = db.execute("SELECT seq, jobs FROM succeeded WHERE run_id = ? ORDER BY seq",
                           (last,)).fetchall()
    written = [job[0] for _seq, blob in blobs for _d, jobs in msgpack.unpackb(blob)
               for job in jobs]
    assert sorted(written) == ["a", "b", "b", "c"]  # the carried a, b; then b again, c
    rows = await record(path, [], resume=True)
    assert rows["b"][2] == result and set(rows) == {"a", "b", "c"}

