"""What a node's death costs, with real processes: a coordinator, nodes, a client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import psutil
import pytest

import asyncjobs
from tests import cluster_jobs

from .harness import REPO, Coordinator, Node, daemon_env, status, wait_for_nodes

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


def _kill_node_hard(node: Node) -> None:
    """kill -9 of the node's supervisor and its loop processes at once, as a machine that
    loses power: nobody drains, nobody says goodbye."""
    procs = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)


async def test_kill_9_of_a_node_mid_flow_loses_nothing_and_records_each_job_once(
        tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    flow = tmp_path / "jobs.yaml"
    flow.write_text(
        "jobs:\n"
        "  work:\n"
        "    foreach: {range: 2000}\n"
        "    call: tests.cluster_jobs:ledger\n"
        f"    args: [{str(ledger)!r}, '{{{{ item }}}}', 0.004]\n"
    )
    report = tmp_path / "report.json"
    with Coordinator(tmp_path) as coord, Node(tmp_path, coord.address, "a") as a, \
            Node(tmp_path, coord.address, "b") as b:
        await wait_for_nodes(coord, ["a", "b"])
        run = subprocess.Popen(  # noqa: ASYNC220 - the command runs beside this loop
            [sys.executable, "-m", "asyncjobs", "run", str(flow), "--connect", coord.address,
             "--report", str(report), "--quiet"],
            env=daemon_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            # kill b once both nodes have run a share of the jobs
            b_pids = {str(p.pid) for p in psutil.Process(b.pid).children(recursive=True)}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # noqa: ASYNC110 - a file has no event
                lines = ledger.read_text().splitlines() if ledger.exists() else []
                on_b = sum(1 for line in lines if line.split()[1] in b_pids)
                if len(lines) >= 300 and on_b >= 50:
                    break
                await anyio.sleep(0.02)
            _kill_node_hard(b)
            killed_at = time.monotonic()
            shown_dead = None
            while time.monotonic() - killed_at < 10:
                nodes = {n.name: n for n in (await status(coord)).nodes}
                if not nodes["b"].alive:
                    shown_dead = time.monotonic() - killed_at
                    break
                await anyio.sleep(0.1)
            out, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert a.proc.poll() is None  # the other node lives on
    assert shown_dead is not None and shown_dead < 6, shown_dead
    assert run.returncode == 0, err
    records = json.loads(report.read_text())["jobs"]
    ids = Counter(r["id"] for r in records)
    assert len(ids) == 2000 and set(ids.values()) == {1}
    assert all(r["status"] == "succeeded" for r in records)
    assert {r["node"] for r in records} == {"a", "b"}
    ran = Counter(int(line.split()[0]) for line in ledger.read_text().splitlines())
    assert set(ran) == set(range(2000))  # every job ran, some of them twice


async def test_a_cpu_job_that_kills_its_worker_fails_alone_and_the_node_lives_on(
        tmp_path: Path) -> None:
    with Coordinator(tmp_path) as coord, Node(tmp_path, coord.address, "a", cpu_workers=2):
        await wait_for_nodes(coord, ["a"])
        async with asyncjobs.connect(coord.address) as cluster:
            bad = cluster.submit(cluster_jobs.kill_my_worker)
            good = [cluster.submit(cluster_jobs.square, i) for i in range(20)]
            with pytest.raises(asyncjobs.JobFailed) as caught:
                await bad
            assert "kill_my_worker" in str(caught.value) or "worker" in str(caught.value)
            assert [await j for j in good] == [i * i for i in range(20)]
            assert await cluster.submit(cluster_jobs.square, 7) == 49
        assert [n.alive for n in (await status(coord)).nodes] == [True]


async def test_an_io_job_that_kills_its_node_every_time_fails_after_three(
        tmp_path: Path) -> None:
    ledger = tmp_path / "deaths"
    with Coordinator(tmp_path) as coord, Node(tmp_path, coord.address, "a"), \
            Node(tmp_path, coord.address, "b"):
        await wait_for_nodes(coord, ["a", "b"])
        async with asyncjobs.connect(coord.address) as cluster:
            killer = cluster.submit(cluster_jobs.kill_my_node, str(ledger))
            others = [cluster.submit(cluster_jobs.square, i) for i in range(10)]
            with anyio.fail_after(60):
                with pytest.raises(asyncjobs.JobFailed) as caught:
                    await killer
                assert [await j for j in others] == [i * i for i in range(10)]
    assert caught.value.type_name == "KilledNodes"
    assert len(ledger.read_text().splitlines()) == 3  # it ran three times, not more


async def test_a_tls_cluster_runs_jobs_and_a_flow(tmp_path: Path,
                                      tls_files: tuple[Path, Path, Path]) -> None:
    cert, key, ca = tls_files
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)]
    with Coordinator(tmp_path, *tls, secret="s") as coord, \
            Node(tmp_path, coord.address, "a", *tls, secret="s"):
        from asyncjobs.transport import tls_contexts

        client_tls = tls_contexts(cert, key, ca)[1]
        flow = tmp_path / "jobs.yaml"
        flow.write_text("jobs:\n"
                        "  squares: {foreach: {range: 20}, call: 'tests.cluster_jobs:square',"
                        " args: ['{{ item }}']}\n"
                        "  after: {needs: [squares], shell: 'echo ok'}\n")
        async with asyncjobs.connect(coord.address, secret=b"s", tls=client_tls) as cluster:
            assert await cluster.map(cluster_jobs.square, range(50)) == [
                i * i for i in range(50)]
            report = await cluster.run_flow(flow)
    assert report.ok and len(report.records) == 21
    assert {r.node for r in report.records} == {"a"}


async def test_a_flow_lives_through_a_coordinator_restart(tmp_path: Path) -> None:
    """kill -9 of the coordinator mid-flow, and a new one on the same port: the node and
    the client link again, the unfinished jobs are sent again, the flow succeeds."""
    ledger = tmp_path / "ledger"
    flow = tmp_path / "jobs.yaml"
    flow.write_text(
        "jobs:\n"
        "  work:\n"
        "    foreach: {range: 400}\n"
        "    call: tests.cluster_jobs:ledger\n"
        f"    args: [{str(ledger)!r}, '{{{{ item }}}}', 0.01]\n"
        "  after: {needs: [work], shell: 'echo done'}\n")
    report = tmp_path / "report.json"
    first = Coordinator(tmp_path, name="first")
    second = None
    run = None
    try:
        with Node(tmp_path, first.address, "a", "--io-concurrency", "20"):
            await wait_for_nodes(first, ["a"])
            run = subprocess.Popen(  # noqa: ASYNC220 - the command runs beside this loop
                [sys.executable, "-m", "asyncjobs", "run", str(flow), "--connect",
                 first.address, "--report", str(report), "--quiet"],
                env=daemon_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # noqa: ASYNC110 - a file has no event
                if ledger.exists() and len(ledger.read_text().splitlines()) >= 100:
                    break
                await anyio.sleep(0.02)
            first.signal(signal.SIGKILL)
            first.stop()
            second = Coordinator(tmp_path, "--listen", f"127.0.0.1:{first.port}",
                                 name="second")
            out, err = run.communicate(timeout=60)
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        first.stop()
        if second is not None:
            second.stop()
    assert run.returncode == 0, err
    assert "linked again" in err
    records = json.loads(report.read_text())["jobs"]
    assert len(records) == 401 and all(r["status"] == "succeeded" for r in records)
    ran = Counter(int(line.split()[0]) for line in ledger.read_text().splitlines())
    assert set(ran) == set(range(400))


async def test_a_module_that_takes_seconds_to_import_does_not_cost_the_node(
        tmp_path: Path) -> None:
    """Its import (7 s, past the 5 s after which a silent node is dead) runs beside the
    node's event loop, whose heartbeats keep coming: the node is never declared dead."""
    (tmp_path / "slow_to_import.py").write_text(
        "import time\ntime.sleep(7)\n\nasync def answer():\n    return 42\n")
    path = os.pathsep.join((str(tmp_path), REPO))
    with Coordinator(tmp_path) as coord, Node(tmp_path, coord.address, "a",
                                               env={"PYTHONPATH": path}):
        await wait_for_nodes(coord, ["a"])
        async with asyncjobs.connect(coord.address) as cluster:
            with anyio.fail_after(30):
                assert await cluster.submit("slow_to_import:answer") == 42
        nodes = (await status(coord)).nodes
        assert [(n.name, n.alive) for n in nodes] == [("a", True)]
        assert "silent" not in coord.text()
