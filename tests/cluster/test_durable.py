"""A coordinator with ``--state``, killed and restarted, with real processes and a real
SQLite file: flows go on, and what it had recorded as succeeded never runs again."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import asyncjobs
from asyncjobs.protocol.messages import JobOutcome, decode_item
from tests import cluster_jobs

from .harness import REPO, Coordinator, Node, daemon_env, status, wait_for_nodes

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(150)


def _stored(path: Path) -> list[JobOutcome]:
    """Every succeeded outcome the file holds (the coordinator that wrote it is dead)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT outcome FROM outcomes").fetchall()
    return [decode_item(JobOutcome, blob) for (blob,) in rows]


def _ints(value: Any) -> list[int]:
    """The items a stored result stands for: a job's own, or each of a chunk's."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [i for v in value for i in _ints(v)]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _ints(v)]
    return []


def _flow(tmp_path: Path, n: int, seconds: float) -> tuple[Path, Path]:
    ledger = tmp_path / "ledger"
    flow = tmp_path / "jobs.yaml"
    flow.write_text(
        "jobs:\n"
        "  work:\n"
        f"    foreach: {{range: {n}}}\n"
        "    call: tests.cluster_jobs:ledger\n"
        f"    args: [{str(ledger)!r}, '{{{{ item }}}}', {seconds}]\n"
        "  after: {needs: [work], shell: 'echo done'}\n")
    return flow, ledger


def _run(flow: Path, address: str, report: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "run", str(flow), "--connect", address,
         "--report", str(report), "--quiet"],
        env=daemon_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


async def _wait_lines(ledger: Path, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # noqa: ASYNC110 - a file has no event
        if ledger.exists() and len(ledger.read_text().splitlines()) >= n:
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"the ledger did not reach {n} lines in {timeout_s:g} s")


async def test_kill_9_mid_flow_and_a_restart_on_the_same_state_reruns_no_recorded_success(
        tmp_path: Path) -> None:
    n = 5000
    flow, ledger = _flow(tmp_path, n, 0.002)
    state = tmp_path / "coordinator.db"
    report = tmp_path / "report.json"
    first = Coordinator(tmp_path, "--state", str(state), name="first")
    second = None
    run = None
    try:
        with Node(tmp_path, first.address, "a", "--io-concurrency", "50"):
            await wait_for_nodes(first, ["a"])
            run = _run(flow, first.address, report)
            await _wait_lines(ledger, n // 4)
            first.signal(signal.SIGKILL)
            first.stop()
            stored = _stored(state)
            before = Counter(int(line.split()[0]) for line in ledger.read_text().splitlines())
            second = Coordinator(tmp_path, "--state", str(state), "--listen",
                                 f"127.0.0.1:{first.port}", name="second")
            out, err = run.communicate(timeout=90)
            flows = (await status(second)).flows
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        first.stop()
        if second is not None:
            second.stop()
    assert run.returncode == 0, err
    records = json.loads(report.read_text())["jobs"]
    ids = Counter(r["id"] for r in records)
    assert len(ids) == n + 1 and set(ids.values()) == {1}  # each result recorded once
    assert all(r["status"] == "succeeded" for r in records)
    ran = Counter(int(line.split()[0]) for line in ledger.read_text().splitlines())
    assert set(ran) == set(range(n))
    kept = {i for o in stored for i in _ints(o.value)}
    assert len(kept) >= n // 8, len(kept)  # the killed coordinator had committed many
    rerun = sorted(i for i in kept if ran[i] > before[i])
    assert rerun == [], f"{len(rerun)} jobs recorded as succeeded ran again: {rerun[:10]}"
    assert [(f.file, f.state) for f in flows] == [(str(flow), "succeeded")]
    assert _stored(state) == []  # the run ended: its session is forgotten


async def test_a_clean_restart_keeps_finished_flows_listed(tmp_path: Path) -> None:
    flow, _ = _flow(tmp_path, 20, 0.0)
    state = tmp_path / "coordinator.db"
    first = Coordinator(tmp_path, "--state", str(state), name="first")
    try:
        with Node(tmp_path, first.address, "a"):
            await wait_for_nodes(first, ["a"])
            run = _run(flow, first.address, tmp_path / "report.json")
            _, err = run.communicate(timeout=60)
            assert run.returncode == 0, err
    finally:
        assert first.stop() == 0  # SIGTERM: flushed, exit 0
    second = Coordinator(tmp_path, "--state", str(state), name="second")
    try:
        flows = (await status(second)).flows
    finally:
        second.stop()
    assert [(f.file, f.state, f.done, f.total) for f in flows] == [
        (str(flow), "succeeded", 21, 21)]


def test_a_state_file_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "coordinator.db"
    with Coordinator(tmp_path, "--state", str(state), name="first"):
        done = subprocess.run(
            [sys.executable, "-m", "asyncjobs", "coordinator", "--listen", "127.0.0.1:0",
             "--state", str(state)],
            capture_output=True, text=True, timeout=30, env=daemon_env())
    assert done.returncode == 2 and str(state) in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("what", ["folder", "not-a-database"])
def test_a_state_file_that_cannot_be_used_is_one_line(tmp_path: Path, what: str) -> None:
    if what == "folder":
        blocked = tmp_path / "file"
        blocked.write_text("")
        state = blocked / "coordinator.db"  # its folder is a file
    else:
        state = tmp_path / "coordinator.db"
        state.write_bytes(b"this is not SQLite" * 100)
    done = subprocess.run(
        [sys.executable, "-m", "asyncjobs", "coordinator", "--listen", "127.0.0.1:0",
         "--state", str(state)],
        capture_output=True, text=True, timeout=30, env=daemon_env())
    assert done.returncode == 2, done.stderr
    assert str(state) in done.stderr and "--state" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def _small_files() -> None:
    """In the child: files of at most 256 KiB (past it a write fails with EFBIG: Python
    ignores SIGXFSZ), so the state file fills up as a full disk would."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


async def test_a_state_file_that_cannot_be_written_stops_the_coordinator_in_one_line(
        tmp_path: Path) -> None:
    state = tmp_path / "coordinator.db"
    log = tmp_path / "coordinator.log"
    with log.open("w") as err:
        coord = subprocess.Popen(  # noqa: ASYNC220 - a daemon beside this loop
            [sys.executable, "-m", "asyncjobs", "coordinator", "--listen", "127.0.0.1:0",
             "--state", str(state)], stderr=err, env=daemon_env(),
            preexec_fn=_small_files)
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in log.read_text() and time.monotonic() < deadline:  # noqa: ASYNC110 - a file has no event
            await anyio.sleep(0.02)
        address = log.read_text().split("listening on ")[1].split()[0]
        with Node(tmp_path, address, "a"):
            with contextlib.suppress(Exception):
                async with asyncjobs.connect(address, session="big",
                                             reconnect_s=0.5) as cluster:
                    await cluster.map(cluster_jobs.blob, [20_000] * 200)
            code = await anyio.to_thread.run_sync(lambda: coord.wait(20))
    finally:
        if coord.poll() is None:
            coord.kill()
            coord.wait()
    text = log.read_text()
    assert code == 1, text
    assert "cannot write the state file" in text and "Traceback" not in text, text
