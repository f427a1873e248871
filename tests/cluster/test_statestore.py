"""The coordinator's durable state: real SQLite files, real processes, kill -9."""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import sqlite3
import stat
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from asyncjobs.daemons.statestore import (
    IN_CHUNK,
    KEEP_FLOWS_S,
    AsyncStateStore,
    SqliteStateStore,
    StoredFlow,
    WriteBatch,
    default_state_path,
)
from asyncjobs.errors import ClusterConfigError, StateInUse
from asyncjobs.model import JobStatus
from asyncjobs.protocol import FlowStatus, JobOutcome, UnencodableValue

from ..conftest import PYTHON, python_env
from .statestore_child import PER_BATCH, SESSION
from .statestore_child import outcome as child_outcome

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)

VALUES: list[Any] = [
    None, 0, -1, 2**63, 1.5, -0.0, math.inf, "", "é\x00", b"", b"\x00\xff",
    [1, [2, [3, None]]], {"a": {"b": [1.25, b"x"]}, 7: None, "": []}, [{}, [], True, False],
]
#: ids are arbitrary text
ODD_IDS = ["", " ", "'", "\"; DROP TABLE outcomes; --", "\x00", "a\x00b", "é", "🙂",
           "x" * 10_000, "%s", "?"]


def done(job_id: str, value: Any = None, attempts: int = 1) -> JobOutcome:
    return JobOutcome(job_id, JobStatus.SUCCEEDED, value, None, attempts, "node-a",
                      1.7e9, 1.7e9 + 0.5)


def flow(session: str, flow_id: str, state: str = "running",
         ended_at: float | None = None) -> StoredFlow:
    return StoredFlow(session, FlowStatus(flow_id, f"{flow_id}.yaml", state, 1, 3), ended_at)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    opened = SqliteStateStore.open(tmp_path / "state" / "coordinator.db")
    try:
        yield opened
    finally:
        opened.close()


def _table(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# --- round trip ------------------------------------------------------------------------


def test_outcomes_come_back_equal_and_only_those_held(store: SqliteStateStore) -> None:
    outcomes = [done(f"j{i}", v, attempts=i + 1) for i, v in enumerate(VALUES)]
    store.write(WriteBatch([("s1", o) for o in outcomes]))
    ids = [o.job_id for o in outcomes]
    found = store.succeeded("s1", [*ids, "never"])
    assert found == {o.job_id: o for o in outcomes}
    assert "never" not in found
    assert store.succeeded("s2", ids) == {}
    assert store.succeeded("s1", []) == {}


def test_values_come_back_as_the_protocol_brings_them(store: SqliteStateStore) -> None:
    store.write(WriteBatch([("s", done("t", {"t": (1, (2, 3))}))]))
    assert store.succeeded("s", ["t"])["t"].value == {"t": [1, [2, 3]]}


def test_ids_and_sessions_are_arbitrary_text(store: SqliteStateStore) -> None:
    store.write(WriteBatch([(s, done(j, [s, j])) for s in ODD_IDS for j in ODD_IDS]))
    for s in ODD_IDS:
        found = store.succeeded(s, ODD_IDS)
        assert found == {j: done(j, [s, j]) for j in ODD_IDS}
    assert store.sessions() == sorted(ODD_IDS)


def test_sessions_are_separate_and_a_job_id_is_replaced(store: SqliteStateStore) -> None:
    store.write(WriteBatch([("s1", done("a", 1)), ("s2", done("a", 2))]))
    store.write(WriteBatch([("s1", done("a", 3))]))
    assert store.succeeded("s1", ["a"])["a"].value == 3
    assert store.succeeded("s2", ["a"])["a"].value == 2
    assert store.sessions() == ["s1", "s2"]


def test_many_ids_are_asked_in_chunks(store: SqliteStateStore) -> None:
    n = IN_CHUNK * 2 + 7
    store.write(WriteBatch([("s", done(f"j{i}", i)) for i in range(0, n, 2)]))
    found = store.succeeded("s", [f"j{i}" for i in range(n)])
    assert sorted(found) == sorted(f"j{i}" for i in range(0, n, 2))


def test_what_was_written_is_there_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    first = SqliteStateStore.open(path)
    first.write(WriteBatch([("s", done("a", VALUES))], [flow("s", "f")]))
    first.close()
    again = SqliteStateStore.open(path)
    try:
        assert again.succeeded("s", ["a"]) == {"a": done("a", VALUES)}
        assert again.flows() == [flow("s", "f")]
    finally:
        again.close()


def test_a_value_that_cannot_be_packed_writes_nothing(store: SqliteStateStore) -> None:
    with pytest.raises(UnencodableValue, match="job bad"):
        store.write(WriteBatch([("s", done("ok")), ("s", done("bad", object()))]))
    assert store.succeeded("s", ["ok", "bad"]) == {}
    store.write(WriteBatch([("s", done("ok"))]))
    assert list(store.succeeded("s", ["ok"])) == ["ok"]


# --- forget, flows, pruning ------------------------------------------------------------


def test_forget_deletes_one_sessions_outcomes_and_keeps_flows(store: SqliteStateStore) -> None:
    store.write(WriteBatch([("s1", done("a")), ("s2", done("a"))],
                           [flow("s1", "f1"), flow("s2", "f2")]))
    store.write(WriteBatch(forget=["s1"]))
    assert store.succeeded("s1", ["a"]) == {}
    assert list(store.succeeded("s2", ["a"])) == ["a"]
    assert store.sessions() == ["s2"]
    assert [f.status.flow_id for f in store.flows()] == ["f1", "f2"]


def test_forget_comes_after_the_adds_of_its_batch(store: SqliteStateStore) -> None:
    store.write(WriteBatch([("s", done("a"))], forget=["s"]))
    assert store.succeeded("s", ["a"]) == {}


def test_flows_are_upserted_and_listed(store: SqliteStateStore) -> None:
    store.write(WriteBatch(flows=[flow("s", "f1"), flow("s", "f2"), flow("t", "f1")]))
    ended = time.time()
    store.write(WriteBatch(flows=[flow("s", "f1", "succeeded", ended)]))
    assert store.flows() == [flow("s", "f1", "succeeded", ended), flow("s", "f2"),
                             flow("t", "f1")]


def test_flows_that_ended_over_a_day_ago_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    old = time.time() - KEEP_FLOWS_S - 60
    recent = time.time() - KEEP_FLOWS_S + 3600
    store = SqliteStateStore.open(path)
    store.write(WriteBatch(flows=[flow("s", "old", "failed", old), flow("s", "recent",
                                  "succeeded", recent), flow("s", "running")]))
    assert [f.status.flow_id for f in store.flows()] == ["recent", "running"]
    store.close()
    assert _table(path, "SELECT flow_id FROM flows ORDER BY flow_id") == [
        ("recent",), ("running",)]


# --- merging batches -------------------------------------------------------------------


def _contents(store: SqliteStateStore, sessions: list[str], ids: list[str]) -> Any:
    return ({s: store.succeeded(s, ids) for s in sessions}, store.flows())


def test_a_merged_batch_writes_what_its_parts_write_one_by_one(tmp_path: Path) -> None:
    rng = random.Random(16)
    sessions, ids = ["s1", "s2", "s3"], ["a", "b", "c"]
    for round_ in range(40):
        one_by_one = SqliteStateStore.open(tmp_path / f"a{round_}.db")
        merged_store = SqliteStateStore.open(tmp_path / f"b{round_}.db")
        try:
            seed = WriteBatch([(s, done(j, "seed")) for s in sessions for j in ids])
            one_by_one.write(seed)
            merged_store.write(seed)
            merged = WriteBatch()
            for step in range(rng.randint(1, 6)):
                part = WriteBatch(
                    [(rng.choice(sessions), done(rng.choice(ids), [round_, step]))
                     for _ in range(rng.randint(0, 4))],
                    [flow(rng.choice(sessions), rng.choice(ids), str(step))
                     for _ in range(rng.randint(0, 1))],
                    rng.sample(sessions, rng.randint(0, 2)))
                one_by_one.write(part)
                merged.merge(part)
            merged_store.write(merged)
            assert _contents(merged_store, sessions, ids) == \
                _contents(one_by_one, sessions, ids), round_
        finally:
            one_by_one.close()
            merged_store.close()


def test_merge_does_not_change_or_share_the_other_batch() -> None:
    part = WriteBatch([("s", done("a"))], [flow("s", "f")], ["t"])
    merged = WriteBatch()
    merged.merge(part)
    merged.merge(WriteBatch([("t", done("b"))]))
    assert part == WriteBatch([("s", done("a"))], [flow("s", "f")], ["t"])
    assert merged.outcomes is not part.outcomes and merged.flows is not part.flows


# --- one process per file --------------------------------------------------------------


def test_a_second_open_is_refused_naming_the_path_until_the_first_closes(
        tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    first = SqliteStateStore.open(path)
    with pytest.raises(StateInUse) as info:
        SqliteStateStore.open(path)
    assert info.value.path == str(path) and info.value.pid == os.getpid()
    assert str(path) in str(info.value) and isinstance(info.value, ClusterConfigError)
    first.close()
    SqliteStateStore.open(path).close()


def _child(path: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "tests.cluster.statestore_child", str(path), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=python_env())


def _kill(proc: subprocess.Popen[str]) -> str:
    """Kill ``proc`` (SIGKILL, by its pid) and return what it printed and we did not read."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=10)
    return out


def test_a_file_held_by_a_process_opens_once_it_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    proc = _child(path, "hold")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "open\n"
        with pytest.raises(StateInUse, match="in use by another process") as info:
            SqliteStateStore.open(path)
        assert info.value.pid == proc.pid and info.value.path == str(path)
    finally:
        _kill(proc)
    SqliteStateStore.open(path).close()


def test_every_commit_that_returned_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    proc = _child(path, "commit")
    printed: list[int] = []
    rest = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while len(printed) < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(int(line))
        assert len(printed) >= 200, "the child stopped early"
    finally:
        rest = _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    printed += [int(n) for n in rest.split()]
    store = SqliteStateStore.open(path)
    try:
        for n in printed:
            ids = [f"b{n}-{k}" for k in range(PER_BATCH)]
            assert store.succeeded(SESSION, ids) == {
                f"b{n}-{k}": child_outcome(n, k) for k in range(PER_BATCH)}, n
    finally:
        store.close()
    assert _table(path, "PRAGMA integrity_check") == [("ok",)]


# --- the asyncio face ------------------------------------------------------------------


async def test_concurrent_commits_share_transactions_and_all_last(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = await AsyncStateStore.open(path)
    try:
        await asyncio.gather(*(store.commit(WriteBatch([("s", done(f"j{i}", i))]))
                               for i in range(200)))
        assert store.commits == 200
        assert 1 <= store.transactions < 200
        found = await store.succeeded("s", [f"j{i}" for i in range(200)])
        assert found == {f"j{i}": done(f"j{i}", i) for i in range(200)}
    finally:
        await store.aclose()
    again = SqliteStateStore.open(path)
    try:
        assert len(again.succeeded("s", [f"j{i}" for i in range(200)])) == 200
    finally:
        again.close()


async def test_a_read_comes_after_every_commit_called_before_it(tmp_path: Path) -> None:
    store = await AsyncStateStore.open(tmp_path / "c.db")
    try:
        async with asyncio.TaskGroup() as tasks:
            for i in range(20):
                tasks.create_task(store.commit(WriteBatch(
                    [("s", done(f"j{i}"))], [flow("s", f"f{i}")], ["gone"])))
            await asyncio.sleep(0)  # the first runs, the rest are gathered behind it
            found = await store.succeeded("s", [f"j{i}" for i in range(20)])
            flows = await store.flows()
            sessions = await store.sessions()
        assert len(found) == 20 and len(flows) == 20 and sessions == ["s"]
        assert store.transactions == 2  # the first alone, the 19 gathered behind it
    finally:
        await store.aclose()


async def test_a_cancelled_commit_still_lands(tmp_path: Path) -> None:
    store = await AsyncStateStore.open(tmp_path / "c.db")
    try:
        waits = [asyncio.ensure_future(store.commit(WriteBatch([("s", done(f"j{i}"))])))
                 for i in range(5)]
        await asyncio.sleep(0)
        waits[-1].cancel()
        await asyncio.wait(waits)
        assert len(await store.succeeded("s", [f"j{i}" for i in range(5)])) == 5
    finally:
        await store.aclose()


async def test_a_failed_group_raises_for_its_commits_and_the_next_ones_land(
        tmp_path: Path) -> None:
    store = await AsyncStateStore.open(tmp_path / "c.db")
    try:
        with pytest.raises(UnencodableValue):
            await store.commit(WriteBatch([("s", done("bad", object()))]))
        await store.commit(WriteBatch([("s", done("good"))]))
        assert list(await store.succeeded("s", ["bad", "good"])) == ["good"]
    finally:
        await store.aclose()


async def test_aclose_waits_for_commits_then_the_file_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = await AsyncStateStore.open(path)
    commits = [asyncio.ensure_future(store.commit(WriteBatch([("s", done(f"j{i}"))])))
               for i in range(10)]
    await asyncio.sleep(0)
    await store.aclose()
    await store.aclose()
    assert all(c.done() and c.exception() is None for c in commits)
    with pytest.raises(RuntimeError, match="closed"):
        await store.commit(WriteBatch())
    again = await AsyncStateStore.open(path)
    try:
        assert len(await again.succeeded("s", [f"j{i}" for i in range(10)])) == 10
    finally:
        await again.aclose()


async def test_an_async_open_of_a_held_file_raises_state_in_use(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    first = await AsyncStateStore.open(path)
    try:
        with pytest.raises(StateInUse, match=str(path)):
            await AsyncStateStore.open(path)
    finally:
        await first.aclose()


# --- where it lives --------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_default_path_is_systemds_first_state_directory(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("XDG_STATE_HOME", "/xdg")
    clean_env.setenv("STATE_DIRECTORY", "/var/lib/asyncjobs:/var/lib/other")
    assert str(default_state_path()) == "/var/lib/asyncjobs/coordinator.db"


def test_default_path_is_under_xdg_state_home(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("XDG_STATE_HOME", "/xdg")
    assert str(default_state_path()) == "/xdg/asyncjobs/coordinator.db"


def test_default_path_is_under_home_otherwise(clean_env: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    assert default_state_path() == tmp_path / ".local/state/asyncjobs/coordinator.db"
    clean_env.setenv("XDG_STATE_HOME", "relative/is/ignored")
    assert default_state_path() == tmp_path / ".local/state/asyncjobs/coordinator.db"


def test_a_new_state_file_and_its_folder_are_the_owners_alone(tmp_path: Path) -> None:
    path = tmp_path / "new" / "coordinator.db"
    store = SqliteStateStore.open(path)
    try:
        store.write(WriteBatch(outcomes=[("s", JobOutcome("a", JobStatus.SUCCEEDED, 1))]))
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for name in ("coordinator.db", "coordinator.db-wal"):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
    finally:
        store.close()
